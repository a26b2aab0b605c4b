"""experiments.null_check: the order test and the property it measures."""

import itertools

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from clapjax import null_model
from clapjax.options import PseudoLabelOptions
from experiments.null_check import compare, orders_agree


def _brute_force(a, b):
    return not any((a[i] < a[j] and b[i] > b[j]) or (a[i] > a[j] and b[i] < b[j])
                   for i, j in itertools.combinations(range(len(a)), 2))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=0, max_size=9))
def test_orders_agree_matches_all_pairs(pairs):
    a = np.array([p[0] for p in pairs], np.float32)
    b = np.array([p[1] for p in pairs], np.float32)
    assert orders_agree(a, b) == _brute_force(a, b)


def test_upper_tail_pvalues_order_segments_alike_under_any_mixture():
    # Σ w_k (1 - Φ((z - μ_k)/σ_k)) decreases in z for every mixture, so a participant's
    # own Gaussian and the server mixture order segments alike; the density does not.
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.uniform(40, 120, 300), jnp.float32)
    own = null_model.server_mixture([null_model.NullGaussian(np.float32(60), np.float32(100), np.int32(50))])
    mixed = null_model.server_mixture([null_model.NullGaussian(np.float32(m), np.float32(v), np.int32(c))
                                       for m, v, c in ((60, 100, 50), (90, 400, 30), (70, 25, 80))])
    p = PseudoLabelOptions()
    assert orders_agree(null_model.segment_log_scores_under_null(z, own, p),
                        null_model.segment_log_scores_under_null(z, mixed, p))
    d = PseudoLabelOptions(null_score="density")
    assert not orders_agree(null_model.segment_log_scores_under_null(z, own, d),
                            null_model.segment_log_scores_under_null(z, mixed, d))


def test_compare_on_the_tiny_preset():
    from clapjax import pipeline
    from experiments import run as run_lib
    from experiments.config import RunConfig, validate

    resolved = validate(RunConfig(preset="tiny", split="random", participants=2, quiet=True))
    train_source, _ = run_lib.open_sources(resolved)
    ts = pipeline.load_training_set(train_source, resolved.split)
    out = compare(ts, resolved.pseudo_labels, np.asarray(ts.true_segment_labels))
    assert out["same_segment_order_fraction"] == 1.0  # upper-tail p-values (paper)
    assert 0.0 <= out["same_label_fraction"] <= 1.0 and out["segments"] == ts.features.shape[0]
    # Both null models label one window of the same width per pseudo-anomalous video.
    assert out["quality"]["local"]["labelled"] == out["quality"]["server_mixture"]["labelled"] > 0


def test_bad_split_is_one_line_with_status_2(capsys):
    from experiments.null_check import cli

    assert cli(["--split", "random", "--participants", "3", "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--participants" in err[0]
