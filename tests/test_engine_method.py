"""The method interface of the engine: samplers, schedules, validation, caching."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clapjax import packed
from clapjax.engine import (Batch, ClientContext, Engine, SegmentSampler, Stage, TrainOptions, as_method,
                            federated_data, local, make_plan)
from clapjax.engine.method import Method
from clapjax.methods import C2FPL, GCL, Clap, GCLOptions
from clapjax.model import ModelOptions

MO = ModelOptions(attention=False, hidden=(8, 4), dropout_rate=0.5)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(90, 1, 6)).astype(np.float32)
    labels = (rng.random(90) < 0.3).astype(np.float32)
    parts = [np.arange(0, 40), np.arange(40, 90)]
    lays = [packed.layout_from_lengths([25, 15]), packed.layout_from_lengths([20, 30])]
    return federated_data(feats, labels, parts, lays, [np.array([True, False]), np.array([False, True])])


def _leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_segment_sampler_is_the_plan_of_before():
    parts = [np.arange(5, 17), np.arange(30, 33)]
    a = make_plan(parts, 5, 2, True, 3, 1)
    b = make_plan(parts, 5, 2, True, 3, 1, sampler=SegmentSampler(5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # the permutation of participant p, epoch e, round r is the generator seeded by (seed, r, p, e)
    want = np.random.default_rng([3, 1, 0, 1]).permutation(12)
    np.testing.assert_array_equal(a.positions[0, 3:6].reshape(-1)[:12], want)


def test_lr_milestones_switch_the_compiled_step_per_round():
    opts = TrainOptions(rounds=3, batch_size=16, lr=0.1, lr_milestones=(1, 2), lr_decay=0.5, plr_start_round=None)
    assert [opts.round_lr(r) for r in range(4)] == [0.1, 0.05, 0.025, 0.025]
    engine = Engine(_data(), MO, opts)
    assert [engine._executor(r).opts.lr for r in range(3)] == [0.1, 0.05, 0.025]
    # A run whose lr drops from round 0 on equals a run at the dropped lr, bit for bit.
    dropped = Engine(_data(), MO, opts.replace(rounds=2, lr_milestones=(0,))).run()
    constant = Engine(_data(), MO, opts.replace(rounds=2, lr=0.05, lr_milestones=())).run()
    assert _leaves_equal(dropped.server.params, constant.server.params)
    with pytest.raises(ValueError, match="ascending"):
        TrainOptions(lr_milestones=(3, 1))


def test_nesterov_is_torchs_formula():
    opts = TrainOptions(lr=0.1, momentum=0.9, nesterov=True, l2=0.0)
    tx = local.local_optimizer(opts)
    p = {"w": jnp.array([1.0, -2.0])}
    g1, g2 = {"w": jnp.array([0.5, 0.25])}, {"w": jnp.array([-1.0, 0.5])}
    s = tx.init(p)
    u1, s = tx.update(g1, s, p)
    p1 = optax.apply_updates(p, u1)
    u2, s = tx.update(g2, s, p1)
    p2 = optax.apply_updates(p1, u2)
    # torch.optim.SGD(nesterov=True): b = μ b + g; p -= lr (g + μ b)
    w, b = np.array([1.0, -2.0]), np.zeros(2)
    for g in (np.array([0.5, 0.25]), np.array([-1.0, 0.5])):
        b = 0.9 * b + g
        w = w - 0.1 * (g + 0.9 * b)
    np.testing.assert_allclose(np.asarray(p2["w"]), w, rtol=1e-6)
    with pytest.raises(ValueError, match="nesterov"):
        TrainOptions(nesterov=True, momentum=0.0)


def test_engine_validates_methods_and_refinement():
    data = _data()
    with pytest.raises(ValueError, match="method 'gcl' has no refinement"):
        Engine(data, GCL(GCLOptions(gen_hidden=(4,))), TrainOptions(plr_start_round=1))
    with pytest.raises(ValueError, match="method 'clap' has no refinement.*plr_options"):
        Engine(data, MO, TrainOptions(plr_start_round=1))
    with pytest.raises(ValueError, match="plr_options / refine_fn go with a ModelOptions"):
        Engine(data, Clap(MO), TrainOptions(plr_start_round=None), plr_options=0.5)
    with pytest.raises(TypeError, match="Method or ModelOptions"):
        Engine(data, "clap", TrainOptions(plr_start_round=None))
    assert as_method(MO) == Clap(MO)
    # equal methods (and a C2FPL scorer) share compiled training code
    e1 = Engine(data, Clap(MO, pseudo_labels="a", refine_fn=lambda *a: a[1]), TrainOptions(plr_start_round=None))
    e2 = Engine(data, C2FPL(model=MO), TrainOptions(plr_start_round=None))
    assert e1.executor is e2.executor


@dataclasses.dataclass(frozen=True)
class TwoHeads(Method):
    """A toy two-network method: each head regresses the labels; head b reads head a."""

    name: str = "two_heads"
    networks: tuple = ("a", "b")

    def init_params(self, feature_dim, crops, key):
        ka, kb = jax.random.split(key)
        return {"a": jax.random.normal(ka, (feature_dim,)), "b": jax.random.normal(kb, (feature_dim,))}

    def _loss_a(self, wa, params, batch, labels, noise):
        y = jnp.take(labels, batch.positions, mode="clip")
        pred = batch.x[:, 0] @ wa
        return jnp.sum(batch.mask * (pred - y) ** 2) / jnp.maximum(batch.mask.sum(), 1)

    def _loss_b(self, wb, params, batch, labels, noise):
        target = batch.x[:, 0] @ params["a"]  # the updated head a, read (not differentiated)
        return jnp.sum(batch.mask * (batch.x[:, 0] @ wb - target) ** 2) / jnp.maximum(batch.mask.sum(), 1)

    def stages(self, phase):
        return (Stage("a", self._loss_a), Stage("b", self._loss_b))

    def score(self, params, x):
        return x[..., 0, :] @ params["b"]


def test_stages_update_their_own_network_in_order():
    method, opts = TwoHeads(), TrainOptions(lr=0.1, l2=0.01, momentum=0.5, plr_start_round=None)
    fns = local.client_fns(method, opts)
    params = method.init_params(3, 1, jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 1, 3)).astype(np.float32))
    labels = jnp.asarray([1.0, 0.0, 1.0, 0.0])
    batch = Batch(x, jnp.arange(4), jnp.ones(4, bool), jnp.asarray(True))
    st = fns.step(fns.init(params, jax.random.key(1)), ClientContext(params, (), labels), batch)
    tx = local.local_optimizer(opts)
    ga = jax.grad(lambda w: method._loss_a(w, params, batch, labels, None) + 0.005 * jnp.sum(w * w))(params["a"])
    ua, _ = tx.update(ga, tx.init(params["a"]), params["a"])
    a1 = params["a"] + ua
    p1 = {"a": a1, "b": params["b"]}
    gb = jax.grad(lambda w: method._loss_b(w, p1, batch, labels, None) + 0.005 * jnp.sum(w * w))(params["b"])
    ub, _ = tx.update(gb, tx.init(params["b"]), params["b"])
    np.testing.assert_allclose(np.asarray(st.params["a"]), np.asarray(a1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(st.params["b"]), np.asarray(params["b"] + ub), rtol=1e-6)
    assert set(st.opt_state) == {"a", "b"}
    # and it trains federated (FedAvg over both networks)
    state = Engine(_data(), method, opts.replace(rounds=2, batch_size=8)).run()
    assert set(state.server.params) == {"a", "b"} and np.isfinite(np.asarray(state.server.params["b"])).all()
