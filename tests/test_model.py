"""Scorer networks against plain numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from clapjax import model as M
from clapjax.model import ModelOptions


def _np_forward(params, x, attention, reduction="mean_probability"):
    p = jax.tree.map(np.asarray, params)
    dense = lambda name, h: h @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731

    def softmax(z):
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)

    h = dense("fc1", x)
    if attention:
        h = h * softmax(dense("attention1", x)) + h
    h = np.maximum(h, 0)
    g = dense("fc2", h)
    if attention:
        g = g * softmax(dense("attention2", h)) + g
    g = np.maximum(g, 0)
    logits = dense("fc3", g)[..., 0]
    if reduction == "mean_logit":
        return 1 / (1 + np.exp(-logits.mean(-1)))
    return (1 / (1 + np.exp(-logits))).mean(-1)


def test_parameter_counts_and_paper_2_1m():
    ref = M.parameter_counts(ModelOptions.preset("reference"), 2048)
    paper = M.parameter_counts(ModelOptions.preset("paper"), 2048)
    fc = 2048 * 512 + 512 + 512 * 32 + 32 + 32 + 1
    att = 2048 * 512 + 512 + 512 * 32 + 32
    assert ref == {"total": fc, "fc": fc, "attention": 0, "with_attention_layers": fc + att}
    assert paper["total"] == fc + att == 2_131_041
    assert paper["attention"] == att
    assert ref["with_attention_layers"] == 2_131_041  # the paper's "2.1 M"
    params = M.init_params(ModelOptions.preset("paper"), 1024, jax.random.key(0), crops=5)
    assert M.parameter_count(params) == M.parameter_counts(ModelOptions.preset("paper"), 1024)["total"]


@pytest.mark.parametrize("variant", ["paper", "reference"])
@pytest.mark.parametrize("reduction", ["mean_probability", "mean_logit"])
def test_eval_scores_match_numpy(variant, reduction):
    base = ModelOptions.preset(variant)
    opts = ModelOptions(attention=base.attention, hidden=(16, 8), crop_reduction=reduction)
    params = M.init_params(opts, 12, jax.random.key(1))
    x = np.random.default_rng(0).normal(size=(7, 3, 12)).astype(np.float32)
    got = np.asarray(jax.jit(lambda p, x: M.score(p, x, opts))(params, x))
    np.testing.assert_allclose(got, _np_forward(params, x, base.attention, reduction), rtol=2e-5, atol=1e-6)
    # xavier-uniform weights, zero biases (released code's init).
    assert all(float(jnp.abs(params[n]["bias"]).max()) == 0.0 for n in params)


_log_probs = jax.jit(lambda l: M.log_probabilities(l, ModelOptions()))


@settings(max_examples=15, deadline=None)
@given(crops=st.integers(1, 3), scale=st.floats(0.1, 60.0), seed=st.integers(0, 1000))
def test_bce_log_probabilities_stable(crops, scale, seed):
    opts = ModelOptions()
    logits = jnp.asarray(np.random.default_rng(seed).normal(size=(5, crops)) * scale, jnp.float32)
    log_p, log_q = _log_probs(logits)
    p = np.mean(1 / (1 + np.exp(-np.asarray(logits, np.float64))), axis=-1)
    assert np.isfinite(np.asarray(log_p)).all() and np.isfinite(np.asarray(log_q)).all()
    ok = (p > 1e-6) & (p < 1 - 1e-6)
    np.testing.assert_allclose(np.asarray(log_p)[ok], np.log(p[ok]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(log_q)[ok], np.log1p(-p[ok]), rtol=1e-4, atol=1e-5)


def test_masked_bce_matches_numpy():
    opts = ModelOptions(attention=False, hidden=(8, 4))
    params = M.init_params(opts, 6, jax.random.key(2))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 2, 6)).astype(np.float32)
    y = rng.random(9).astype(np.float32)
    mask = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0], bool)
    p = _np_forward(params, x, False)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    want = (bce * mask).sum() / mask.sum()
    loss = jax.jit(lambda p, x, y, m: M.bce_loss(p, x, y, m, opts))
    got = float(loss(params, jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask)))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # An all-masked batch gives exactly zero loss (max(sum(mask), 1) guard).
    assert float(loss(params, jnp.asarray(x), jnp.asarray(y), jnp.zeros(9, bool))) == 0.0


def test_dropout_masks_vmap_consistent_and_rate(impl="rbg"):
    opts = ModelOptions(hidden=(64, 32), dropout_rate=0.6)
    keys = jax.random.split(jax.random.key(5, impl=impl), 4)
    batched = jax.jit(jax.vmap(lambda k: M.dropout_masks(k, (50, 3), opts)))(keys)
    one = jax.jit(lambda k: M.dropout_masks(k, (50, 3), opts))
    single = [one(keys[i]) for i in range(4)]
    for layer in range(2):
        np.testing.assert_array_equal(np.asarray(batched[layer]), np.stack([np.asarray(s[layer]) for s in single]))
    keep = float(np.mean(np.asarray(batched[0])))
    assert abs(keep - 0.4) < 0.02
    # Different participants get different masks.
    assert not np.array_equal(np.asarray(batched[0][0]), np.asarray(batched[0][1]))


def test_training_dropout_scales_kept_units():
    opts = ModelOptions(attention=False, hidden=(8, 4), dropout_rate=0.5)
    params = M.init_params(opts, 6, jax.random.key(0))
    x = jnp.ones((3, 1, 6))
    f = jax.jit(lambda p, x, k: (M.crop_logits(p, x, opts, k), M.crop_logits(p, x, opts)))
    train, evalm = f(params, x, jax.random.key(1))
    assert train.shape == evalm.shape == (3, 1)
    assert not np.allclose(np.asarray(train), np.asarray(evalm))


def test_model_options_validation():
    with pytest.raises(ValueError, match="dropout_rate"):
        ModelOptions(dropout_rate=1.0)
    with pytest.raises(ValueError, match="variant"):
        ModelOptions.preset("other")
    assert ModelOptions.preset("reference").attention is False
    assert M.train_flops_per_row(ModelOptions.preset("reference"), 2048) == 4 * 2048 * 512 + 6 * (512 * 32 + 32)
