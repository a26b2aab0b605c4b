"""CLAP on Flower's deployment runtime, every participant its own process, on loopback.

    python -m experiments.deploy --participants 3 --preset tiny --generate-split \\
        --videos-per-participant 2 --rounds 2

starts a SuperLink and K SuperNodes on 127.0.0.1 (free ports, telemetry off, a
temporary ``FLWR_HOME``), runs the clapjax Flower App with ``flwr run
--stream``, and stops every process it started, also on Ctrl-C, on failure and
on timeout. The terminal gets what ``python -m experiments.run`` prints: one
line per round (``round 3/10  AUC …  AP …  loss …  elapsed …  ETA …``, read
from the run directory's ``metrics.jsonl`` as the ServerApp appends it) and
the same final line; ``--quiet`` and ``--json`` work as there. Flower's own
output and every process's log go to ``<run dir>/logs/`` (kept). The run
directory has the layout of ``python -m experiments.run`` (config.json,
metrics.jsonl, summary.json, checkpoints/, test_scores.npy) plus ``wire/``
(every record sent and received, by name, shape and size), ``logs/`` and
``deploy_status.json``.

With ``--compare-inprocess`` the same configuration also runs on the in-process
engine; the largest parameter difference and both wall times are reported.
Needs the ``flower`` extra (``python -m pip install -e ".[flower]"``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Callable, Optional, TextIO

import tyro

from clapjax.report.progress import Reporter
from clapjax_flower.config import ConfigError, DeployConfig, resolve
from clapjax_flower.launch import DeploymentError, LocalFederation
from experiments.run import _final_line as final_line

#: Subdirectory of the run directory that keeps the processes' logs.
LOG_DIR = "logs"


@dataclasses.dataclass(frozen=True)
class DeployCommand:
    """Run CLAP with one Flower SuperNode per participant on this machine."""

    run: Annotated[DeployConfig, tyro.conf.OmitArgPrefixes]
    workdir: Optional[Path] = None
    """Run directory (default: runs/flower-<dataset>-<split>-<K>-<variant>-seed<seed>)."""
    state_root: Optional[Path] = None
    """Where the SuperNodes keep their private state (default: a temporary directory, removed; logs stay in <run dir>/logs)."""
    timeout: float = 3600.0
    """Seconds for the whole run before everything is stopped."""
    compare_inprocess: bool = False
    """Also run the configuration on the in-process engine and compare final models."""
    overwrite: bool = False
    """Replace a run directory that holds a different configuration (refused otherwise)."""
    quiet: bool = False
    """Print only the final line."""
    json: bool = False
    """Print only JSON lines ({"event": "info"|"round"|"summary", ...}), as experiments.run --json."""


def default_workdir(cfg: DeployConfig) -> Path:
    return Path("runs") / f"flower-{cfg.dataset}-{cfg.split}-{cfg.num_participants}-{cfg.variant}-seed{cfg.seed}"


def compare(run_dir: Path, cfg: DeployConfig) -> dict:
    """Largest absolute difference between the deployment's and the in-process final model."""
    import jax
    import numpy as np

    from clapjax_flower.codec import leaf_names
    from clapjax_flower.inprocess import run_inprocess

    ref = run_inprocess(cfg)
    final = np.load(run_dir / "final_params.npz")
    diffs = {n: float(np.max(np.abs(final[n] - np.asarray(x))))
             for n, x in zip(leaf_names(ref.params), jax.tree.leaves(ref.params))}
    return dict(max_abs_param_diff=max(diffs.values()), inprocess_wall_time_s=ref.wall_time,
                inprocess_final_auc=ref.metrics[-1]["auc"] if ref.metrics else None)


class RoundLines:
    """Reports the rounds the ServerApp appends to ``metrics.jsonl``, one line each.

    Only complete lines written after ``since`` (``time.time()``) count, so a
    previous run's metrics in the same directory are never reported. Elapsed
    time runs from the launcher's start; the ETA is the mean round time so far
    times the rounds left.
    """

    def __init__(self, metrics_path: Path, total_rounds: int, reporter: Reporter, since: float, t0: float):
        self.path, self.total, self.reporter = metrics_path, total_rounds, reporter
        self.since, self.t0 = since, t0
        self.offset = 0
        self.seconds: list[float] = []

    def __call__(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits
        self.offset += len(complete)
        for raw in complete.splitlines():
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if rec.get("time", 0.0) < self.since:
                continue
            self.seconds.append(float(rec.get("seconds", 0.0)))
            left = self.total - int(rec["round"])
            eta = sum(self.seconds) / len(self.seconds) * left
            self.reporter.round(rec, self.total, time.perf_counter() - self.t0, eta)


def prepare_run_dir(run_dir: Path, cfg: DeployConfig, overwrite: bool, argv: list[str] | None = None):
    """Creates (or checks) the run directory before any process starts.

    The ServerApp prepares the same directory with the same record, finds it
    ready and keeps what the launcher put there (``logs/``). A directory of a
    different configuration is refused unless ``overwrite``; a non-empty
    directory that is not a run directory is never touched.

    Raises:
      RunDirError: as :func:`clapjax.report.rundir.prepare`.
    """
    from importlib.metadata import version

    from clapjax.report import rundir

    record = resolve(cfg).record(cfg)
    record["deployment"] = dict(runtime="flower", flwr_version=version("flwr"))
    record["environment"] = rundir.environment()
    record["command"] = argv
    return rundir.prepare(run_dir, record, overwrite=overwrite)


def main(cmd: DeployCommand, out: TextIO | None = None, err: TextIO | None = None,
         on_start: Callable[[LocalFederation], None] | None = None, argv: list[str] | None = None) -> dict:
    """Runs the deployment and returns its summary.

    Args:
      out / err: streams for results and warnings (default stdout / stderr).
      on_start: called with the started federation (tests use it to inspect
        the processes afterwards).

    Raises:
      ConfigError: an invalid configuration, before any process starts.
      RunDirError: the run directory holds something else (before any process starts).
      DeploymentError: a process failed or the run timed out.
    """
    cfg = cmd.run
    rounds = resolve(cfg).train.rounds  # fails on a bad configuration before any process starts
    mode = "json" if cmd.json else ("quiet" if cmd.quiet else "normal")
    rep = Reporter(mode, out, err)
    run_dir = (cmd.workdir or (Path(cfg.run_dir) if cfg.run_dir else default_workdir(cfg))).resolve()
    cfg = cfg.replace(run_dir=str(run_dir))
    prepare_run_dir(run_dir, cfg, cmd.overwrite, argv)
    k = cfg.num_participants
    t0, since = time.perf_counter(), time.time()
    rep.info(f"clapjax on Flower: {k} participants, {rounds} rounds; run directory: {run_dir}",
             workdir=str(run_dir))
    with LocalFederation(k, workdir=cmd.state_root, log_dir=run_dir / LOG_DIR) as fed:
        rep.info(f"SuperLink on 127.0.0.1:{fed.port} and {k} SuperNodes, one process each; "
                 f"their logs: {fed.log_dir}", port=fed.port, logs=str(fed.log_dir))
        if on_start is not None:
            on_start(fed)
        poll = RoundLines(run_dir / "metrics.jsonl", rounds, rep, since, t0)
        result = fed.run(cfg.to_run_config(), run_dir, timeout=cmd.timeout, on_poll=poll)
        # Participants' wire logs live on "their machines"; on loopback, collect them.
        for i in range(k):
            for log in fed.state_dir(i).glob("run_*/wire.jsonl"):
                shutil.copy(log, run_dir / "wire" / f"participant_{i}.jsonl")
    summary = dict(result.status["summary"])
    summary["deployment"] = dict(summary.get("deployment", {}), flwr_run_wall_time_s=result.wall_time,
                                 launcher_wall_time_s=time.perf_counter() - t0)
    if cmd.compare_inprocess:
        summary["inprocess"] = c = compare(run_dir, cfg)
        rep.info(f"in-process engine: final AUC {c['inprocess_final_auc']:.4f}, largest parameter "
                 f"difference {c['max_abs_param_diff']:.1e}, {c['inprocess_wall_time_s']:.0f} s", **c)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    rep.final(summary, final_line(summary, run_dir))
    return summary


def cli(argv: list[str] | None = None) -> int:
    from clapjax.report.rundir import RunDirError

    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = tyro.cli(DeployCommand, args=argv, prog="python -m experiments.deploy")
    try:
        main(cmd, argv=argv)
    except (ConfigError, RunDirError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except DeploymentError as err:
        print(f"error: the deployment failed: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process the launcher started was stopped", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
