"""The run directory: config, per-round metrics, summary, resume and refusal.

Layout of a run directory::

    config.json          everything needed to repeat the run (options, split,
                         package versions, git commit, command line, a
                         fingerprint of the input data, round extensions)
    data_fingerprint.json  per-file fingerprint of the input data (resume check)
    metrics.jsonl        one JSON object per completed round
    summary.json         final and best round (best is test-set-selected)
    checkpoints/         model/optimiser/label state, managed by the engine
    test_scores.npy      final-round segment scores of the test set
    plots/               PNG figures (``--plots``)
    .lock, .lock-holder.json  the OS lock of a run in progress and who holds it

Re-running the same configuration on an existing directory resumes; a
different configuration is refused unless ``overwrite`` is set. Every file is
written atomically (temporary file, fsync, rename) except ``metrics.jsonl``,
which is appended one line per round and repaired to its last complete record
when a run resumes. While a run uses the directory it holds an exclusive OS
file lock (``filelock``: ``flock`` on POSIX), which the OS releases when the
process ends, even on ``kill -9``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
TEST_SCORES_FILE = "test_scores.npy"
PSEUDO_LABELS_FILE = "pseudo_labels.npz"
FINGERPRINT_FILE = "data_fingerprint.json"
PLOTS_DIR = "plots"
LOCK_FILE = ".lock"
HOLDER_FILE = ".lock-holder.json"
#: Suffix of the temporary files of atomic writes (leftovers of a kill are ignored).
TEMP_SUFFIX = ".tmp"
#: Format version of the run directory files.
FORMAT_VERSION = 1
#: Packages whose versions are recorded in config.json.
PACKAGES = (
    "clapjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
    "scikit-learn", "tyro",
)


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (mismatch, corruption)."""


def to_jsonable(value: Any) -> Any:
    """Converts dataclasses, numpy values, paths and tuples to JSON types.

    Non-finite floats become ``None`` so files stay strict JSON.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Opens a temporary file next to ``path``; on success it replaces ``path``.

    The data is flushed and fsynced before ``os.replace``, so ``path`` holds
    either its old content or the complete new one, never a part (a kill or a
    full disk during the write leaves at most ``<name>.tmp``, which the next
    write replaces). On an exception the temporary file is removed.

    Args:
      path: the final file.
      mode: ``"wb"`` (bytes) or ``"w"`` (text).

    Raises:
      OSError: the write or the rename failed (e.g. disk full); ``path`` is unchanged.
    """
    path = Path(path)
    tmp = path.with_name(path.name + TEMP_SUFFIX)
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Makes a rename durable (best effort: not every platform can fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    """Writes JSON atomically (see :func:`atomic_write`)."""
    text = json.dumps(to_jsonable(data), indent=2, sort_keys=False, allow_nan=False) + "\n"
    with atomic_write(path, "w") as fh:
        fh.write(text)


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` written atomically."""
    with atomic_write(path) as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (``None`` when not installed)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    if out.get("clapjax") is None and "clapjax" in out:
        # Running from a checkout without installation: the package's own version.
        import clapjax

        out["clapjax"] = getattr(clapjax, "__version__", None)
    return out


def git_state(start: Path | None = None) -> dict[str, Any]:
    """``dict(commit, dirty)`` of the checkout holding clapjax, or ``None`` values.

    ``dirty`` counts modified and untracked (not ignored) files: either means the
    commit alone does not reproduce the code. Read-only git calls only; any
    failure (no git, not a checkout) gives ``None``.
    """
    where = Path(start) if start else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return dict(commit=None, dirty=None)
        status = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=where, capture_output=True, text=True, timeout=10,
        )
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return dict(commit=commit.stdout.strip(), dirty=dirty)
    except (OSError, subprocess.SubprocessError):
        return dict(commit=None, dirty=None)


def environment() -> dict[str, Any]:
    """Software and hardware context of a run, for config.json."""
    info: dict[str, Any] = dict(
        python=sys.version.split()[0],
        platform=platform.platform(),
        packages=package_versions(),
        git=git_state(),
    )
    try:
        import jax

        info["jax_backend"] = jax.default_backend()
        info["devices"] = [str(d) for d in jax.devices()]
    except Exception as err:  # a broken accelerator install must not hide the run
        info["jax_backend"] = f"unavailable: {err}"
    return info


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in a:
                out.append(f"{path}: (absent) -> {b[key]!r}")
            elif key not in b:
                out.append(f"{path}: {a[key]!r} -> (absent)")
            else:
                out.extend(_diff(a[key], b[key], path))
        return out
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


# ------------------------------------------------------------------ lock


class RunDirLocked(RunDirError):
    """Another process holds the run directory's lock."""


class DirectoryLock:
    """An exclusive OS lock on a run directory, naming its holder.

    The lock is ``filelock.FileLock`` on ``<dir>/.lock`` (``flock`` on POSIX,
    ``LockFileEx`` on Windows): the OS drops it when the holding process ends,
    however it ends. It is re-entrant within one process (other processes
    are refused). Who holds it (pid, host, start time, command) is written
    to ``<dir>/.lock-holder.json`` after acquiring, for the error message of
    a second run.

    Args:
      folder: the run directory (must exist).
    """

    def __init__(self, folder: Path):
        import filelock

        self.folder = Path(folder)
        # One lock object per path and process (re-entrant within a process, so
        # library code that prepares the same directory twice does not block itself).
        self._lock = filelock.FileLock(str(self.folder / LOCK_FILE), timeout=0, is_singleton=True)
        self.held = False

    def acquire(self) -> "DirectoryLock":
        """Takes the lock at once or raises :class:`RunDirLocked` naming the holder."""
        import filelock

        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise RunDirLocked(
                f"workdir {self.folder}: in use by another run ({self.describe_holder()}) "
                f"(wait for it to finish, stop it, or choose another --workdir)"
            ) from None
        self.held = True
        if getattr(self._lock, "lock_counter", 1) > 1:
            return self  # re-entered by this process: the holder file is already ours
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        }
        with contextlib.suppress(OSError):
            write_json(self.folder / HOLDER_FILE, holder)
        return self

    def describe_holder(self) -> str:
        """``pid N on HOST since TIME: COMMAND`` from the holder file (best effort)."""
        try:
            h = json.loads((self.folder / HOLDER_FILE).read_text())
            return f"pid {h['pid']} on {h['host']} since {h['started']}: {h['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def release(self) -> None:
        if self.held:
            self.held = False
            self._lock.release()
            if not self._lock.is_locked:
                with contextlib.suppress(OSError):
                    (self.folder / HOLDER_FILE).unlink()


# ------------------------------------------------------------------ data fingerprint

#: Bytes hashed from the start and the end of a non-``.npy`` file.
_SAMPLE_BYTES = 4096


def _npy_sample(fh, size: int) -> tuple[list[int] | None, str | None, bytes]:
    """Shape, dtype and the bytes of the first, middle and last rows of an ``.npy`` file."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError):
        fh.seek(0)
        return None, None, fh.read(_SAMPLE_BYTES)
    offset = fh.tell()
    fh.seek(0)
    sample = fh.read(offset)
    row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize if len(shape) > 1 else dtype.itemsize
    rows = int(shape[0]) if shape else 1
    for r in sorted({0, rows // 2, max(rows - 1, 0)}):
        fh.seek(offset + r * row)
        sample += fh.read(min(row, _SAMPLE_BYTES))
    return [int(d) for d in shape], str(dtype), sample


def file_fingerprint(path: Path, name: str) -> dict[str, Any]:
    """Name, size, mtime, shape/dtype (``.npy``) and a hash of the header and sampled rows."""
    st = path.stat()
    entry: dict[str, Any] = {"name": name, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
    with open(path, "rb") as fh:
        if path.suffix == ".npy":
            shape, dtype, sample = _npy_sample(fh, st.st_size)
            entry["shape"], entry["dtype"] = shape, dtype
        else:
            sample = fh.read(_SAMPLE_BYTES)
            if st.st_size > 2 * _SAMPLE_BYTES:
                fh.seek(st.st_size - _SAMPLE_BYTES)
            sample += fh.read(_SAMPLE_BYTES)
    entry["sample_sha256"] = hashlib.sha256(sample).hexdigest()[:16]
    return entry


def data_fingerprint(files: Iterable[tuple[str, str | Path]]) -> dict[str, Any]:
    """A cheap fingerprint of the input files of a run.

    Per file: its name, size, modification time, shape and dtype (``.npy``),
    and a hash of its header and a few rows (first, middle, last). Only
    headers and three rows per file are read, so a folder of thousands of
    feature files takes about a second. An edit that changes neither the
    size, the mtime nor the sampled rows goes unnoticed (mtimes change on
    every ordinary write).

    Args:
      files: ``(name, path)`` pairs; the name identifies the file in messages
        (e.g. its path relative to the features folder).

    Returns:
      ``dict(digest, files, bytes, entries)``; ``entries`` is the per-file list
      (stored in ``data_fingerprint.json``), the rest goes to config.json.

    Raises:
      OSError: a file that cannot be read (the message names it).
    """
    entries = sorted((file_fingerprint(Path(p), str(n)) for n, p in files), key=lambda e: e["name"])
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    return {"digest": digest, "files": len(entries), "bytes": int(sum(e["size"] for e in entries)),
            "entries": entries}


def describe_fingerprint_change(old: Sequence[Mapping[str, Any]] | None,
                                new: Sequence[Mapping[str, Any]]) -> str:
    """One line saying which files were added, removed or changed (and how)."""
    if old is None:
        return f"the input data changed ({len(new)} files now; the old per-file list is missing)"
    before = {e["name"]: e for e in old}
    after = {e["name"]: e for e in new}
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = []
    for name in sorted(set(before) & set(after)):
        a, b = before[name], after[name]
        what = [f"{k} {a.get(k)} -> {b.get(k)}" for k in ("shape", "dtype", "size") if a.get(k) != b.get(k)]
        if not what and a.get("sample_sha256") != b.get("sample_sha256"):
            what.append("content changed")
        if not what and a.get("mtime_ns") != b.get("mtime_ns"):
            what.append("modified (mtime)")
        if what:
            changed.append(f"{name}: {', '.join(what)}")
    parts = []
    for label, items in (("changed", changed), ("added", added), ("removed", removed)):
        if items:
            parts.append(f"{len(items)} {label} (e.g. {items[0]})")
    return "; ".join(parts) if parts else "the input data changed"


# ------------------------------------------------------------------ run directory


@dataclasses.dataclass
class RunDir:
    """A prepared (and, from :func:`prepare`, locked) run directory.

    Attributes:
      path: the directory.
      resumed: True when it already held this configuration.
      changes: dotted config paths that differ from the stored run and were
        allowed by ``prepare(allowed_changes=...)``, as ``(path, old, new)``.
      lock: the held directory lock (None for a read-only view).
      record: the config.json record asked for (written unless ``changes``).
    """

    path: Path
    resumed: bool = False
    changes: tuple[tuple[str, Any, Any], ...] = ()
    lock: DirectoryLock | None = None
    record: dict | None = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Releases the lock (also released by the OS when the process ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def plots_dir(self) -> Path:
        return self.path / PLOTS_DIR

    def read_config(self) -> dict:
        return json.loads(self.config_path.read_text())

    def write_config(self, record: Mapping[str, Any]) -> None:
        write_json(self.config_path, record)

    def _parse_metrics(self) -> tuple[list[dict], bool]:
        """``(records, clean)``: complete records, and whether the file holds nothing else."""
        if not self.metrics_path.exists():
            return [], True
        text = self.metrics_path.read_text()
        lines = text.split("\n")
        records = []
        clean = True
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            last = all(not rest.strip() for rest in lines[n:])
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                if last:
                    clean = False  # a kill during the append: that round is redone
                    break
                raise RunDirError(
                    f"{self.metrics_path}:{n}: not valid JSON ({err}) (the file was edited; "
                    f"restore it, or re-run with --overwrite to start again)"
                ) from None
            records.append(rec)
            if last and not text.endswith("\n"):
                clean = False  # complete record without its newline
        for i, rec in enumerate(records, 1):
            if rec.get("round") != i:
                raise RunDirError(
                    f"{self.metrics_path}: line {i} holds round {rec.get('round')!r}, expected "
                    f"round {i} (the file was edited or two runs wrote to it; restore it, or "
                    f"re-run with --overwrite to start again)"
                )
        return records, clean

    def read_metrics(self) -> list[dict]:
        """Completed rounds, in order.

        A truncated last line (a run killed while writing) is dropped; any
        other unreadable line is an error naming the file and line.
        """
        return self._parse_metrics()[0]

    def repair_metrics(self) -> list[dict]:
        """Rewrites ``metrics.jsonl`` to its complete records (a partial last line
        left by a kill is removed, so the redone round is not appended onto it)."""
        records, clean = self._parse_metrics()
        if not clean:
            self._rewrite_metrics(records)
        return records

    def _rewrite_metrics(self, records: Sequence[Mapping[str, Any]]) -> None:
        with atomic_write(self.metrics_path, "w") as fh:
            fh.write("".join(json.dumps(to_jsonable(r), allow_nan=False) + "\n" for r in records))

    def truncate_metrics(self, rounds: int) -> list[dict]:
        """Keeps the first ``rounds`` rounds (e.g. rounds without a checkpoint)."""
        records = self.read_metrics()[:rounds]
        self._rewrite_metrics(records)
        return records

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Appends one round as one line, flushed to disk."""
        line = json.dumps(to_jsonable(record), allow_nan=False) + "\n"
        with open(self.metrics_path, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json(self.summary_path, summary)

    def read_summary(self) -> dict | None:
        """The summary, or None when absent or unreadable."""
        try:
            return json.loads(self.summary_path.read_text())
        except (OSError, ValueError):
            return None

    def holds_work(self) -> bool:
        """Whether anything computed from the inputs is here (pseudo-labels, rounds, checkpoints)."""
        if (self.path / PSEUDO_LABELS_FILE).exists() or self.read_metrics():
            return True
        ckpt = self.checkpoint_dir
        return ckpt.is_dir() and any(ckpt.iterdir())


def comparable(config_record: Mapping[str, Any]) -> dict:
    """The part of a config.json record that must match for a resume."""
    return {k: config_record[k] for k in ("format", "run", "resolved") if k in config_record}


def _bookkeeping(name: str) -> bool:
    """Files of an unfinished start: the lock, its holder, temporary files."""
    return name in (LOCK_FILE, HOLDER_FILE) or name.endswith(TEMP_SUFFIX)


def _get(record: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(record, Mapping) or key not in record:
            return None
        record = record[key]
    return record


def prepare(path: str | Path, record: Mapping[str, Any], *, overwrite: bool = False,
            fingerprint: Mapping[str, Any] | None = None,
            allowed_changes: Iterable[str] = ()) -> RunDir:
    """Creates, resumes or (with ``overwrite``) wipes a run directory, and locks it.

    Args:
      path: the run directory.
      record: the config.json content. Its keys ``format``, ``run`` (the user's
        configuration) and ``resolved`` (resolved option objects) must match an
        existing directory's for a resume; ``environment`` and ``command`` may differ.
      overwrite: wipe an existing run directory of a different configuration
        or of changed input data.
      fingerprint: :func:`data_fingerprint` of the inputs; stored, and compared
        with the stored one on resume.
      allowed_changes: dotted paths (e.g. ``"run.rounds"``) that may differ
        from the stored configuration; reported in ``RunDir.changes`` for the
        caller to check and record.

    Returns:
      the locked :class:`RunDir`; release it with ``close()`` (or ``with``).

    Raises:
      RunDirLocked: another process is using the directory.
      RunDirError: a different configuration or changed input data when the
        directory holds work and ``overwrite`` is False, or the directory is
        not empty and is not a run directory (never wiped).
      OSError: the directory cannot be created or written.
    """
    path = Path(path)
    record = to_jsonable(dict(record))
    record.setdefault("format", FORMAT_VERSION)
    allowed = tuple(allowed_changes)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"workdir {path}: exists and is not a directory (choose another --workdir)")
    config_path = path / CONFIG_FILE
    if path.is_dir() and not config_path.exists() and any(not _bookkeeping(p.name) for p in path.iterdir()):
        # Never wipe a directory we did not create, even with overwrite.
        raise RunDirError(
            f"workdir {path}: not empty and holds no {CONFIG_FILE}, so it is not a clapjax run "
            f"directory (choose another --workdir)"
        )
    path.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(path).acquire()
    try:
        return _prepare_locked(path, record, overwrite, fingerprint, allowed, lock)
    except BaseException:
        lock.release()
        raise


def _prepare_locked(path: Path, record: dict, overwrite: bool, fingerprint: Mapping[str, Any] | None,
                    allowed: tuple[str, ...], lock: DirectoryLock) -> RunDir:
    config_path = path / CONFIG_FILE
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    summary_fp = None
    if fingerprint is not None:
        summary_fp = {k: v for k, v in fingerprint.items() if k != "entries"}
        record["data"] = summary_fp
    if config_path.exists():
        try:
            existing = json.loads(config_path.read_text())
            if not isinstance(existing, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            existing = {"unreadable": str(err)}
        view = RunDir(path, resumed=True)
        old, new = comparable(existing), comparable(record)
        differences, changes = [], []
        for key in ("run", "resolved", "format"):
            for d in _diff(old.get(key), new.get(key), key):
                dotted = d.split(":", 1)[0]
                if dotted in allowed:
                    changes.append((dotted, _get(existing, dotted), _get(record, dotted)))
                else:
                    differences.append(d)
        data_changed = None
        stored_fp = existing.get("data")
        if fingerprint is not None and stored_fp is not None and stored_fp.get("digest") != fingerprint["digest"]:
            try:
                old_entries = json.loads((path / FINGERPRINT_FILE).read_text())
            except (OSError, ValueError):
                old_entries = None
            data_changed = describe_fingerprint_change(old_entries, fingerprint["entries"])
        if not differences and data_changed is None:
            record["created"] = existing.get("created", now)
            if "rounds_history" in existing:
                record["rounds_history"] = existing["rounds_history"]
            if not changes and stored_fp is None and fingerprint is not None:
                write_json(config_path, record)  # a run directory from before fingerprints
            if fingerprint is not None and not (path / FINGERPRINT_FILE).exists():
                write_json(path / FINGERPRINT_FILE, fingerprint["entries"])
            view.resumed = True
            view.changes = tuple(changes)
            view.record = record  # with changes: the caller checks them, then write_config(record)
            view.lock = lock
            return view
        if not overwrite and view.holds_work():
            if "unreadable" in existing:
                raise RunDirError(
                    f"{config_path}: not valid JSON ({existing['unreadable']}) (restore it, or re-run "
                    f"with --overwrite to start again)")
            if differences:
                shown = "; ".join(differences[:8])
                more = f"; ... and {len(differences) - 8} more" if len(differences) > 8 else ""
                raise RunDirError(
                    f"workdir {path}: holds a run with a different configuration ({shown}{more}) "
                    f"(re-run with --overwrite to replace it, or choose another --workdir)"
                )
            raise RunDirError(
                f"workdir {path}: the input data changed since this run started ({data_changed}); "
                f"its pseudo-labels and rounds come from the old data (re-run with --overwrite to "
                f"start again on the new data, or choose another --workdir)"
            )
        # A different configuration with --overwrite, or a directory that holds no
        # work yet (e.g. a first attempt stopped by a data error): start afresh.
        for child in path.iterdir():
            if child.name in (LOCK_FILE, HOLDER_FILE):
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    else:
        for child in path.iterdir():  # leftovers of a start killed before config.json
            if child.name.endswith(TEMP_SUFFIX):
                child.unlink()
    record = dict(record)
    record.setdefault("created", now)
    if fingerprint is not None:
        write_json(path / FINGERPRINT_FILE, fingerprint["entries"])
    write_json(config_path, record)
    return RunDir(path, resumed=False, lock=lock, record=record)


def best_and_final(metrics: list[dict], key: str = "auc") -> dict:
    """Summary of the final round and the test-set-selected best round.

    Args:
      metrics: completed rounds (metrics.jsonl records).
      key: the metric that picks the best round.
    """
    if not metrics:
        return dict(rounds_completed=0, final=None, best=None)
    final = metrics[-1]
    scored = [m for m in metrics if m.get(key) is not None]
    best = max(scored, key=lambda m: m[key]) if scored else None
    picked = ("round", "auc", "ap_sklearn", "ap_trapezoid", "train_loss")
    out_final = {k: final.get(k) for k in picked}
    out_best = None
    if best is not None:
        out_best = {k: best.get(k) for k in picked}
        out_best["selected_on"] = "test set"
        out_best["selected_by"] = key
    return dict(rounds_completed=len(metrics), final=out_final, best=out_best)
