"""How the default training budget was chosen: measurements and the rules applied to them.

    python -m experiments.budget movement [run flags] [--lrs 0.01 0.02 0.05 0.1 0.2 0.5]
    python -m experiments.budget flatness RUN_DIR [RUN_DIR ...]

``movement`` (learning rate). On the pseudo-labels of the run the flags
describe (default: the main job, ``--split=event --participants=13``), it
trains ONE round from the same initial parameters, PLR off:

* centralized, one epoch at the released code's learning rate 0.01 (SPEC
  §3): the step one centralized round takes;
* collaborative (the run's own split and aggregator) at every ``--lrs`` value,

and prints the L2 distance ``‖θ₁ − θ₀‖`` each moves the global model, and
the ratio collaborative / centralized. FedAvg averages ``K`` local models
that each saw ``1/K`` of the data, so at equal learning rates a round moves
the model roughly ``1/K`` as far as a centralized epoch (issue: random 5,
one collaborative round ≈ 1,200 centralized SGD steps against 6,093 in a
centralized epoch). The rule: the default local learning rate is the value of
the 1-2-5 grid whose collaborative round moves the model closest (in log
ratio) to one centralized epoch at 0.01.

Measured on the main job (``movement`` and ``movement --variant reference``):
paper 0.2 (ratio 1.07; 0.1: 0.87), reference 0.1 (1.25; 0.05: 0.77); the
values are CLAP's run-command budget (:data:`clapjax.methods.clap.BUDGET`).

``flatness`` (rounds). For each run directory, the per-round AUC curve of
``metrics.jsonl`` and the smallest round count ``R`` at which the curve is
flat: the AUCs of rounds ``R-2 … R`` lie within ``FLAT_POINTS`` (0.5 AUC
points) and no later round of the run leaves that band by more than
``FLAT_POINTS`` (so that a pause before a further rise or fall does not
count). Also the CPU seconds of the rounds (``cpu_s``) and of the whole run.
At a constant learning rate the main job's curve kept moving (paper at 0.2:
up to 0.6 points a round; reference at 0.2: a peak at round 4, then a drift
down over 12 rounds), so the budget ends with 3 rounds at a tenth of the
learning rate (``lr_milestones=(7,)`` of 10 rounds), after which both
variants pass this rule; the README ("Training budget") lists the runs.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: Width of the "flat" band of the convergence rule, in AUC (0.5 points).
FLAT_POINTS = 0.005
#: Rounds the band must hold (the last three).
FLAT_ROUNDS = 3
DEFAULT_LRS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def param_distance(a, b) -> float:
    """L2 distance between two parameter pytrees."""
    import jax

    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: np.sum((np.asarray(x, np.float64)
                                                               - np.asarray(y, np.float64)) ** 2), a, b))
    return float(math.sqrt(sum(leaves)))


def movement(argv: Sequence[str], lrs: Sequence[float] = DEFAULT_LRS, base_lr: float = 0.01) -> dict[str, Any]:
    """One-round parameter movement, collaborative at ``lrs`` vs centralized at ``base_lr``."""
    from clapjax import pipeline
    from experiments import run
    from experiments.config import validate

    resolved = validate(run.parse(list(argv)))
    train_source, _ = run.open_sources(resolved)
    c0 = time.process_time()
    ts = pipeline.load_training_set(train_source, resolved.split)
    pl = pipeline.pseudo_label(ts, resolved.pseudo_labels, weak_videos=resolved.weak_videos(),
                               null_mode=resolved.config.null_model)
    prep_cpu = time.process_time() - c0

    def one_round(setting: str, lr: float) -> tuple[float, float, float]:
        opts = resolved.train.replace(setting=setting, lr=lr, plr_start_round=None, rounds=1)
        engine = pipeline.make_engine(ts, pl, resolved.model, opts, resolved.pseudo_labels)
        state = engine.init()
        start = engine.global_params(state)
        c = time.process_time()
        new, metrics = engine.run_round(state)
        return (param_distance(engine.global_params(new), start), float(np.mean(metrics.mean_loss)),
                time.process_time() - c)

    central, central_loss, central_cpu = one_round("centralized", base_lr)
    rows = []
    for lr in lrs:
        d, loss, cpu = one_round("collaborative", float(lr))
        rows.append({"lr": float(lr), "distance": d, "ratio": d / central, "mean_loss": loss, "cpu_s": cpu})
    best = min(rows, key=lambda r: abs(math.log(r["ratio"])))
    return {
        "run": list(argv), "variant": resolved.config.variant, "participants": resolved.num_participants,
        "centralized": {"lr": base_lr, "distance": central, "mean_loss": central_loss, "cpu_s": central_cpu},
        "collaborative": rows, "chosen_lr": best["lr"],
        "rule": "the grid learning rate whose collaborative round moves the global model closest "
                "(log ratio) to one centralized epoch at the released code's 0.01",
        "pseudo_label_cpu_s": prep_cpu,
    }


def flat_rounds(aucs: Sequence[float], band: float = FLAT_POINTS, last: int = FLAT_ROUNDS) -> int | None:
    """The smallest ``R`` (1-based) at which the curve is flat (module docstring), or None."""
    a = np.asarray(aucs, float)
    for r in range(last, a.size + 1):
        window = a[r - last:r]
        if np.ptp(window) > band:
            continue
        lo, hi = window.min() - band, window.max() + band
        if np.all((a[r:] >= lo) & (a[r:] <= hi)):
            return r
    return None


def flatness(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The convergence rule applied to each run directory's ``metrics.jsonl``."""
    out = []
    for d in run_dirs:
        d = Path(d)
        records = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
        aucs = [r["auc"] for r in records]
        summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
        r = flat_rounds(aucs)
        last = aucs[-FLAT_ROUNDS:]
        out.append({
            "run": str(d), "rounds": len(aucs), "auc": [round(a, 4) for a in aucs],
            "flat_from_round": r,
            "last_rounds_spread_points": round(100 * float(np.ptp(last)), 3) if len(last) == FLAT_ROUNDS else None,
            "round_cpu_s": [r_.get("cpu_s") for r_ in records],
            "round_wall_s": [r_.get("time_s") for r_ in records],
            "timing_s": summary.get("timing_s"),
        })
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("movement", "flatness"):
        print(__doc__)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "flatness":
        print(json.dumps(flatness(rest), indent=1))
        return 0
    lrs = DEFAULT_LRS
    if "--lrs" in rest:
        i = rest.index("--lrs")
        j = i + 1
        while j < len(rest) and not rest[j].startswith("--"):
            j += 1
        lrs = tuple(float(v) for v in rest[i + 1:j])
        rest = rest[:i] + rest[j:]
    if not any(a.startswith("--split") for a in rest):
        rest = ["--split=event", "--participants=13"] + rest
    print(json.dumps(movement(rest, lrs), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
