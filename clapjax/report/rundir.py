"""The run directory: config, per-round metrics, summary, resume and refusal.

Layout of a run directory::

    config.json      everything needed to repeat the run (options, split,
                     package versions, git commit, command line)
    metrics.jsonl    one JSON object per completed round
    summary.json     final and best round (best is test-set-selected)
    checkpoints/     model/optimiser/label state, managed by the engine
    test_scores.npy  final-round segment scores of the test set
    plots/           PNG figures (``--plots``)

Re-running the same configuration on an existing directory resumes; a
different configuration is refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
TEST_SCORES_FILE = "test_scores.npy"
PLOTS_DIR = "plots"
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


def write_json(path: Path, data: Any) -> None:
    """Writes JSON atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=2, sort_keys=False, allow_nan=False) + "\n")
    os.replace(tmp, path)


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


@dataclasses.dataclass(frozen=True)
class RunDir:
    """A prepared run directory.

    Attributes:
      path: the directory.
      resumed: True when it already held rounds of this same configuration.
    """

    path: Path
    resumed: bool = False

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

    def read_metrics(self) -> list[dict]:
        """Completed rounds, in order.

        A truncated last line (a run killed while writing) is dropped; any
        other unreadable line is an error naming the file and line.
        """
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text().splitlines()
        records = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if n == len(lines):
                    break  # partial write of the last round: that round is redone
                raise RunDirError(f"{self.metrics_path}:{n}: not valid JSON ({err})") from None
        for i, rec in enumerate(records, 1):
            if rec.get("round") != i:
                raise RunDirError(
                    f"{self.metrics_path}: line {i} holds round {rec.get('round')!r}, "
                    f"expected round {i}; the file was edited or two runs wrote to it"
                )
        return records

    def truncate_metrics(self, rounds: int) -> list[dict]:
        """Keeps the first ``rounds`` rounds (e.g. rounds without a checkpoint)."""
        records = self.read_metrics()[:rounds]
        tmp = self.metrics_path.with_name(METRICS_FILE + ".tmp")
        tmp.write_text("".join(json.dumps(to_jsonable(r), allow_nan=False) + "\n" for r in records))
        os.replace(tmp, self.metrics_path)
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
        return json.loads(self.summary_path.read_text()) if self.summary_path.exists() else None


def comparable(config_record: Mapping[str, Any]) -> dict:
    """The part of a config.json record that must match for a resume."""
    return {k: config_record[k] for k in ("format", "run", "resolved") if k in config_record}


def prepare(path: str | Path, record: Mapping[str, Any], *, overwrite: bool = False) -> RunDir:
    """Creates, resumes or (with ``overwrite``) wipes a run directory.

    Args:
      path: the run directory.
      record: the config.json content. Its keys ``format``, ``run`` (the user's
        configuration) and ``resolved`` (resolved option objects) must match an
        existing directory's for a resume; ``environment`` and ``command`` may differ.
      overwrite: wipe an existing run directory of a different configuration.

    Raises:
      RunDirError: a different configuration exists and ``overwrite`` is False,
        or the directory exists, is not empty and is not a run directory.
    """
    path = Path(path)
    record = to_jsonable(dict(record))
    record.setdefault("format", FORMAT_VERSION)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"workdir {path} exists and is not a directory")
    config_path = path / CONFIG_FILE
    if path.is_dir() and any(path.iterdir()):
        if not config_path.exists():
            # Never wipe a directory we did not create, even with overwrite.
            raise RunDirError(
                f"workdir {path} is not empty and holds no {CONFIG_FILE}: it is not a "
                f"clapjax run directory; choose another --workdir"
            )
        try:
            existing = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            existing = {"unreadable": str(err)}
        old, new = comparable(existing), comparable(record)
        # The user's own flags first, then the resolved options they imply.
        differences = [d for key in ("run", "resolved", "format")
                       for d in _diff(old.get(key), new.get(key), key)]
        if not differences:
            return RunDir(path, resumed=True)
        if not overwrite:
            shown = "\n  ".join(differences[:12])
            more = f"\n  ... and {len(differences) - 12} more" if len(differences) > 12 else ""
            raise RunDirError(
                f"workdir {path} holds a run with a different configuration:\n  {shown}{more}\n"
                f"Re-run with --overwrite to replace it, or choose another --workdir."
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    record = dict(record)
    record.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    write_json(config_path, record)
    return RunDir(path, resumed=False)


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
