"""Aggregators against hand computations; settings; checkpoints and resume."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from clapjax import model as M
from clapjax import packed
from clapjax.engine import (Engine, TrainOptions, centralize, federated_data, make_plan, participant_weights,
                            server as server_lib)
from clapjax.engine.local import ClientOutput
from clapjax.model import ModelOptions

MO = ModelOptions(attention=False, hidden=(6, 3), dropout_rate=0.0)
D = 5


def tree_np(t):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), t)


def data_for(parts, seed=0, s=120):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(s, 1, D)).astype(np.float32)
    labels = (rng.random(s) < 0.4).astype(np.float32)
    return federated_data(feats, labels, parts)


_grad = jax.jit(jax.grad(lambda p, x, y, m: M.bce_loss(p, x, y, m, MO)))


def bce_grad(params, data, rows):
    rows = np.asarray(rows)
    return tree_np(_grad(params, jnp.asarray(data.features[rows]), jnp.asarray(data.labels[rows]),
                         jnp.ones(rows.size, bool)))


def test_fedavg_of_identical_participants_equals_centralized():
    rows = np.arange(0, 40)
    opts = TrainOptions(batch_size=16, local_epochs=2, shuffle=False, plr_start_round=None, rounds=2, l2=1e-3)
    fed = Engine(data_for([rows, rows, rows]), MO, opts).run()
    cen = Engine(data_for([rows]), MO, opts.replace(setting="centralized")).run()
    for a, b in zip(jax.tree.leaves(fed.server.params), jax.tree.leaves(cen.server.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_scaffold_two_steps_by_hand():
    parts = [np.arange(0, 8), np.arange(8, 20)]  # batch 8: one participant 1 step, the other 2
    data = data_for(parts)
    lr, lam = 0.5, 0.7
    opts = TrainOptions(batch_size=8, lr=lr, server_lr=lam, l2=0.0, shuffle=False, aggregator="scaffold",
                        plr_start_round=None, rounds=1)
    engine = Engine(data, MO, opts)
    state = engine.init()
    rng = np.random.default_rng(1)
    rand = lambda t: jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * 0.1, jnp.float32), t)  # noqa: E731
    c = rand(state.server.params)
    ci = rand(state.client_controls)
    state = state._replace(server=state.server._replace(control=c), client_controls=ci)
    new, metrics = engine.run_round(state)
    x = tree_np(state.server.params)
    cn, cin = tree_np(c), tree_np(ci)
    deltas, dcs = [], []
    for k, rows in enumerate(parts):
        y = x
        cik = jax.tree.map(lambda a: a[k], cin)
        steps = [rows[i:i + 8] for i in range(0, rows.size, 8)]
        for b in steps:
            g = bce_grad(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), y), data, b)
            y = jax.tree.map(lambda p, gg, cc, cck: p - lr * (gg + cc - cck), y, g, cn, cik)
        ci_new = jax.tree.map(lambda cck, cc, xx, yy: cck - cc + (xx - yy) / (len(steps) * lr), cik, cn, x, y)
        deltas.append(jax.tree.map(lambda yy, xx: yy - xx, y, x))
        dcs.append(jax.tree.map(lambda a, b: a - b, ci_new, cik))
        got_ci = jax.tree.map(lambda a: np.asarray(a[k]), new.client_controls)
        for a, b in zip(jax.tree.leaves(got_ci), jax.tree.leaves(ci_new)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    want_x = jax.tree.map(lambda xx, d0, d1: xx + lam * 0.5 * (d0 + d1), x, *deltas)
    want_c = jax.tree.map(lambda cc, d0, d1: cc + 0.5 * (d0 + d1), cn, *dcs)  # c += mean Δc_i (not c_i)
    for a, b in zip(jax.tree.leaves(new.server.params), jax.tree.leaves(want_x)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(new.server.control), jax.tree.leaves(want_c)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-5)
    assert metrics.upload_bytes == 2 * 4 * M.parameter_count(state.server.params)
    assert list(metrics.steps) == [1, 2]


def test_fedprox_two_steps_by_hand():
    parts = [np.arange(0, 16)]
    data = data_for(parts)
    lr, mu = 0.3, 2.0
    opts = TrainOptions(batch_size=8, lr=lr, l2=0.0, shuffle=False, aggregator="fedprox", mu=mu,
                        plr_start_round=None, rounds=1)
    engine = Engine(data, MO, opts)
    state = engine.init()
    new, _ = engine.run_round(state)
    x = tree_np(state.server.params)
    y = x
    for b in (np.arange(0, 8), np.arange(8, 16)):
        g = bce_grad(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), y), data, b)
        y = jax.tree.map(lambda p, gg, xx: p - lr * (gg + mu * (p - xx)), y, g, x)
    for a, b in zip(jax.tree.leaves(new.server.params), jax.tree.leaves(y)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)


def test_weighted_aggregation_and_server_adam():
    params = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(0.5)}
    local = {"w": jnp.array([[2.0, 2.0], [1.0, 4.0], [9.0, 9.0]]), "b": jnp.array([1.0, 0.0, 7.0])}
    w = participant_weights(np.array([10, 30]), "segments", 3)  # third = padding participant
    np.testing.assert_allclose(w, [0.25, 0.75, 0.0])
    np.testing.assert_allclose(participant_weights(np.array([10, 30]), "uniform", 3), [0.5, 0.5, 0.0])
    out = ClientOutput(local, (), jnp.zeros(3, jnp.int32), jnp.zeros(3))
    opts = TrainOptions(server_lr=0.5, plr_start_round=None)
    server = server_lib.init_server(params, opts, None)
    new, _ = server_lib.aggregate(server, out, (), jnp.asarray(w), jnp.zeros(3), opts, None)
    mean = {"w": np.array([0.25 * 1 + 0.75 * 0, 0.25 * 0 + 0.75 * 2]), "b": 0.25 * 0.5 + 0.75 * -0.5}
    np.testing.assert_allclose(np.asarray(new.params["w"]), np.array([1.0, 2.0]) + 0.5 * mean["w"], rtol=1e-6)
    np.testing.assert_allclose(float(new.params["b"]), 0.5 + 0.5 * mean["b"], rtol=1e-6)
    opts = TrainOptions(server_optimizer="adam", server_lr=0.1, plr_start_round=None)
    tx = server_lib.server_optimizer(opts)
    server = server_lib.init_server(params, opts, tx)
    new, _ = server_lib.aggregate(server, out, (), jnp.asarray(w), jnp.zeros(3), opts, tx)
    ref_tx = optax.adam(0.1, b1=0.9, b2=0.99, eps=1e-3)
    upd, _ = ref_tx.update(jax.tree.map(lambda m: -jnp.asarray(m, jnp.float32), mean), ref_tx.init(params), params)
    want = optax.apply_updates(params, upd)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_local_setting_keeps_every_model():
    parts = [np.arange(0, 30), np.arange(30, 50)]
    data = data_for(parts)
    opts = TrainOptions(batch_size=8, shuffle=False, plr_start_round=None, rounds=2, setting="local")
    engine = Engine(data, MO, opts)
    state = engine.run()
    assert engine.upload_bytes() == 0
    p0, p1 = engine.participant_params(state, 0), engine.participant_params(state, 1)
    assert not np.allclose(np.asarray(p0["fc1"]["kernel"]), np.asarray(p1["fc1"]["kernel"]))
    # The server model is untouched (no aggregation) ...
    init = engine.init()
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(state.server.params), jax.tree.leaves(init.server.params)))
    # ... and participant 1 trained as if alone (same batches, no dropout; a
    # different K may change the last bit of a batched matmul).
    alone = Engine(data_for([parts[1]]), MO, opts.replace(setting="local")).run()
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(jax.tree.map(lambda a: a[0], alone.participant_params))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
    scores = engine.score(p0, data.features[:50], batch_size=16)
    assert scores.shape == (50,) and np.all((scores > 0) & (scores < 1))


def test_centralize_merges_layouts_and_rows():
    parts = [np.arange(0, 5), np.arange(5, 12)]
    lays = [packed.layout_from_lengths([2, 3]), packed.layout_from_lengths([7])]
    data = federated_data(np.zeros((12, 4), np.float32), np.zeros(12), parts, lays,
                          [np.array([True, False]), np.array([True])])
    c = centralize(data)
    np.testing.assert_array_equal(c.participants[0], np.arange(12))
    np.testing.assert_array_equal(np.asarray(c.layouts[0].lengths), [2, 3, 7])
    np.testing.assert_array_equal(c.video_labels[0], [True, False, True])


def test_plan_masks_last_partial_batch_and_split_order():
    plan = make_plan([np.arange(10, 15), np.arange(20, 40)], batch_size=8, epochs=2, shuffle=False, seed=0,
                     round_index=0)
    assert plan.rows.shape == (2, 6, 8)
    np.testing.assert_array_equal(plan.step_valid[0], [True, True, False, False, False, False])
    np.testing.assert_array_equal(plan.rows[0, 0, :5], np.arange(10, 15))
    assert plan.row_mask[0, 0].sum() == 5 and plan.row_mask[1, 2].sum() == 4
    shuffled = make_plan([np.arange(20, 40)], 8, 1, True, 3, 1)
    real = shuffled.rows[0][shuffled.row_mask[0]]
    assert sorted(real.tolist()) == list(range(20, 40)) and real.tolist() != list(range(20, 40))


def test_bad_inputs_name_the_problem():
    feats = np.zeros((10, 1, 3), np.float32)
    with pytest.raises(ValueError, match="participant p1: row index out of range"):
        federated_data(feats, np.zeros(10), [np.arange(3), np.array([9, 10])], names=["p0", "p1"])
    with pytest.raises(ValueError, match="float32"):
        federated_data(feats.astype(np.float64), np.zeros(10), [np.arange(3)])
    with pytest.raises(ValueError, match="labels must have shape"):
        federated_data(feats, np.zeros(9), [np.arange(3)])
    with pytest.raises(ValueError, match="layout covers 4 segments but it owns 3"):
        federated_data(feats, np.zeros(10), [np.arange(3)], [packed.layout_from_lengths([4])], [np.array([True])])
    with pytest.raises(ValueError, match="TrainOptions.aggregator"):
        TrainOptions(aggregator="fedsgd")
    with pytest.raises(ValueError, match="no layouts"):
        Engine(federated_data(feats, np.zeros(10), [np.arange(3)]), MO, TrainOptions(plr_start_round=0))


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    parts = [np.arange(0, 30), np.arange(30, 41)]
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 1, D)).astype(np.float32)
    lays = [packed.layout_from_lengths([12, 18]), packed.layout_from_lengths([11])]
    data = federated_data(feats, (rng.random(60) < 0.4).astype(np.float32), parts, lays,
                          [np.array([True, False]), np.array([True])])

    def refine(scores, labels, layout, video_labels, threshold):
        anomalous = packed.per_segment(video_labels, layout, False)
        return jnp.where(anomalous, (scores > threshold).astype(jnp.float32), labels)

    mo = ModelOptions(attention=True, hidden=(6, 3), dropout_rate=0.5)
    opts = TrainOptions(batch_size=8, rounds=3, plr_start_round=1, aggregator="scaffold", server_optimizer="adam",
                        momentum=0.9, prng_impl="rbg")
    full = Engine(data, mo, opts, plr_options=0.5, refine_fn=refine, checkpoint_dir=str(tmp_path / "a")).run()
    again = Engine(data, mo, opts, plr_options=0.5, refine_fn=refine).run()  # same seed, same result
    engine = Engine(data, mo, opts, plr_options=0.5, refine_fn=refine, checkpoint_dir=str(tmp_path / "a"))
    assert engine.checkpointer.steps() == [1, 2, 3]
    after_one = engine.restore(1)
    assert int(after_one.round) == 1
    resumed = Engine(data, mo, opts, plr_options=0.5, refine_fn=refine).run(state=after_one)
    for other in (again, resumed):
        for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(other)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A fresh engine on the same directory resumes from the latest round (nothing left to do).
    latest = Engine(data, mo, opts, plr_options=0.5, refine_fn=refine, checkpoint_dir=str(tmp_path / "a")).run()
    assert int(latest.round) == 3


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=5), batch=st.integers(1, 9),
       epochs=st.integers(1, 3), shuffle=st.booleans(), seed=st.integers(0, 5))
def test_plan_visits_every_row_once_per_epoch(sizes, batch, epochs, shuffle, seed):
    offsets = np.cumsum([0] + sizes)
    parts = [np.arange(o, o + n) * 2 + 1 for o, n in zip(offsets, sizes)]  # arbitrary row ids
    plan = make_plan(parts, batch, epochs, shuffle, seed, 0, num_participants=len(parts) + 1)
    t = plan.rows.shape[1]
    assert t == max(1, max(-(-n // batch) for n in sizes) * epochs)
    assert not plan.row_mask[-1].any() and not plan.step_valid[-1].any()  # padding participant
    for k, (idx, n) in enumerate(zip(parts, sizes)):
        spe = -(-n // batch)
        assert plan.step_valid[k].sum() == spe * epochs and plan.step_valid[k, : spe * epochs].all()
        for e in range(epochs):
            sl = slice(e * spe, (e + 1) * spe)
            rows = plan.rows[k, sl][plan.row_mask[k, sl]]
            pos = plan.positions[k, sl][plan.row_mask[k, sl]]
            assert sorted(rows.tolist()) == sorted(idx.tolist())
            np.testing.assert_array_equal(idx[pos], rows)
        assert not plan.row_mask[k, spe * epochs :].any()
        assert (plan.rows[k][~plan.row_mask[k]] == 0).all()
