"""CLAP on Flower's deployment runtime, every participant its own process, on loopback.

    python -m experiments.deploy --participants 3 --preset tiny --generate-split \\
        --videos-per-participant 2 --rounds 2

starts a SuperLink and K SuperNodes on 127.0.0.1 (free ports, telemetry off, a
temporary ``FLWR_HOME``), runs the clapjax Flower App with ``flwr run
--stream``, prints the streamed progress, and stops every process it started,
also on Ctrl-C, on failure and on timeout. The run directory has the layout of
``python -m experiments.run`` (config.json, metrics.jsonl, summary.json,
checkpoints/, test_scores.npy) plus ``wire/`` (every record sent and received,
by name, shape and size) and ``deploy_status.json``.

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
from typing import Annotated, Optional

import tyro

from clapjax_flower.config import ConfigError, DeployConfig, resolve
from clapjax_flower.launch import DeploymentError, LocalFederation


@dataclasses.dataclass(frozen=True)
class DeployCommand:
    """Run CLAP with one Flower SuperNode per participant on this machine."""

    run: Annotated[DeployConfig, tyro.conf.OmitArgPrefixes]
    workdir: Optional[Path] = None
    """Run directory (default: runs/flower-<dataset>-<split>-<K>-<variant>-seed<seed>)."""
    state_root: Optional[Path] = None
    """Where the SuperNodes keep their private state and logs (default: a temporary directory, removed)."""
    timeout: float = 3600.0
    """Seconds for the whole run before everything is stopped."""
    compare_inprocess: bool = False
    """Also run the configuration on the in-process engine and compare final models."""
    json: bool = False
    """Print only one JSON object (the summary) on stdout."""


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


def main(cmd: DeployCommand) -> dict:
    cfg = cmd.run
    resolve(cfg)  # fail on a bad configuration before any process starts
    run_dir = (cmd.workdir or (Path(cfg.run_dir) if cfg.run_dir else default_workdir(cfg))).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg.replace(run_dir=str(run_dir))
    echo = (lambda line: None) if cmd.json else (lambda line: print(line, flush=True))
    k = cfg.num_participants
    t0 = time.perf_counter()
    with LocalFederation(k, workdir=cmd.state_root, echo=echo) as fed:
        echo(f"[deploy] SuperLink on 127.0.0.1:{fed.port}, {k} SuperNodes; logs in {fed.log_dir}")
        result = fed.run(cfg.to_run_config(), run_dir, timeout=cmd.timeout)
        # Participants' wire logs live on "their machines"; on loopback, collect them.
        for i in range(k):
            for log in fed.state_dir(i).glob("run_*/wire.jsonl"):
                shutil.copy(log, run_dir / "wire" / f"participant_{i}.jsonl")
    summary = dict(result.status["summary"])
    summary["deployment"] = dict(summary.get("deployment", {}), flwr_run_wall_time_s=result.wall_time,
                                 launcher_wall_time_s=time.perf_counter() - t0)
    if cmd.compare_inprocess:
        summary["inprocess"] = compare(run_dir, cfg)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if cmd.json:
        print(json.dumps(summary))
    else:
        final = summary.get("final") or {}
        print(f"[deploy] done: final auc {final.get('auc')}, run directory {run_dir}", flush=True)
    return summary


def cli(argv: list[str] | None = None) -> int:
    cmd = tyro.cli(DeployCommand, args=argv)
    try:
        main(cmd)
    except ConfigError as err:
        print(f"[deploy] invalid configuration: {err}", file=sys.stderr, flush=True)
        return 2
    except DeploymentError as err:
        print(f"[deploy] FAILED: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("[deploy] interrupted; every started process was stopped", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
