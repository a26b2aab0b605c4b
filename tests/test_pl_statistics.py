"""Segment magnitudes, video statistics, VPL and options vs numpy references."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.mixture import GaussianMixture

from clapjax import packed, vpl
from clapjax import statistics as stats_mod
from clapjax.options import PRESETS, PseudoLabelOptions

N_PAD, S_PAD = 8, 64
SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
lengths_strategy = st.lists(st.integers(1, 12), min_size=1, max_size=N_PAD).filter(lambda ls: sum(ls) <= S_PAD)


def _ref_magnitude(f, option):
    f = f.astype(np.float64)
    if f.ndim == 2:
        f = f[:, None, :]
    if option == "l2_of_mean":
        return np.linalg.norm(f.mean(axis=1), axis=-1)
    return (f**2).sum(-1).mean(-1)


def _ref_sigma(z, option):
    d = np.diff(z.astype(np.float64))  # z_{j+1} - z_j
    if option == "std_diff":
        return float(np.std(-d, ddof=1)) if len(d) >= 2 else 0.0
    return float(d.max()) if len(d) else 0.0


def _ref_entropy(f, opts):
    """Full D×D covariance (ddof 1), numpy float64 eigh."""
    f = f.astype(np.float64)
    if f.ndim == 3:
        f = f.mean(axis=1)
    m, d = f.shape
    cov = np.cov(f.T, ddof=1).reshape(d, d) if m >= 2 else np.zeros((d, d))
    if opts.entropy == "diag_reference":
        c = np.diag(cov).copy()
        c[c == 0] = opts.diag_zero_value
        return float(-(c * np.log(c)).sum())
    lam = np.linalg.eigh(cov)[0]
    # float64 round-off only (the float32 driver keeps every eigenvalue above
    # the data's noise floor, far below this for these videos).
    lam = np.where(lam > 1e-13 * max(lam.max(), 0), lam, 0.0)
    if opts.entropy == "trace_normalised":
        if lam.sum() == 0:
            return 0.0
        lam = lam / lam.sum()
    lam = lam[lam > 0]
    return float(-(lam * np.log(lam)).sum())


@pytest.mark.parametrize("crops", [None, 3])
@pytest.mark.parametrize("option", ["l2_of_mean", "mean_sq_norm"])
def test_segment_magnitude_matches_numpy(crops, option):
    rng = np.random.default_rng(0)
    shape = (11, 7) if crops is None else (11, crops, 7)
    f = rng.normal(size=shape).astype(np.float32)
    got = stats_mod.segment_magnitude(f, PseudoLabelOptions(magnitude=option))
    np.testing.assert_allclose(np.asarray(got), _ref_magnitude(f, option), rtol=1e-5)
    with pytest.raises(ValueError, match="features must be"):
        stats_mod.segment_magnitude(np.zeros(5), PseudoLabelOptions())


_sigma_jit = jax.jit(stats_mod.sigma_from_magnitude, static_argnames=("opts",))


@SETTINGS
@given(lengths=lengths_strategy, seed=st.integers(0, 2**16), option=st.sampled_from(["std_diff", "max_diff"]),
       constant=st.booleans())
def test_sigma_matches_loop(lengths, seed, option, constant):
    rng = np.random.default_rng(seed)
    total = sum(lengths)
    z = np.full(total, 2.5, np.float32) if constant else rng.random(total).astype(np.float32) * 4
    layout = packed.layout_from_lengths(lengths, N_PAD, S_PAD)
    zp = np.pad(z, (0, S_PAD - total), constant_values=np.nan)  # padding rows must not leak
    got = np.asarray(_sigma_jit(jnp.asarray(zp), layout, opts=PseudoLabelOptions(sigma=option)))
    offsets = np.cumsum([0] + lengths[:-1])
    want = [_ref_sigma(z[o : o + m], option) for o, m in zip(offsets, lengths)]
    np.testing.assert_allclose(got[: len(lengths)], want, rtol=1e-4, atol=1e-5)
    assert not got[len(lengths):].any()


_ENTROPY_OPTS = [
    PseudoLabelOptions(),
    PseudoLabelOptions(entropy="eq4_raw"),
    PseudoLabelOptions.preset("reference"),
]


@SETTINGS
@given(lengths=st.lists(st.integers(1, 14), min_size=1, max_size=6), seed=st.integers(0, 2**16),
       opt_index=st.integers(0, 2), crops=st.sampled_from([None, 2]), backend=st.sampled_from(["numpy", "jax"]))
def test_entropy_matches_full_covariance_eigh(lengths, seed, opt_index, crops, backend):
    """Both routes (Gram for m <= D, chunked D×D covariance for m > D) vs numpy eigh."""
    opts = _ENTROPY_OPTS[opt_index]
    dim = 5
    rng = np.random.default_rng(seed)
    row = (dim,) if crops is None else (crops, dim)
    videos = [(rng.normal(size=(m,) + row) * rng.uniform(0.5, 3.0, size=row) + 10.0).astype(np.float32) for m in lengths]
    features, layout = packed.pack(videos)
    chunk_bytes = 4 * int(np.prod(row)) * 3  # 3-row chunks: long videos take several chunks
    out = stats_mod.compute_statistics(features, layout, opts, chunk_bytes=chunk_bytes, eigen_backend=backend)
    want_h = [_ref_entropy(v, opts) for v in videos]
    np.testing.assert_allclose(out.stats[:, 1], want_h, rtol=2e-3, atol=2e-3)
    z = [_ref_magnitude(v, opts.magnitude) for v in videos]
    np.testing.assert_allclose(out.magnitude, np.concatenate(z), rtol=1e-5)
    np.testing.assert_allclose(out.stats[:, 0], [_ref_sigma(zi, opts.sigma) for zi in z], rtol=1e-3, atol=1e-3)


def test_constant_and_short_videos_are_defined():
    videos = [np.ones((1, 4)), np.ones((2, 4)), np.full((3, 4), 2.0), np.full((9, 4), 0.5), np.arange(8.0).reshape(2, 4)]
    features, layout = packed.pack(videos)
    for variant in ("paper", "reference"):
        opts = PseudoLabelOptions.preset(variant)
        out = stats_mod.compute_statistics(features, layout, opts).stats
        assert np.isfinite(out).all()
        np.testing.assert_array_equal(out[:4, 0], 0.0)  # constant magnitudes: σ = 0
        if variant == "paper":
            np.testing.assert_array_equal(out[:, 1], 0.0)  # constant or rank-1 covariance: H = 0
        else:
            c = 1e-9
            np.testing.assert_allclose(out[:4, 1], -4 * c * np.log(c), rtol=1e-5)


def test_padded_and_packed_variants_agree():
    rng = np.random.default_rng(5)
    lengths = [1, 4, 7, 3]
    videos = [rng.normal(size=(m, 2, 6)).astype(np.float32) for m in lengths]
    features, layout = packed.pack(videos)
    for opts in _ENTROPY_OPTS:
        driver = stats_mod.compute_statistics(features, layout, opts).stats
        padded = np.full((len(lengths), 8, 2, 6), np.nan, np.float32)  # garbage padding
        for k, v in enumerate(videos):
            padded[k, : len(v)] = v
        dense, _ = jax.jit(stats_mod.padded_video_statistics, static_argnames=("opts",))(
            padded, np.asarray(lengths), opts=opts
        )
        np.testing.assert_allclose(np.asarray(dense), driver, rtol=1e-4, atol=1e-5)
    from_device = stats_mod.compute_statistics(jnp.asarray(features), layout).stats
    np.testing.assert_array_equal(from_device, stats_mod.compute_statistics(features, layout).stats)
    ref = PseudoLabelOptions.preset("reference")
    diag = jax.jit(stats_mod.diagonal_entropy, static_argnames=("opts",))(features, layout, opts=ref)
    np.testing.assert_allclose(
        np.asarray(diag), stats_mod.compute_statistics(features, layout, ref).stats[:, 1], rtol=1e-5
    )


def test_stacked_participants_vmap_equals_loop():
    rng = np.random.default_rng(2)
    groups = [[3, 1, 6], [10], [2, 2]]
    feats = [rng.normal(size=(sum(g), 4)).astype(np.float32) for g in groups]
    stacked = packed.stack([packed.layout_from_lengths(g) for g in groups])
    s_max, n_max = stacked.num_segments, stacked.num_videos
    f_st = jnp.stack([jnp.pad(jnp.asarray(f), ((0, s_max - len(f)), (0, 0))) for f in feats])
    opts = PseudoLabelOptions.preset("reference")

    def per_participant(f, lay):
        z = stats_mod.segment_magnitude(f, opts)
        return stats_mod.sigma_from_magnitude(z, lay, opts), stats_mod.diagonal_entropy(f, lay, opts)

    sig, ent = jax.jit(jax.vmap(per_participant))(f_st, stacked)
    for k, (f, g) in enumerate(zip(feats, groups)):
        want = stats_mod.compute_statistics(f, packed.layout_from_lengths(g), opts).stats
        np.testing.assert_allclose(np.asarray(sig[k, : len(g)]), want[:, 0], rtol=1e-5)
        np.testing.assert_allclose(np.asarray(ent[k, : len(g)]), want[:, 1], rtol=1e-5)
        assert not np.asarray(ent[k, len(g):]).any()


def test_bad_input_errors_name_the_video():
    videos = [np.ones((3, 4)), np.ones((5, 4)), np.ones((2, 4))]
    features, layout = packed.pack(videos)
    features[4, 1] = np.nan
    with pytest.raises(ValueError, match="video 1: non-finite"):
        stats_mod.compute_statistics(features, layout)
    with pytest.raises(ValueError, match="video 2 spans rows"):
        stats_mod.compute_statistics(features[:8], layout)
    with pytest.raises(ValueError, match=r"features must be \[S, D\]"):
        stats_mod.compute_statistics(np.zeros(10), layout)


def test_second_call_does_not_recompile():
    rng = np.random.default_rng(0)
    lengths = [3, 9, 4, 20, 1]
    layout = packed.layout_from_lengths(lengths)
    opts = PseudoLabelOptions()
    feats = rng.normal(size=(sum(lengths), 8)).astype(np.float32)
    count = stats_mod.warmup_statistics(feats.shape, layout, opts, chunk_bytes=4 * 8 * 6)
    assert count >= 3
    kernels = [stats_mod._bucket_kernel, stats_mod._covariance_chunk, stats_mod._covariance_entropy]
    before = [k._cache_size() for k in kernels]
    first = stats_mod.compute_statistics(feats, layout, opts, chunk_bytes=4 * 8 * 6)
    second = stats_mod.compute_statistics(feats * 2 + 1, layout, opts, chunk_bytes=4 * 8 * 6)
    assert [k._cache_size() for k in kernels] == before
    assert not np.allclose(first.magnitude, second.magnitude)
    plan = stats_mod.plan_statistics(lengths, (8,), 4 * 8 * 6)
    assert len({(b, per) for b, per, _ in plan.buckets}) == len(plan.buckets)


# ------------------------------------------------------------------------ VPL


def _two_clusters(rng, n_low=30, n_high=10):
    low = rng.normal([1.0, 2.0], 0.1, size=(n_low, 2))
    high = rng.normal([3.0, 6.0], 0.1, size=(n_high, 2))
    return np.concatenate([low, high]).astype(np.float32), np.r_[np.zeros(n_low, bool), np.ones(n_high, bool)]


def test_vpl_paper_labels_higher_entropy_cluster():
    stats, truth = _two_clusters(np.random.default_rng(0))
    got = vpl.video_pseudo_labels(stats, PseudoLabelOptions())
    np.testing.assert_array_equal(got, truth)
    # Entropy rule, not size: make the high-entropy cluster the larger one.
    stats2, truth2 = _two_clusters(np.random.default_rng(1), n_low=8, n_high=25)
    np.testing.assert_array_equal(vpl.video_pseudo_labels(stats2), truth2)
    # Reference rule: the smaller cluster.
    np.testing.assert_array_equal(vpl.video_pseudo_labels(stats2, PRESETS["reference"]), ~truth2)


def test_vpl_matches_sklearn_directly():
    rng = np.random.default_rng(4)
    stats = rng.normal(size=(50, 2)).astype(np.float32)
    for variant in ("paper", "reference"):
        opts = PseudoLabelOptions.preset(variant)
        comp = GaussianMixture(2, covariance_type="full", max_iter=150, random_state=0).fit_predict(stats.astype(np.float64))
        if variant == "paper":
            anomalous = 0 if stats[comp == 0, 1].mean() > stats[comp == 1, 1].mean() else 1
        else:
            anomalous = 1 if (comp == 0).sum() > (comp == 1).sum() else 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vpl.VPLWarning)
            np.testing.assert_array_equal(vpl.video_pseudo_labels(stats, opts), comp == anomalous)


def test_vpl_degenerate_inputs_warn_not_crash():
    with pytest.warns(vpl.VPLWarning, match="only 1 video"):
        assert not vpl.video_pseudo_labels(np.array([[1.0, 2.0]])).any()
    with pytest.warns(vpl.VPLWarning, match="identical statistics"):
        assert not vpl.video_pseudo_labels(np.ones((6, 2))).any()
    stats, _ = _two_clusters(np.random.default_rng(0))
    with pytest.warns(vpl.VPLWarning, match="did not converge"):
        result = vpl.fit_video_pseudo_labels(stats + np.random.default_rng(1).normal(0, 3, stats.shape),
                                             PseudoLabelOptions(gmm_max_iter=1))
    assert not result.converged and result.labels.shape == (40,)
    with pytest.raises(ValueError, match="video 2: non-finite"):
        vpl.video_pseudo_labels(np.array([[1.0, 2.0], [1.0, 3.0], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        vpl.video_pseudo_labels(np.ones((4, 3)))
    scaled = vpl.video_pseudo_labels(stats * [1.0, 1000.0], PseudoLabelOptions(gmm_standardise=True))
    assert scaled.shape == (40,)


# -------------------------------------------------------------------- options


def test_options_presets_and_validation():
    assert PseudoLabelOptions() == PseudoLabelOptions.preset("paper") == PRESETS["paper"]
    ref = PseudoLabelOptions.preset("reference")
    assert (ref.magnitude, ref.sigma, ref.entropy, ref.anomalous_cluster, ref.null_score) == (
        "mean_sq_norm", "max_diff", "diag_reference", "smaller", "density")
    assert (ref.window_rounding, ref.generate_window, ref.plr, ref.plr_beta) == (
        "floor", "max_total_variation", "reference_iou", 0.1)
    assert (ref.gmm_max_iter, ref.gmm_seed) == (150, 0)
    assert hash(ref) != hash(PseudoLabelOptions())
    assert PseudoLabelOptions.preset("reference", beta=0.3).beta == 0.3
    with pytest.raises(ValueError, match="PseudoLabelOptions.entropy"):
        PseudoLabelOptions(entropy="shannon")
    with pytest.raises(ValueError, match="unknown variant"):
        PseudoLabelOptions.preset("released")
    with pytest.raises(ValueError, match="beta"):
        PseudoLabelOptions(beta=1.5)
