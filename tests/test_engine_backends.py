"""Backends, padding steps, streaming and retracing of the federated engine."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clapjax import model as M
from clapjax import packed
from clapjax.engine import TRACE_COUNTS, Engine, TrainOptions, federated_data, local
from clapjax.model import ModelOptions

MO = ModelOptions(attention=True, hidden=(8, 4), dropout_rate=0.5)


def tiny_data(tmp_path=None, seed=0):
    """Ragged participants (40, 150, 13 rows + one with 1 row) over a shared array."""
    rng = np.random.default_rng(seed)
    s, c, d = 260, 2, 12
    feats = rng.normal(size=(s, c, d)).astype(np.float32)
    if tmp_path is not None:
        mm = np.memmap(os.path.join(tmp_path, "feats.f32"), np.float32, "w+", shape=(s, c, d))
        mm[:] = feats
        mm.flush()
        feats = np.memmap(os.path.join(tmp_path, "feats.f32"), np.float32, "r", shape=(s, c, d))
    labels = (rng.random(s) < 0.3).astype(np.float32)
    parts = [np.arange(0, 40), rng.permutation(np.arange(40, 190)), np.arange(200, 213), np.array([250])]
    lays = [packed.layout_from_lengths([10, 30]), packed.layout_from_lengths([100, 50]),
            packed.layout_from_lengths([13]), packed.layout_from_lengths([1])]
    vls = [np.array([True, False]), np.array([False, True]), np.array([True]), np.array([False])]
    return federated_data(feats, labels, parts, lays, vls)


def toy_refine(scores, labels, layout, video_labels, opts):
    """Same signature as clapjax.spl.refine_labels: anomalous videos get
    label 1 where the score exceeds the video's mean score."""
    mean = packed.segment_sum(scores, layout) / jnp.maximum(layout.lengths, 1)
    anomalous = packed.per_segment(video_labels, layout, False)
    above = scores > packed.per_segment(mean, layout)
    return jnp.where(anomalous & layout.segment_mask, jnp.where(above, 1.0, labels), labels)


def leaves_equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b)))


def max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b)))


def run(backend, data, rounds=2, **kw):
    opts = TrainOptions(rounds=rounds, batch_size=16, local_epochs=2, backend=backend, plr_start_round=1,
                        chunk_steps=3, **kw)
    engine = Engine(data, MO, opts, plr_options=None, refine_fn=toy_refine)
    return engine, engine.run()


@pytest.fixture(scope="module")
def results():
    data = tiny_data()
    out = {}
    for backend in ("vmap", "loop", "sharded"):
        TRACE_COUNTS.clear()
        engine, state = run(backend, data, rounds=2, aggregator="scaffold")
        first = dict(TRACE_COUNTS)
        state3, _ = engine.run_round(state)
        out[backend] = (engine, state, state3, first, dict(TRACE_COUNTS))
    return out


def test_vmap_equals_loop_bitwise(results):
    assert leaves_equal(results["vmap"][1], results["loop"][1])
    assert leaves_equal(results["vmap"][2].server, results["loop"][2].server)


def test_sharded_matches_vmap(results):
    engine, state = results["sharded"][0], results["sharded"][1]
    assert engine.executor.num_devices == min(len(jax.devices()), engine.num_participants)
    assert engine.num_padded % engine.executor.num_devices == 0
    vm = results["vmap"][1]
    k = vm.labels.shape[0]
    np.testing.assert_array_equal(np.asarray(state.labels)[:k], np.asarray(vm.labels))
    # XLA's SPMD compilation of the same per-participant program on CPU may
    # round differently in the last bit of a few matmul outputs.
    assert max_diff(state.server, vm.server) < 1e-6
    assert max_diff(jax.tree.map(lambda a: a[:k], state.client_controls), vm.client_controls) < 1e-3


def test_no_recompilation_after_first_round(results):
    for backend, (_, _, _, first, after) in results.items():
        assert first == after, backend  # round 3 traced nothing new
        # One trace per function (loop: one per chunk shape, full and 1-step;
        # vmap: one per step-count group, singletons unbatched).
        engine = results[backend][0]
        limits = {"chunk_one": 2}
        if backend == "vmap":
            limits["train_all"] = sum(g.size > 1 for g in engine.groups)
            limits["train_one"] = sum(g.size == 1 for g in engine.groups)
        assert all(v <= limits.get(k, 1) for k, v in first.items()), (backend, first)


def test_vmap_groups_follow_step_counts(results):
    engine = results["vmap"][0]
    # Ragged participants (6, 20, 2, 2 steps) are not padded to 20 steps each.
    assert len(engine.groups) > 1
    assert sorted(np.concatenate(engine.groups).tolist()) == list(range(engine.num_padded))
    one = Engine(tiny_data(), MO, TrainOptions(batch_size=16, local_epochs=2, vmap_groups=1, plr_start_round=None))
    assert len(one.groups) == 1


def test_plr_changed_labels(results):
    engine, state = results["vmap"][0], results["vmap"][1]
    init = engine.init()
    assert not np.array_equal(np.asarray(state.labels), np.asarray(init.labels))
    # Padding positions stay 0.
    for k, rows in enumerate(engine.data.participants):
        assert float(np.abs(np.asarray(state.labels[k, rows.size:])).sum()) == 0.0


def test_masked_padding_steps_change_nothing():
    opts = TrainOptions(batch_size=8, momentum=0.9, aggregator="scaffold", prng_impl="rbg")
    fns = local.client_fns(MO, opts)
    rng = np.random.default_rng(0)
    feats = jnp.asarray(rng.normal(size=(50, 2, 12)).astype(np.float32))
    params = M.init_params(MO, 12, jax.random.key(0), 2)
    corr = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    ctx = local.ClientContext(params, corr, jnp.asarray(rng.random(50).astype(np.float32)))
    rows = rng.integers(0, 50, size=(4, 8)).astype(np.int32)
    pos = rng.integers(0, 50, size=(4, 8)).astype(np.int32)
    mask = np.ones((4, 8), bool)
    mask[-1, 5:] = False
    valid = np.ones(4, bool)
    state0 = fns.init(params, jax.random.key(3, impl="rbg"))
    run = jax.jit(lambda st, r, p, m, v: local.run_steps(fns, st, ctx, feats, r, p, m, v))
    plain = run(state0, rows, pos, mask, valid)
    # Same steps with invalid (garbage) steps interleaved and appended.
    order = [0, -1, 1, 2, -1, -1, 3, -1]
    r2 = np.stack([rows[i] if i >= 0 else rng.integers(0, 50, 8) for i in order]).astype(np.int32)
    p2 = np.stack([pos[i] if i >= 0 else rng.integers(0, 50, 8) for i in order]).astype(np.int32)
    m2 = np.stack([mask[i] if i >= 0 else np.ones(8, bool) for i in order])
    v2 = np.array([i >= 0 for i in order])
    padded = run(state0, r2, p2, m2, v2)
    assert leaves_equal(plain._replace(rng=jax.random.key_data(plain.rng)),
                        padded._replace(rng=jax.random.key_data(padded.rng)))
    # An all-invalid run returns the initial state bit for bit.
    none = run(state0, rows, pos, mask, np.zeros(4, bool))
    assert leaves_equal(none._replace(rng=jax.random.key_data(none.rng)), state0._replace(rng=jax.random.key_data(state0.rng)))


@pytest.mark.parametrize("backend", ["vmap", "loop"])
def test_streaming_equals_in_memory(tmp_path, backend, results):
    data_map = tiny_data(tmp_path)
    assert isinstance(data_map.features, np.memmap)
    _, streamed = run(backend, data_map, rounds=2, aggregator="scaffold", streaming=True)
    assert leaves_equal(results[backend][1], streamed)


@pytest.mark.slow  # compiles clapjax.spl's window search: ~1 min on a loaded 2-core machine
def test_plr_uses_each_local_model_and_spl_refine():
    from clapjax import spl
    from clapjax.engine import score_segments
    from clapjax.options import PseudoLabelOptions

    data = tiny_data(seed=1)
    po = PseudoLabelOptions()
    opts = TrainOptions(rounds=1, batch_size=16, setting="local", plr_start_round=0)
    engine = Engine(data, MO, opts, plr_options=po)  # default refine_fn = clapjax.spl.refine_labels
    init = engine.init()
    state = engine.run(state=init)
    for k, rows in enumerate(data.participants):
        params = engine.participant_params(state, k)
        scores = score_segments(params, data.features[rows], MO)
        want = spl.refine_labels(scores, engine.participant_labels(init, k), data.layouts[k],
                                 data.video_labels[k], po)
        np.testing.assert_array_equal(engine.participant_labels(state, k), np.asarray(want))


def test_single_participant_vmap_runs_unbatched_and_equals_loop():
    """K=1 takes the unbatched path of the vmap backend: same bits as loop, one trace."""
    full = tiny_data()
    data = federated_data(full.features, full.labels, full.participants[1:2], full.layouts[1:2],
                          full.video_labels[1:2])
    states = {}
    for backend in ("vmap", "loop"):
        TRACE_COUNTS.clear()
        engine, states[backend] = run(backend, data, rounds=2)
        if backend == "vmap":
            assert TRACE_COUNTS["train_one"] == 1 and TRACE_COUNTS["train_all"] == 0
    assert leaves_equal(states["vmap"], states["loop"])


@pytest.mark.parametrize("backend", ["vmap", "loop"])
def test_streaming_from_feature_files_equals_in_memory(tmp_path, backend, results):
    """The same rows read on demand from per-video files (PackedFeatures):
    vmap streams each step-count group like the in-memory groups, bit for bit,
    and a further round compiles nothing new."""
    from clapjax.data import NpyFilesSource
    from clapjax.data.store import PackedFeatures

    data = tiny_data()
    cuts = [0, 40, 190, 200, 213, 250, 260]
    files = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        np.save(tmp_path / f"v{i}.npy", data.features[a:b])
        files.append([tmp_path / f"v{i}.npy"])
    store = PackedFeatures(NpyFilesSource(files, [f"v{i}" for i in range(len(files))], "ucf", "train"))
    on_disk = federated_data(store, data.labels, data.participants, data.layouts, data.video_labels)
    with pytest.raises(ValueError, match="streaming=True"):
        run(backend, on_disk, rounds=1, aggregator="scaffold")
    engine, streamed = run(backend, on_disk, rounds=2, aggregator="scaffold", streaming=True)
    assert leaves_equal(results[backend][1], streamed)
    before = dict(TRACE_COUNTS)
    state3, _ = engine.run_round(streamed)
    assert dict(TRACE_COUNTS) == before
    assert leaves_equal(results[backend][2].server, state3.server)


class _CountingStore:
    """A host row store that counts how many of the arrays it returned are alive."""

    def __init__(self, features):
        import weakref

        self._f, self._weakref = features, weakref
        self.shape, self.dtype = features.shape, features.dtype
        self.alive = 0
        self.max_alive = 0

    def _gone(self):
        self.alive -= 1

    def __getitem__(self, index):
        out = np.array(self._f[index])
        self.alive += 1
        self.max_alive = max(self.max_alive, self.alive)
        self._weakref.finalize(out, self._gone)
        return out


@pytest.mark.parametrize("backend", ["vmap", "loop"])
def test_streaming_keeps_a_bounded_number_of_chunks_alive(backend):
    """JAX dispatches asynchronously; the streaming loops wait for the previous
    chunk, so only a few chunks exist at once, however many the round has."""
    rng = np.random.default_rng(0)
    s, d = 4096, 256
    feats = rng.normal(size=(s, 1, d)).astype(np.float32)
    store = _CountingStore(feats)
    data = federated_data(store, (rng.random(s) < 0.3).astype(np.float32),
                          [np.arange(0, 2048), np.arange(2048, 4096)])
    mo = ModelOptions(attention=True, hidden=(256, 32))
    opts = TrainOptions(rounds=1, batch_size=64, backend=backend, plr_start_round=None, streaming=True,
                        chunk_steps=1)
    Engine(data, mo, opts).run()
    assert store.alive == 0
    # One chunk computing, one queued, one being read (plus one in hand).
    assert store.max_alive <= 4, store.max_alive
