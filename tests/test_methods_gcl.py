"""GCL's stages against plain numpy / loop references; its two-network local step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clapjax import model as M
from clapjax.engine import Batch, ClientContext, ConsecutiveSampler, TrainOptions, local
from clapjax.methods import GCL, GCLOptions, gcl

SMALL = GCLOptions(gen_hidden=(6, 3, 6), disc_hidden=(5, 3), disc_dropout=0.5)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 20), st.integers(0, 99), st.sampled_from(["mean_std", "percentile"]),
       st.floats(0.0, 2.0), st.floats(5.0, 95.0))
def test_threshold_labels_match_numpy(n, seed, rule, k, pct):
    rng = np.random.default_rng(seed)
    values = rng.random(n).astype(np.float32)
    mask = rng.random(n) < 0.8
    mask[0] = True
    opts = GCLOptions(threshold=rule, threshold_k=k, threshold_percentile=pct)
    got = np.asarray(gcl.threshold_labels(jnp.asarray(values), jnp.asarray(mask), opts))
    v = values[mask].astype(np.float64)
    cut = v.mean() + k * v.std() if rule == "mean_std" else np.percentile(v, pct)
    want = np.where(mask & (values > cut), 1.0, 0.0)
    # values within float32 rounding of the threshold may fall either side
    near = np.abs(values - cut) < 1e-5
    np.testing.assert_array_equal(got[~near], want[~near])


def _np_generator(params, x):
    h = x
    names = sorted((k for k in params if k.startswith("fc")), key=lambda s: int(s[2:]))
    for name in names:
        h = np.maximum(h @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"]), 0.0)
    return h @ np.asarray(params["out"]["kernel"]) + np.asarray(params["out"]["bias"])


def test_reconstruction_error_matches_numpy():
    method = GCL(SMALL)
    params = method.init_params(8, 3, jax.random.key(0))
    x = np.random.default_rng(0).normal(size=(5, 3, 8)).astype(np.float32)
    got = np.asarray(gcl.reconstruction_error(params["generator"], x, SMALL.gen_hidden))
    want = ((_np_generator(params["generator"], x.astype(np.float64)) - x) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert set(params) == {"generator", "discriminator"}
    by_recon = GCL(SMALL.replace(score="reconstruction")).score(params, x)
    np.testing.assert_allclose(np.asarray(by_recon), want, rtol=1e-5)


def _reference_step(method, opts, params, batch, key):
    """One cooperative step written out: D on G's labels, then G on the updated D's labels."""
    tx = local.local_optimizer(opts)
    o = method.options
    km, kt = jax.random.split(key)
    masks = M.dropout_masks(km, batch.x.shape[:-1], o.discriminator)
    x, mask = batch.x, batch.mask
    err = gcl.reconstruction_error(params["generator"], x, o.gen_hidden)
    y_d = gcl.threshold_labels(err, mask, o)

    def d_loss(d):
        return M.bce_loss(d, x, y_d, mask, o.discriminator, masks=masks)

    ld, gd = jax.value_and_grad(d_loss)(params["discriminator"])
    upd, _ = tx.update(gd, tx.init(params["discriminator"]), params["discriminator"])
    d_new = optax.apply_updates(params["discriminator"], upd)
    y_g = gcl.threshold_labels(M.score(d_new, x, o.discriminator), mask, o)
    target = jnp.where(y_g[:, None, None] > 0, jnp.ones_like(x), x)

    def g_loss(g):
        r = gcl.Generator(o.gen_hidden).apply({"params": g}, x)
        per = jnp.mean(jnp.square(r - target), axis=(1, 2))
        return jnp.sum(per * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    lg, gg = jax.value_and_grad(g_loss)(params["generator"])
    upd, _ = tx.update(gg, tx.init(params["generator"]), params["generator"])
    return {"generator": optax.apply_updates(params["generator"], upd), "discriminator": d_new}, ld + lg


def test_cooperative_step_matches_a_written_out_step():
    method = GCL(SMALL)
    opts = TrainOptions(optimizer="adam", lr=1e-2, l2=0.0, plr_start_round=None)
    fns = local.client_fns(method, opts, phase="cooperative")
    params = method.init_params(8, 2, jax.random.key(1))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 2, 8)).astype(np.float32)
    x[3] += 3.0  # one outlier segment
    mask = np.ones(10, bool)
    mask[-2:] = False
    batch = Batch(jnp.asarray(x), jnp.arange(10, dtype=jnp.int32), jnp.asarray(mask), jnp.asarray(True))
    key = jax.random.key(5, impl=opts.prng_impl)
    state = jax.jit(fns.step)(fns.init(params, key), ClientContext(params, (), jnp.zeros(10)), batch)
    _, step_key = jax.random.split(key)
    want, loss = jax.jit(lambda p: _reference_step(method, opts, p, batch, step_key))(params)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(state.loss_sum), float(loss), rtol=1e-5)
    # each network has its own optimiser state; the pre-training phase trains G only
    assert set(state.opt_state) == {"generator", "discriminator"}
    pre = local.client_fns(method, opts, phase="pretrain")
    st2 = jax.jit(pre.step)(pre.init(params, key), ClientContext(params, (), jnp.zeros(10)), batch)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(st2.params["discriminator"]),
                                                     jax.tree.leaves(params["discriminator"])))
    assert not np.array_equal(np.asarray(st2.params["generator"]["out"]["bias"]),
                              np.asarray(params["generator"]["out"]["bias"]))


@pytest.mark.parametrize("target", ["ones", "zeros", "noise", "permuted"])
def test_negative_targets(target):
    method = GCL(SMALL.replace(negative_target=target))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2, 6)).astype(np.float32))
    y = jnp.asarray([0.0, 1.0, 0.0, 1.0])
    t = np.asarray(method._target(x, y, jax.random.key(0)))
    np.testing.assert_array_equal(t[[0, 2]], np.asarray(x)[[0, 2]])  # normal segments: the input itself
    if target == "ones":
        assert (t[[1, 3]] == 1).all()
    elif target == "zeros":
        assert (t[[1, 3]] == 0).all()
    elif target == "permuted":  # each row of a segment: the same permutation of its elements
        for i in (1, 3):
            for c in range(2):
                np.testing.assert_array_equal(np.sort(t[i, c]), np.sort(np.asarray(x)[i, c]))
    else:
        assert not np.allclose(t[[1, 3]], np.asarray(x)[[1, 3]])


def _loop_runs(count, lengths, b, within):
    runs = []
    if within:
        start = 0
        for m in lengths:
            for s in range(0, m, b):
                runs.append(list(range(start + s, start + min(s + b, m))))
            start += m
    else:
        for s in range(0, count, b):
            runs.append(list(range(s, min(s + b, count))))
    return runs


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=5), st.integers(1, 6), st.booleans(), st.booleans())
def test_consecutive_sampler_matches_a_loop(lengths, b, within, shuffle):
    count = sum(lengths)
    sampler = ConsecutiveSampler(b, within_videos=within)
    rng = np.random.default_rng(0) if shuffle else None
    pos, mask = sampler.epoch(count, np.asarray(lengths), None, rng)
    runs = _loop_runs(count, lengths, b, within)
    assert pos.shape == (len(runs), b) == mask.shape
    assert sampler.steps_per_epoch(count, np.asarray(lengths)) == len(runs)
    got = [list(p[m]) for p, m in zip(pos, mask)]
    assert sorted(got) == sorted(runs)  # every run once (in random order when shuffled)
    if not shuffle:
        assert got == runs
    assert (pos[~mask] == 0).all()


def test_gcl_phases_and_presets():
    method = GCL(GCLOptions(pretrain_rounds=2))
    assert [method.phase(r) for r in range(4)] == ["pretrain", "pretrain", "cooperative", "cooperative"]
    assert method.refinement() is None
    assert GCLOptions.preset("reference") == GCLOptions.preset("paper")
    assert gcl.train_overrides("paper")["plr_start_round"] is None
    with pytest.raises(ValueError, match="negative_target"):
        GCLOptions(negative_target="random")
    with pytest.raises(ValueError, match="no phase"):
        method.stages("warmup")
