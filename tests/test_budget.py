"""experiments.budget: the convergence rule and its report of a run directory."""

import json

import numpy as np
import pytest

from experiments import budget


def _loop_reference(aucs, band=budget.FLAT_POINTS, last=budget.FLAT_ROUNDS):
    for r in range(last, len(aucs) + 1):
        w = aucs[r - last:r]
        if max(w) - min(w) > band:
            continue
        if all(min(w) - band <= a <= max(w) + band for a in aucs[r:]):
            return r
    return None


@pytest.mark.parametrize("aucs, expected", [
    ([0.70, 0.84, 0.907, 0.9071, 0.9077], 5),
    ([0.70, 0.84, 0.907, 0.9071, 0.9077, 0.95], None),   # a later rise leaves the band
    ([0.5, 0.5, 0.5], 3),
    ([0.5, 0.5], None),                                   # fewer rounds than the window
    ([0.80, 0.81, 0.80, 0.80, 0.801, 0.80], 5),
])
def test_flat_rounds(aucs, expected):
    assert budget.flat_rounds(aucs) == expected == _loop_reference(aucs)


def test_flat_rounds_matches_loop_on_random_curves():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = list(0.8 + np.cumsum(rng.normal(0, 0.004, rng.integers(1, 12))))
        assert budget.flat_rounds(a) == _loop_reference(a)


def test_flatness_reads_a_run_directory(tmp_path):
    recs = [{"round": i + 1, "auc": a, "cpu_s": 2.0, "time_s": 3.0} for i, a in enumerate([0.6, 0.7, 0.701, 0.702])]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "summary.json").write_text(json.dumps({"timing_s": {"session_cpu_s": 9.0}}))
    (out,) = budget.flatness([tmp_path])
    assert out["flat_from_round"] == 4 and out["last_rounds_spread_points"] == pytest.approx(0.2)
    assert out["round_cpu_s"] == [2.0] * 4 and out["timing_s"] == {"session_cpu_s": 9.0}
