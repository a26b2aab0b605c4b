"""The same configuration on the in-process engine, through ``clapjax.pipeline``.

This is what ``python -m experiments.run`` computes (``load_training_set`` →
``pseudo_label`` → ``make_engine`` → ``Engine.run``, evaluation each round),
used to check that the deployment computes the same model and to compare
wall times.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from clapjax import pipeline
from clapjax_flower.config import DeployConfig, open_test_source, open_train_source, resolve


class InProcessResult(NamedTuple):
    """Final global parameters, per-round test metrics and the wall time (s)."""

    params: Any
    metrics: list
    wall_time: float


def run_inprocess(cfg: DeployConfig, evaluate: bool = True) -> InProcessResult:
    """Runs the deployment's configuration in this process.

    Args:
      cfg: the deployment configuration (``run_dir`` and the DP / SecAgg+
        options are ignored: the engine has neither).
      evaluate: evaluate the global model on the test set after each round
        (the ServerApp does; include it for a like-for-like wall time).
    """
    t0 = time.perf_counter()
    resolved = resolve(cfg)
    pl = resolved.pseudo_labels
    ts = pipeline.load_training_set(open_train_source(cfg), resolved.split)
    labels = pipeline.pseudo_label(ts, pl, null_mode=cfg.null_model)
    engine = pipeline.make_engine(ts, labels, resolved.model, resolved.train, pl)
    metrics: list = []
    if evaluate:
        test = pipeline.load_test_set(open_test_source(cfg))

        def on_round(state, m):
            out = pipeline.evaluate(engine, state, test)
            metrics.append(dict(round=int(state.round), auc=out["auc"], ap_sklearn=out["ap_sklearn"],
                                ap_trapezoid=out["ap_trapezoid"], train_loss=float(m.mean_loss.mean())))
    else:
        on_round = None

    state = engine.run(on_round=on_round)
    return InProcessResult(engine.global_params(state), metrics, time.perf_counter() - t0)
