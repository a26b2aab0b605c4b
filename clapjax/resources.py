"""What a run will need (memory, disk reads, disk space) before it starts.

:func:`estimate` turns the sizes of a run (segments, crops, feature
dimension, participants, rounds, chunk sizes) into a :class:`Footprint`: the
peak resident memory of holding the features in memory and of streaming them
from disk, the feature bytes read per round when streaming, and the bytes the
run directory will take. :func:`plan` picks the feature access path against a
memory budget (in memory only when that fits) and refuses with
:class:`ResourceError` when nothing fits.

The memory model adds up what the pipeline holds at once (one stage at a
time): a fixed runtime (Python, JAX/XLA and compiled code), per-segment host
bookkeeping, the stage's feature buffers (statistics batches, two prefetched
training chunks of at most ``stream_chunk_bytes`` plus a device copy, scoring
chunks) and, in memory, the features themselves. The constants were measured
on the CPU backend with ``experiments.bench_fullsize`` (estimate and measured
peak are both in its JSON); they are upper bounds there, not guarantees for
every platform.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path
from typing import Literal

#: Resident memory of the Python/JAX/XLA runtime with a run's compiled code
#: (measured peak of a tiny streaming run: ~0.6 GiB; rounded up).
RUNTIME_BYTES = 1 << 30
#: Host bookkeeping per training segment: magnitudes, labels, layouts, the
#: round's batch plan, PLR and scoring index arrays (~60 B counted; doubled).
BYTES_PER_TRAIN_SEGMENT = 128
#: Per test segment: frame ground truth (16 frames), layout, scores.
BYTES_PER_TEST_SEGMENT = 64
#: Buffers in flight per streamed chunk: the one training, the one being
#: prefetched, and a device copy when the runtime does not alias host memory.
STREAM_BUFFERS = 3
#: Buffers of the statistics driver: the batch being read, the one XLA holds,
#: and XLA's crop-mean/centred intermediates.
STATISTICS_BUFFERS = 4
#: Fraction of physical memory used as the default memory budget.
DEFAULT_BUDGET_FRACTION = 0.5

Access = Literal["memory", "stream"]

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class ResourceError(ValueError):
    """The run cannot fit the memory budget or the free disk space."""


def parse_bytes(text: str | int | float) -> int:
    """``"12GiB"``, ``"512 MiB"``, ``"16GB"``, ``"2e9"`` or a number -> bytes.

    Raises:
      ValueError: unparsable text or a negative size.
    """
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{text!r} is not a size (examples: 12GiB, 512MiB, 16GB)")
        value, unit = float(m.group(1)), m.group(2).lower()
    if value < 0:
        raise ValueError(f"size {text!r} is negative")
    return int(value * _UNITS[unit])


def format_bytes(n: float) -> str:
    """Bytes in binary units, e.g. ``59.5 GiB``."""
    n = float(n)
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def machine_memory() -> tuple[int | None, int | None]:
    """``(total, available)`` bytes of memory for this process (Linux
    ``/proc/meminfo`` and the cgroup limit; ``None`` where unknown)."""
    info = _meminfo()
    total = info.get("MemTotal")
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = None
    limit = _cgroup_limit()
    if limit is not None:
        total = limit if total is None else min(total, limit)
    available = info.get("MemAvailable")
    if available is not None and total is not None:
        available = min(available, total)
    return total, available


def default_memory_budget() -> int:
    """Half the physical memory (or cgroup limit), and no more than 90 % of
    what is available now; 4 GiB where neither is known."""
    total, available = machine_memory()
    if total is None:
        return 4 << 30
    budget = int(DEFAULT_BUDGET_FRACTION * total)
    if available is not None:
        budget = min(budget, int(0.9 * available))
    return budget


def free_disk(path: str | os.PathLike) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


@dataclasses.dataclass(frozen=True)
class Workload:
    """The sizes that decide a run's footprint.

    Attributes:
      train_segments / test_segments: rows of the training / test features.
      crops, feature_dim: per-row shape after crop handling.
      participants: K.
      rounds, local_epochs: training length.
      plr_rounds: rounds in which PLR scores every training segment.
      eval_models: models scoring the test set each round (K in the local setting, else 1).
      largest_participant: segments of the largest participant.
      longest_video: segments of the longest training video.
      batch_size, chunk_steps: local batch and steps per streamed chunk.
      stream_chunk_bytes: cap of one streamed chunk (``TrainOptions``).
      score_rows: rows per test scoring call.
      statistics_rows: rows per statistics chunk.
      params: model parameters (for checkpoints).
    """

    train_segments: int
    test_segments: int
    crops: int
    feature_dim: int
    participants: int
    rounds: int
    local_epochs: int
    plr_rounds: int
    eval_models: int
    largest_participant: int
    longest_video: int
    batch_size: int
    chunk_steps: int
    stream_chunk_bytes: int
    score_rows: int
    statistics_rows: int
    params: int

    @property
    def row_bytes(self) -> int:
        return 4 * self.crops * self.feature_dim


@dataclasses.dataclass(frozen=True)
class Footprint:
    """Estimated needs of a run (bytes).

    Attributes:
      train_bytes / test_bytes: float32 features after crop handling.
      memory_peak: peak resident memory with all features in memory.
      stream_peak: peak resident memory when streaming from disk.
      read_per_round: feature bytes read per round when streaming (every
        local epoch, the PLR scoring pass when active, and each evaluation).
      read_once: bytes read before training (the statistics pass; in memory:
        also the load).
      disk: bytes the run directory will hold at the end.
    """

    train_bytes: int
    test_bytes: int
    memory_peak: int
    stream_peak: int
    read_per_round: int
    read_once: int
    disk: int


def estimate(w: Workload) -> Footprint:
    """The :class:`Footprint` of a workload (see the module docstring)."""
    rb = w.row_bytes
    train, test = w.train_segments * rb, w.test_segments * rb
    host = (RUNTIME_BYTES + BYTES_PER_TRAIN_SEGMENT * w.train_segments
            + BYTES_PER_TEST_SEGMENT * w.test_segments * max(1, w.eval_models))
    statistics = STATISTICS_BUFFERS * max(w.statistics_rows, min(w.feature_dim, w.longest_video)) * rb
    # As Executor.stream_steps / Engine: whole steps of all participants, at
    # least one step even above the cap.
    per_step = w.participants * w.batch_size * rb
    train_chunk = per_step * max(1, min(w.chunk_steps, w.stream_chunk_bytes // per_step))
    plr_chunk = max(w.participants * rb, min(w.stream_chunk_bytes, w.participants * w.largest_participant * rb))
    score_chunk = max(rb, min(w.stream_chunk_bytes, w.score_rows * rb))
    chunk = max(train_chunk, plr_chunk if w.plr_rounds else 0, score_chunk)
    streaming = max(statistics, STREAM_BUFFERS * chunk)
    # In memory the features stay put; chunks are device-side gathers/copies.
    in_memory = max(statistics, 2 * chunk)
    plr_fraction = w.plr_rounds / max(w.rounds, 1)
    per_round = int(w.local_epochs * train + plr_fraction * train + w.eval_models * test)
    state = 4 * (3 * w.params + w.participants * max(w.largest_participant, 1))
    if w.eval_models > 1:
        state += 4 * w.params * w.eval_models
    disk = (w.rounds * state + 16 * w.train_segments + 4 * w.test_segments * max(1, w.eval_models)
            + (1 << 20))
    return Footprint(train_bytes=train, test_bytes=test, memory_peak=host + train + test + in_memory,
                     stream_peak=host + streaming, read_per_round=per_round, read_once=train,
                     disk=disk)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The chosen access path and why.

    Attributes:
      access: ``"memory"`` or ``"stream"``.
      budget: the memory budget in bytes.
      footprint: the estimate behind the choice.
      free_disk: free bytes where the run directory goes.
      forced: True when the caller fixed the access path.
    """

    access: Access
    budget: int
    footprint: Footprint
    free_disk: int
    forced: bool = False

    @property
    def in_memory(self) -> bool:
        return self.access == "memory"

    @property
    def peak(self) -> int:
        return self.footprint.memory_peak if self.in_memory else self.footprint.stream_peak

    def describe(self) -> str:
        """One line for the progress output."""
        f = self.footprint
        if self.in_memory:
            io = f"reads {format_bytes(f.train_bytes + f.test_bytes)} once"
        else:
            io = (f"streams from disk, reading ~{format_bytes(f.read_per_round)} of features per round "
                  f"(+{format_bytes(f.read_once)} for the statistics)")
        why = "as requested" if self.forced else f"memory budget {format_bytes(self.budget)}"
        return (f"preflight: features {format_bytes(f.train_bytes)} train + {format_bytes(f.test_bytes)} "
                f"test; {'in memory' if self.in_memory else 'streaming'} ({why}): {io}; peak RAM "
                f"~{format_bytes(self.peak)}; run directory ~{format_bytes(f.disk)} "
                f"({format_bytes(self.free_disk)} free)")

    def record(self) -> dict:
        """JSON-able summary (config.json / summary.json)."""
        return {"access": self.access, "forced": self.forced, "memory_budget_bytes": self.budget,
                "free_disk_bytes": self.free_disk, **dataclasses.asdict(self.footprint)}


def plan(footprint: Footprint, budget: int, free_disk_bytes: int,
         force: Access | None = None) -> Plan:
    """Picks the access path: in memory only if its peak fits ``budget``,
    else streaming if that fits; ``force`` fixes the path (still checked).

    Raises:
      ResourceError: the path (or both paths) cannot fit the budget, or the
        run directory cannot fit the free disk space; the message says what
        is needed and what to change.
    """
    f = footprint
    if f.disk > free_disk_bytes:
        raise ResourceError(
            f"disk: the run directory needs ~{format_bytes(f.disk)} but only "
            f"{format_bytes(free_disk_bytes)} is free there (free space or choose another --workdir)")
    if force == "memory":
        if f.memory_peak > budget:
            raise ResourceError(
                f"memory: holding the features in memory needs ~{format_bytes(f.memory_peak)} "
                f"(features {format_bytes(f.train_bytes + f.test_bytes)}) but the memory budget is "
                f"{format_bytes(budget)} (drop --train.streaming False to stream from disk, or raise "
                f"--memory-budget)")
        return Plan("memory", budget, f, free_disk_bytes, forced=True)
    if force == "stream":
        if f.stream_peak > budget:
            raise ResourceError(_stream_refusal(f, budget))
        return Plan("stream", budget, f, free_disk_bytes, forced=True)
    if f.memory_peak <= budget:
        return Plan("memory", budget, f, free_disk_bytes)
    if f.stream_peak <= budget:
        return Plan("stream", budget, f, free_disk_bytes)
    raise ResourceError(_stream_refusal(f, budget))


def _stream_refusal(f: Footprint, budget: int) -> str:
    return (f"memory: even streaming from disk the run needs ~{format_bytes(f.stream_peak)} but the "
            f"memory budget is {format_bytes(budget)} (raise --memory-budget, or lower "
            f"--train.stream-chunk-bytes)")
