"""MIL (Sultani) and CLAWS: losses against loop references, the 32-segment
compression against a loop, the bag sampler, federated vmap == loop, the CLI."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clapjax import data, pipeline, splits
from clapjax.data import sultani_segment_frames
from clapjax.engine import TRACE_COUNTS, BagSampler, Batch, TrainOptions
from clapjax.methods import CLAWS, METHODS, MIL, CLAWSOptions, MILOptions, claws, compression, mil

# ----------------------------------------------------------------------------- compression


def _loop_compress(x, lengths, m, normalize):
    """Save_C3DFeatures_32Segments.m written out: 1-based MATLAB boundaries, a loop per segment."""
    out, off = [], 0
    for n in lengths:
        b = [int(np.floor(1 + (n - 1) * j / m + 0.5)) for j in range(m + 1)]
        for j in range(m):
            ss, ee = b[j], b[j + 1] - 1
            seg = x[off + ss - 1] if ee < ss else x[off + ss - 1:off + ee].mean(axis=0)
            if normalize:  # every crop feature to norm 1
                seg = seg / np.maximum(np.linalg.norm(seg, axis=-1, keepdims=True), 1e-12)
            out.append(seg)
        off += n
    return np.stack(out)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 80), min_size=1, max_size=4), st.integers(1, 40), st.booleans(), st.integers(0, 99))
def test_compression_matches_the_matlab_loop(lengths, m, normalize, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(sum(lengths), 2, 5)).astype(np.float32)
    plan = compression.compression_plan(lengths, m)
    got = np.asarray(compression.compress(x, plan, normalize))
    want = _loop_compress(x.astype(np.float64), lengths, m, normalize)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The frames each segment owns (clapjax.data) start at the clip this segment starts at.
    for n in lengths:
        start, _ = compression.segment_ranges(n, m)
        owned = sultani_segment_frames(m, 16 * n)
        first_frame = np.concatenate([[0], np.cumsum(owned)[:-1]])
        has = owned > 0
        np.testing.assert_array_equal(first_frame[has], 16 * start[has])


def test_compressed_truth_is_any_anomalous_clip():
    plan = compression.compression_plan([10, 3], 4)
    labels = np.zeros(13, np.uint8)
    labels[[4, 11]] = 1
    got = compression.compress_labels(labels, plan)
    start, stop = compression.segment_ranges(10, 4)
    want = [int(labels[a:b].any()) for a, b in zip(start, stop)]
    start, stop = compression.segment_ranges(3, 4)
    want += [int(labels[10 + a:10 + b].any()) for a, b in zip(start, stop)]
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- MIL


def _loop_ranking(normal, anomalous, real, o):
    normal, anomalous = np.asarray(normal, np.float64), np.asarray(anomalous, np.float64)
    idx = [i for i in range(len(real)) if real[i]]
    if not idx:
        return 0.0
    smooth = {j: sum((anomalous[j][i] - anomalous[j][i + 1]) ** 2 for i in range(anomalous.shape[1] - 1))
              for j in idx}
    sparse = {j: sum(anomalous[j]) for j in idx}
    if o.ranking == "pairs":
        total = 0.0
        for j in idx:
            total += max(0.0, o.margin - max(anomalous[j]) + max(normal[j]))
            total += o.lambda_smooth * smooth[j] + o.lambda_sparse * sparse[j]
        return total / len(idx)
    hinge = 0.0
    for i in idx:
        hinge += sum(max(0.0, o.margin - max(anomalous[j]) + max(normal[i])) for j in idx)
    return hinge / len(idx) + o.lambda_smooth * sum(smooth.values()) + o.lambda_sparse * sum(sparse.values())


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.sampled_from(["pairs", "all_pairs"]), st.integers(0, 999))
def test_mil_ranking_loss_matches_loop(p, m, ranking, seed):
    rng = np.random.default_rng(seed)
    o = MILOptions(ranking=ranking, lambda_smooth=0.3, lambda_sparse=0.05, margin=0.7)
    normal, anomalous = rng.random((p, m)).astype(np.float32), rng.random((p, m)).astype(np.float32)
    real = rng.random(p) < 0.7
    got = float(mil.ranking_loss(jnp.asarray(normal), jnp.asarray(anomalous), jnp.asarray(real), o))
    assert got == pytest.approx(_loop_ranking(normal, anomalous, real, o), rel=1e-5, abs=1e-6)


def test_mil_network_is_sultanis_mlp():
    o = MILOptions(hidden=(6, 4), dropout=0.0)
    method = MIL(o)
    params = method.init_params(8, 2, jax.random.key(0))
    x = np.random.default_rng(0).normal(size=(5, 2, 8)).astype(np.float32)
    h = np.maximum(x @ np.asarray(params["fc1"]["kernel"]) + np.asarray(params["fc1"]["bias"]), 0)
    g = h @ np.asarray(params["fc2"]["kernel"]) + np.asarray(params["fc2"]["bias"])  # no activation
    logit = (g @ np.asarray(params["fc3"]["kernel"]) + np.asarray(params["fc3"]["bias"]))[..., 0]
    want = (1 / (1 + np.exp(-logit))).mean(-1)
    np.testing.assert_allclose(np.asarray(method.probabilities(params, x)), want, rtol=1e-5)
    xn = x / np.linalg.norm(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(method.score(params, x)),
                               np.asarray(method.probabilities(params, xn)), rtol=1e-6)


def test_mil_step_loss_reads_pairs_from_the_bag_layout():
    o = MILOptions(hidden=(6, 4), dropout=0.0, pairs_per_step=2, segments=3)
    method = MIL(o)
    params = method.init_params(5, 1, jax.random.key(1))
    x = np.random.default_rng(1).normal(size=(12, 1, 5)).astype(np.float32)
    mask = np.ones(12, bool)
    mask[6:] = False  # the second pair is padding
    batch = Batch(jnp.asarray(x), jnp.arange(12), jnp.asarray(mask), jnp.array(True))
    got = float(method._loss(params, params, batch, jnp.zeros(12), None))
    s = np.asarray(method.probabilities(params, x)).reshape(2, 2, 3)
    assert got == pytest.approx(_loop_ranking(s[:, 0], s[:, 1], [True, False], o), rel=1e-5)


# ----------------------------------------------------------------------------- bag sampler


@settings(max_examples=25, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=25), st.integers(1, 5), st.integers(1, 4), st.integers(0, 99),
       st.booleans())
def test_bag_sampler_pairs_normal_with_anomalous_and_covers_every_video(labels, pairs, m, seed, shuffle):
    labels = np.asarray(labels)
    sampler = BagSampler(pairs, m)
    lengths = np.full(labels.size, m)
    rng = np.random.default_rng(seed) if shuffle else None
    pos, mask = sampler.epoch(labels.size * m, lengths, labels, rng)
    steps = sampler.steps_per_epoch(labels.size * m, lengths, labels)
    assert pos.shape == mask.shape == (steps, 2 * pairs * m)
    if labels.all() or not labels.any():
        assert steps == 0
        return
    bags = pos.reshape(-1, 2, m)
    real = mask.reshape(-1, 2, m)
    assert (real == real[:, :1, :1]).all()  # a pair is real or padding as a whole
    real = real[:, 0, 0]
    assert real.sum() == max(labels.sum(), (~labels).sum())
    # every bag is one whole video: m consecutive rows starting at a video boundary
    assert (bags[real] % m == np.arange(m)).all()
    videos = bags[real][:, :, 0] // m
    assert (~labels[videos[:, 0]]).all() and labels[videos[:, 1]].all()
    assert set(videos.ravel()) == set(range(labels.size))


def test_bag_sampler_refuses_ragged_videos():
    with pytest.raises(ValueError, match="exactly 4"):
        BagSampler(2, 4).epoch(7, np.array([4, 3]), np.array([False, True]), None)


# ----------------------------------------------------------------------------- CLAWS


def _np_two_means(f, mask, iters):
    real = [i for i in range(len(f)) if mask[i]]
    c = [f[real[0]].copy()]
    far = max(real, key=lambda i: (np.sum((f[i] - c[0]) ** 2), -i))
    c.append(f[far].copy())
    c = np.stack(c)

    def assign():
        return np.array([1 if np.sum((f[i] - c[1]) ** 2) < np.sum((f[i] - c[0]) ** 2) else 0 for i in range(len(f))])

    for _ in range(iters):
        a = assign()
        for k in (0, 1):
            members = [i for i in real if a[i] == k]
            if members:
                c[k] = np.mean(f[members], axis=0)
    return c, assign()


def _np_cos(a, b):
    return float(a @ b / (max(np.linalg.norm(a), 1e-8) * max(np.linalg.norm(b), 1e-8)))


def _loop_cluster(f, mask, anomalous, o):
    c, a = _np_two_means(f, mask, o.kmeans_iters)
    real = [i for i in range(len(f)) if mask[i]]
    if not anomalous:
        mid = c.mean(axis=0)
        return float(np.mean([1 - _np_cos(f[i], mid) for i in real]))
    limit = o.cluster_beta * (1 - _np_cos(c[0], c[1]))
    sel = []
    for k in (0, 1):
        members = [i for i in real if a[i] == k]
        near = [i for i in members if 1 - _np_cos(f[i], c[k]) < limit]
        sel += near if near else members
    pull = np.mean([1 - _np_cos(f[i], c[a[i]]) for i in sel])
    push = np.mean([1 + _np_cos(f[i], c[1 - a[i]]) for i in sel])
    return float(o.cluster_alpha * pull + (1 - o.cluster_alpha) * push)


_CLUSTER = jax.jit(claws.clustering_loss, static_argnames="opts")
_BATCH = jax.jit(claws.batch_loss, static_argnames="opts")


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 12), st.integers(1, 6), st.booleans(), st.integers(0, 999))
def test_claws_clustering_loss_matches_loop(b, h, anomalous, seed):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(b, h)).astype(np.float32)
    f[: b // 2] += 3.0  # two groups
    mask = rng.random(b) < 0.85
    mask[0] = True
    o = CLAWSOptions(cluster_beta=0.6)
    # One padded shape for every example (one compilation): padding rows are masked
    # out and zero feature columns change no cosine, so padding must change nothing.
    fp = np.zeros((12, 6), np.float32)
    fp[:b, :h] = f
    mp = np.zeros(12, bool)
    mp[:b] = mask
    got = float(_CLUSTER(jnp.asarray(fp), jnp.asarray(mp), jnp.asarray(anomalous), o))
    assert got == pytest.approx(_loop_cluster(f.astype(np.float64), mask, anomalous, o), rel=1e-4, abs=1e-5)


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 10), st.integers(0, 999), st.booleans())
def test_claws_batch_loss_matches_loop(b, seed, anomalous):
    rng = np.random.default_rng(seed)
    s = rng.random(b).astype(np.float32)
    f = rng.normal(size=(b, 3)).astype(np.float32)
    y = np.full(b, float(anomalous), np.float32)
    mask = rng.random(b) < 0.8
    mask[0] = True
    o = CLAWSOptions(lambda_smooth=0.2, lambda_sparse=0.1, lambda_cluster=0.5)
    pad = lambda x, fill=0: np.concatenate([x, np.full((10 - b,) + x.shape[1:], fill, x.dtype)])  # noqa: E731
    got = float(_BATCH(jnp.asarray(pad(s)), jnp.asarray(pad(f)), jnp.asarray(pad(y)), jnp.asarray(pad(mask, False)), o))
    real = [i for i in range(b) if mask[i]]
    reg = np.mean([(s[i] - y[i]) ** 2 for i in real])
    smooth = sum((s[i] - s[i + 1]) ** 2 for i in range(b - 1) if mask[i] and mask[i + 1])
    sparse = sum(s[i] for i in real)
    want = reg + 0.2 * smooth + 0.1 * sparse + 0.5 * _loop_cluster(f.astype(np.float64), mask, anomalous, o)
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_claws_normalcy_suppression_softmaxes_over_the_batch():
    o = CLAWSOptions(hidden=(4, 3), dropout=0.0)
    method = CLAWS(o)
    params = method.init_params(5, 1, jax.random.key(0))
    x = np.random.default_rng(0).normal(size=(6, 1, 5)).astype(np.float32)
    mask = np.array([1, 1, 1, 1, 0, 0], bool)
    p = jax.tree.map(np.asarray, params)

    def dense(name, v):
        return v @ p[name]["kernel"] + p[name]["bias"]

    def softmax_rows(a):
        a = a[mask]
        e = np.exp(a - a.max(axis=0))
        out = np.zeros((6,) + a.shape[1:])
        out[mask] = e / e.sum(axis=0)
        return out

    f1 = dense("fc1", x)
    h = np.maximum(f1 * softmax_rows(dense("nsm1", x)), 0)
    g = np.maximum(dense("fc2", h) * softmax_rows(dense("nsm2", h)), 0)
    want = (1 / (1 + np.exp(-dense("fc3", g)[..., 0]))).mean(-1)
    s, f = method.forward(params, jnp.asarray(x), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(s)[mask], want[mask], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(f), f1.mean(axis=1), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- federated


@pytest.fixture(scope="module")
def training_set():
    split = data.shrink_split(splits.load("ucf", "random", 5), 2)
    split = dataclasses.replace(split, participants=split.participants[:3],
                                participant_names=split.participant_names[:3])
    source = data.open_source("ucf", "train", synthetic=data.SyntheticConfig.preset("tiny"))
    return pipeline.load_training_set(source, split)


def _engine(ts, name, backend, setting):
    spec = METHODS[name]
    opts = spec.method_options("paper", {"hidden": (16, 8), "segments": 8})
    if name == "mil":
        opts = opts.replace(pairs_per_step=2)
    else:
        opts = opts.replace(batch_segments=8, lambda_cluster=0.1)
    ts = spec.prepare(ts, opts)
    pl = spec.pseudo_label(ts, None, opts)
    train = TrainOptions.preset("paper", **spec.train_overrides("paper")).replace(
        rounds=3, local_epochs=2, backend=backend, setting=setting)
    return ts, pipeline.make_engine(ts, pl, spec.build(None, None, opts), train)


@pytest.mark.parametrize("name, setting", [
    ("mil", "collaborative"), pytest.param("mil", "local", marks=pytest.mark.slow),
    ("claws", "collaborative"), pytest.param("claws", "centralized", marks=pytest.mark.slow)])
def test_weak_method_trains_federated_vmap_equals_loop(training_set, name, setting):
    out = {}
    for backend in ("vmap", "loop"):
        ts, engine = _engine(training_set, name, backend, setting)
        assert ts.features.shape[0] == 8 * ts.layout.num_videos
        state = engine.init()
        losses = []
        for _ in range(2):
            state, m = engine.run_round(state)
            losses.append(m.mean_loss)
        traces = dict(TRACE_COUNTS)
        state, _ = engine.run_round(state)  # a 3rd round compiles nothing new
        assert dict(TRACE_COUNTS) == traces
        out[backend] = (state, np.stack(losses))
        assert np.isfinite(np.stack(losses)).all()
    np.testing.assert_allclose(out["vmap"][1], out["loop"][1], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out["vmap"][0]), jax.tree.leaves(out["loop"][0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    trained = out["vmap"][0].participant_params if setting == "local" else out["vmap"][0].server.params
    start = engine.init().participant_params if setting == "local" else engine.init().server.params
    assert not any(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(trained)))


def test_weak_labels_stage_gives_true_video_labels(training_set):
    ts = METHODS["mil"].prepare(training_set, MILOptions(segments=8))
    pl = METHODS["mil"].pseudo_label(ts, None, MILOptions(segments=8))
    np.testing.assert_array_equal(pl.video_labels, ts.true_video_labels)
    np.testing.assert_array_equal(pl.segment_labels, np.repeat(ts.true_video_labels.astype(np.float32), 8))
    assert ts.true_segment_labels.shape == (ts.features.shape[0],)
    norms = np.linalg.norm(ts.features, axis=-1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------- CLI


def test_cli_mil_and_claws_on_the_tiny_preset(tmp_path):
    from experiments import run

    import importlib.util

    # Plots need the optional `plots` extra (matplotlib), which the test command does not install.
    plots = importlib.util.find_spec("matplotlib") is not None
    for name in ("mil", "claws"):
        summary = run.main(["--method", name, "--preset", "tiny", "--participants", "2", "--split", "random",
                            "--videos-per-participant", "2", "--rounds", "1", "--local-epochs", "1",
                            f"--{name}.hidden", "16", "8", "--workdir", str(tmp_path / name), "--quiet",
                            *(["--plots"] if plots else [])])
        assert 0.0 <= summary["final"]["auc"] <= 1.0
        assert (tmp_path / name / "roc.npz").exists()
        assert (tmp_path / name / "plots" / "roc.png").exists() == plots


@pytest.mark.parametrize("args, message", [
    (["--method", "mil", "--weak-labels", "1"], "weakly supervised"),
    (["--method", "claws", "--mil.margin", "2"], "--mil.* options apply to --method mil"),
])
def test_cli_weak_method_errors(args, message, capsys):
    from experiments import run

    assert run.cli(args + ["--preset", "tiny", "--workdir", "/nonexistent/never"]) == 2
    assert message in capsys.readouterr().err
