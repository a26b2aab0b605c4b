"""The local step: explicit L2 gradient == autodiff bit for bit, no per-step
parameter copies in the compiled round, host heap released after compiling."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clapjax import model as M
from clapjax.engine import Engine, TrainOptions, federated_data, hostmem, local
from clapjax.methods import Clap
from clapjax.model import ModelOptions
from experiments import bench_train


def _batches(steps, b, d, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps, b, 1, d)).astype(np.float32)
    pos = np.tile(np.arange(b, dtype=np.int32), (steps, 1))
    mask = np.ones((steps, b), bool)
    mask[-1, b // 2:] = False  # a masked partial last batch
    return x, pos, mask, np.ones(steps, bool)


def _autodiff_reference(mo, opts, params, rng, labels, batches):
    """The step as plain autodiff of the whole objective (BCE + L2 [+ prox]), scanned."""
    tx = local.local_optimizer(opts)
    (stage,) = Clap(mo).stages(0)

    def body(carry, b):
        p_, opt_state, rng_, loss_sum = carry
        rng_, dk = jax.random.split(rng_)
        masks = M.dropout_masks(dk, b[0].shape[:-1], mo) if mo.dropout_rate > 0 else None
        loss, g = jax.value_and_grad(local.local_loss, argnums=1)(
            stage.loss, p_, p_, params, local.Batch(*b), labels, masks, opts)
        updates, opt_state = tx.update(g, opt_state, p_)
        return (optax.apply_updates(p_, updates), opt_state, rng_, loss_sum + loss), None

    init = (params, tx.init(params), rng, jnp.zeros((), jnp.float32))
    out, _ = jax.lax.scan(body, init, batches)
    return out[0], out[3]


@pytest.mark.parametrize("d,l2,aggregator", [(12, 1e-4, "fedavg"), (12, 0.03, "fedavg"), (12, 0.0, "fedavg"),
                                             (12, 1e-4, "fedprox"), (2048, 1e-4, "fedavg")])
def test_step_matches_autodiff_of_whole_objective(d, l2, aggregator):
    mo = ModelOptions(attention=True, hidden=(16, 4), dropout_rate=0.5)
    opts = TrainOptions(batch_size=8, l2=l2, aggregator=aggregator, mu=0.01, plr_start_round=None)
    params = M.init_params(mo, d, jax.random.key(0))
    rng = jax.random.key(3, impl=opts.prng_impl)
    labels = jnp.asarray(np.random.default_rng(1).random(8) < 0.5, jnp.float32)
    batches = _batches(4, 8, d)
    fns = local.client_fns(mo, opts)
    ctx = local.ClientContext(params, (), labels)
    state = jax.jit(lambda s, b: local.run_steps(fns, s, ctx, None, None, *b[1:], x=b[0]))(
        fns.init(params, rng), tuple(jnp.asarray(a) for a in batches))
    ref_params, ref_loss = jax.jit(lambda p, b: _autodiff_reference(mo, opts, p, rng, labels, b))(
        params, tuple(jnp.asarray(a) for a in batches))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_params)))
    np.testing.assert_allclose(float(state.loss_sum), float(ref_loss), rtol=1e-5)
    # The carried penalty is the penalty of the final parameters (not tracked under FedProx).
    if aggregator == "fedavg":
        np.testing.assert_allclose(float(state.penalty), float(local.penalty(state.params, params, opts)), rtol=1e-6)


def test_l2_grads_is_autodiff_of_the_penalty():
    opts = TrainOptions(l2=0.37)
    params = {"w": jnp.linspace(-3, 3, 101, dtype=jnp.float32), "b": jnp.float32(0.7)}
    g = jax.tree.map(lambda p: jnp.sin(p) * 1e-3, params)
    auto = jax.grad(lambda p: local.penalty(p, p, opts) + sum(jnp.sum(a * b) for a, b in
                                                               zip(jax.tree.leaves(p), jax.tree.leaves(g))))(params)
    ours = local.l2_grads(params, g, opts)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(auto)))
    assert local.l2_grads(params, g, TrainOptions(l2=0.0)) is g


def _compiled_round(opts, mo, d=256, k=13):
    rng = np.random.default_rng(0)
    rows = 64 * k
    feats = rng.normal(size=(rows, 1, d)).astype(np.float32)
    labels = (rng.random(rows) < 0.3).astype(np.float32)
    engine = Engine(federated_data(feats, labels, np.array_split(np.arange(rows), k)), mo, opts)
    return bench_train.compiled_vmap_round(engine, engine.init())


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_round_does_not_copy_parameters_every_step(variant):
    """A reduction over the old parameters inside the step (the L2 value) used to
    make XLA copy every stacked parameter at the top of each scan iteration."""
    opts = TrainOptions(batch_size=16, l2=1e-4, plr_start_round=None)
    compiled = _compiled_round(opts, ModelOptions.preset(variant))
    kernel = r"f32\[13,256,512\]\{[0-9,]*\} copy\("
    assert re.search(kernel, compiled.as_text()) is None


def test_release_freed_host_memory_reports_a_bool():
    assert isinstance(hostmem.release_freed_host_memory(), bool)


def test_engine_releases_host_memory_only_after_compiling_rounds(monkeypatch):
    calls = []
    monkeypatch.setattr(hostmem, "release_freed_host_memory", lambda: calls.append(1) or True)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(90, 1, 6)).astype(np.float32)
    labels = (rng.random(90) < 0.3).astype(np.float32)
    # A configuration no other test compiles (hidden widths), so round 1 traces for sure.
    engine = Engine(federated_data(feats, labels, [np.arange(40), np.arange(40, 90)]),
                    ModelOptions(hidden=(7, 3)), TrainOptions(batch_size=16, plr_start_round=None))
    state, _ = engine.run_round(engine.init())
    assert len(calls) == 1
    for _ in range(2):
        state, _ = engine.run_round(state)
    assert len(calls) == 1
