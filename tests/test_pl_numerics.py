"""Numerical contracts of the pseudo-labelling functions, against exact or float64 references.

* Windows: exact criteria (integer reference on the documented fixed-point
  grid), packed == per video, ties → earliest start.
* Generate in log space: far-tail videos keep their float64 window.
* Entropy: constant data → exactly 0 (1e-9 floor for the diagonal entropy),
  no eigenvalue cut-off relative to λ_max.
* VPL: never raises on large-scale statistics.
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clapjax import null_model, packed, spl, vpl, windows
from clapjax import statistics as stats_mod
from clapjax.options import PseudoLabelOptions

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
RULES = ("min_mean", "max_mean", "max_total_variation")
_FN = {
    "min_mean": jax.jit(windows.window_argmin),
    "max_mean": jax.jit(windows.window_argmax),
    "max_total_variation": jax.jit(windows.window_max_total_variation),
}
_select_jit = jax.jit(lambda v, lay, w, rule: _FN[rule](v, lay, w), static_argnums=3)


# ------------------------------------------------------------- references


def _grid_integers(v: np.ndarray) -> list[int]:
    """The documented fixed-point reading: ``trunc(v · 2^(48 - e))`` with
    ``2^(e-1) <= max|v| < 2^e`` (exact in float64 for float32 input)."""
    v = np.asarray(v, np.float32).astype(np.float64)
    largest = np.abs(v).max() if v.size else 0.0
    e = math.frexp(largest)[1] if largest > 0 else 0
    return [int(x) for x in np.trunc(np.ldexp(v, 48 - e))]


def _exact_start(v, w, rule, quantise=True):
    """Earliest best start with Python-integer (or Fraction-free float64-exact) criteria."""
    m = len(v)
    w = min(max(int(w), 0), m)
    if w == 0:
        return 0
    if quantise:
        q = _grid_integers(v)
    else:  # exact rationals scaled to integers (float32 values are dyadic)
        q = [int(np.ldexp(np.float64(x), 200)) for x in np.asarray(v, np.float32)]
    if rule == "max_total_variation":
        steps = [abs(q[t + 1] - q[t]) for t in range(m - 1)] + [0]
        pre = np.concatenate([[0], np.cumsum(np.array(steps, dtype=object))])
        crit = [pre[l + w - 1] - pre[l] for l in range(m - w + 1)]
        return crit.index(max(crit))
    pre = np.concatenate([[0], np.cumsum(np.array(q, dtype=object))])
    crit = [pre[l + w] - pre[l] for l in range(m - w + 1)]
    return crit.index(min(crit) if rule == "min_mean" else max(crit))


def _float64_loop_start(v, w, rule):
    """Plain float64 numpy loop (earliest best via list.index)."""
    v = np.asarray(v).astype(np.float64)
    m = len(v)
    if rule == "max_total_variation":
        crit = [float(np.abs(np.diff(v[l : l + w])).sum()) for l in range(m - w + 1)]
        return crit.index(max(crit))
    crit = [float(v[l : l + w].mean()) for l in range(m - w + 1)]
    return crit.index(min(crit) if rule == "min_mean" else max(crit))


# ------------------------------------------------------------------ windows


@pytest.mark.parametrize("rule", RULES)
def test_window_packed_after_large_video_equals_alone(rule):
    """The issue's case: 300 values in [0, 1) then 200 in [0, 1e-7)."""
    rng = np.random.default_rng(0)
    first = rng.random(300).astype(np.float32)
    second = (rng.random(200) * 1e-7).astype(np.float32)
    alone = _FN[rule](jnp.asarray(second), packed.layout_from_lengths([200]), jnp.asarray([40]))
    both = _FN[rule](jnp.asarray(np.concatenate([first, second])), packed.layout_from_lengths([300, 200]),
                     jnp.asarray([60, 40]))
    want = _float64_loop_start(second, 40, rule)
    assert want == _exact_start(second, 40, rule)
    assert int(alone.start[0]) == int(both.start[1]) == want
    assert int(both.start[0]) == _float64_loop_start(first, 60, rule)


@pytest.mark.parametrize("rule", RULES)
def test_constant_and_quantised_scores_tie_to_earliest_at_scale(rule):
    """Saturated scores (0.25, 0.1, 1/3) after 100k random rows all start at 0."""
    rng = np.random.default_rng(1)
    big = rng.random(100_000).astype(np.float32)
    videos = [big]
    for c in (0.25, 0.1, 1 / 3, 7e-9, 123.456):
        videos.append(np.full(400, c, np.float32))
    videos.append(np.tile(np.asarray([0.25, 0.5, 0.75, 0.5], np.float32), 100))  # quantised, periodic
    videos.append(np.tile(rng.random(7).astype(np.float32), 60))  # duplicated pattern
    values, layout = packed.pack(videos)
    widths = np.array([len(v) // 5 for v in videos])
    got = _FN[rule](jnp.asarray(values), layout, jnp.asarray(widths))
    starts = np.asarray(got.start)
    want = [_exact_start(v, w, rule) for v, w in zip(videos, widths)]
    assert starts[1:6].tolist() == [0] * 5
    np.testing.assert_array_equal(starts, want)


def _video(draw, m):
    kind = draw(st.sampled_from(["random", "constant", "quantised", "duplicated", "tiny", "signed"]))
    seed = draw(st.integers(0, 2**16))
    scale = np.float32(2.0 ** draw(st.integers(-60, 60)))
    rng = np.random.default_rng(seed)
    if kind == "random":
        v = rng.random(m)
    elif kind == "constant":
        v = np.full(m, rng.random())
    elif kind == "quantised":
        v = rng.integers(0, 4, m) / 4.0
    elif kind == "duplicated":
        v = np.resize(rng.random(int(rng.integers(1, 4))), m)
    elif kind == "tiny":
        v = rng.random(m) * 1e-8
    else:
        v = rng.normal(size=m)
    return (v.astype(np.float32) * scale).astype(np.float32)


@st.composite
def _ragged(draw):
    lengths = draw(st.lists(st.integers(1, 30), min_size=1, max_size=6))
    videos = [_video(draw, m) for m in lengths]
    widths = [draw(st.integers(0, m + 2)) for m in lengths]
    return videos, widths


N_PAD, S_PAD = 8, 200


@SETTINGS
@given(case=_ragged(), rule=st.sampled_from(RULES))
def test_windows_exact_on_ragged_magnitudes(case, rule):
    """Packed (with garbage padding) == each video alone == the exact integer reference."""
    videos, widths = case
    values, layout = packed.pack(videos, N_PAD, S_PAD)
    total = sum(len(v) for v in videos)
    values[total:] = 1e30  # padding rows must not matter
    w = np.zeros(N_PAD, np.int32)
    w[: len(widths)] = widths
    got = _select_jit(jnp.asarray(values), layout, jnp.asarray(w), rule)
    starts = np.asarray(got.start)[: len(videos)]
    want = [_exact_start(v, wi, rule) for v, wi in zip(videos, widths)]
    np.testing.assert_array_equal(starts, want)
    for k, (v, wi) in enumerate(zip(videos, widths)):
        alone_values, alone_layout = packed.pack([v], N_PAD, S_PAD)
        alone = _select_jit(jnp.asarray(alone_values), alone_layout, jnp.asarray(np.full(N_PAD, wi, np.int32)), rule)
        assert int(alone.start[0]) == starts[k]
    assert not np.asarray(got.mask)[total:].any()


@pytest.mark.parametrize("rule", RULES)
def test_windows_invariant_to_power_of_two_scaling(rule):
    rng = np.random.default_rng(3)
    videos = [rng.random(50).astype(np.float32) for _ in range(4)]
    values, layout = packed.pack(videos)
    widths = jnp.asarray([10, 7, 1, 25])
    base = _FN[rule](jnp.asarray(values), layout, widths)
    for k in (-100, -20, 30, 100):
        scaled = _FN[rule](jnp.asarray(np.ldexp(values, k).astype(np.float32)), layout, widths)
        np.testing.assert_array_equal(np.asarray(scaled.start), np.asarray(base.start))


def test_tiny_densities_max_total_variation_matches_float64():
    """Reference variant: densities ~1e-8 (packed after large ones) keep their max-TV window."""
    rng = np.random.default_rng(4)
    z = np.cumsum(rng.normal(size=600)) * 0.05
    tiny = (scipy.stats.norm.pdf(z, 0.0, 0.2) * 1e-8).astype(np.float32)
    big = rng.random(5000).astype(np.float32) * 50
    values, layout = packed.pack([big, tiny])
    got = _FN["max_total_variation"](jnp.asarray(values), layout, jnp.asarray([1000, 120]))
    want = _float64_loop_start(tiny, 120, "max_total_variation")
    assert int(got.start[1]) == want == _exact_start(tiny, 120, "max_total_variation")


def test_argmin_far_tail_windows_are_told_apart():
    """Non-negative videos: windows far below the video's largest value are
    compared exactly (clipping provably keeps the argmin)."""
    v = np.asarray([0.5, 0.4, 1e-25, 2e-25, 0.3, 1e-30, 1e-30, 0.9, 3e-31, 1e-29], np.float32)
    got = _FN["min_mean"](jnp.asarray(v), packed.layout_from_lengths([10]), jnp.asarray([2]))
    want = _exact_start(v, 2, "min_mean", quantise=False)
    assert int(got.start[0]) == want == _float64_loop_start(v, 2, "min_mean") == 5


def test_fixed_point_grid_is_the_documented_one():
    """Values below 2^-47 of the video's largest magnitude are truncated to the
    grid (documented): next to 1.0, windows of 2^-50 and 2^-51 tie at 0 with
    (1, -1), windows of 2^-40 and 2^-41 do not."""
    layout = packed.layout_from_lengths([6])
    w2 = jnp.asarray([2])
    coarse = np.asarray([1.0, -1.0, 2.0**-51, 0.0, 2.0**-50, 0.0], np.float32)
    fine = np.asarray([1.0, -1.0, 2.0**-41, 0.0, 2.0**-40, 0.0], np.float32)
    assert _float64_loop_start(coarse, 2, "max_mean") == _float64_loop_start(fine, 2, "max_mean") == 3
    assert int(_FN["max_mean"](jnp.asarray(coarse), layout, w2).start[0]) == 0 == _exact_start(coarse, 2, "max_mean")
    assert int(_FN["max_mean"](jnp.asarray(fine), layout, w2).start[0]) == 3 == _exact_start(fine, 2, "max_mean")


def test_float_window_outputs_match_float64():
    rng = np.random.default_rng(5)
    videos = [rng.random(40).astype(np.float32) * 1e3, (rng.normal(size=30) * 1e-6).astype(np.float32)]
    values, layout = packed.pack(videos)
    widths = np.array([9, 4])
    @jax.jit
    def outputs(values, layout, widths):
        return (*windows.window_sums(values, layout, widths), windows.total_variation_sums(values, layout, widths)[0],
                windows.segmented_cumsum(values, layout))

    sums, valid, tv, cs = outputs(jnp.asarray(values), layout, jnp.asarray(widths))
    o = 0
    for v, w in zip(videos, widths):
        v64 = v.astype(np.float64)
        m = len(v)
        want_sum = [math.fsum(v64[l : l + w]) for l in range(m - w + 1)]
        want_tv = [math.fsum(np.abs(np.diff(v64[l : l + w]))) for l in range(m - w + 1)]
        np.testing.assert_allclose(np.asarray(sums)[o : o + m - w + 1], want_sum, rtol=3e-7)
        np.testing.assert_allclose(np.asarray(tv)[o : o + m - w + 1], want_tv, rtol=3e-7)
        np.testing.assert_allclose(np.asarray(cs)[o : o + m], np.cumsum(v64), rtol=3e-7, atol=1e-30)
        assert np.asarray(valid)[o : o + m - w + 1].all() and not np.asarray(valid)[o + m - w + 1 : o + m].any()
        o += m


@SETTINGS
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_window_max_matches_loop(lengths, seed):
    rng = np.random.default_rng(seed)
    layout = packed.layout_from_lengths(lengths, N_PAD, S_PAD)
    values = rng.normal(size=S_PAD).astype(np.float32)
    widths = rng.integers(0, 45, N_PAD)
    got, valid = jax.jit(windows.window_max)(jnp.asarray(values), layout, jnp.asarray(widths))
    got = np.asarray(got)
    o = 0
    for m, w in zip(lengths, widths):
        w = min(w, m)
        for l in range(m):
            ok = w > 0 and l + w <= m
            assert bool(valid[o + l]) == ok
            assert got[o + l] == (values[o + l : o + l + w].max() if ok else -np.inf)
        o += m


# ------------------------------------------------------- Generate, log space


_generate_jit = jax.jit(spl.generate_labels, static_argnames=("opts",))


def _null(mean=30.0, var=9.0):
    return null_model.server_mixture([null_model.NullGaussian(jnp.float32(mean), jnp.float32(var), jnp.int32(100))])


def test_far_tail_video_gets_its_float64_window():
    """The issue's case: null N(30, 9), z = 30 + 3t with t = 13.5 .. 20."""
    t = np.asarray([14, 15, 16, 20, 13.5, 15.5, 14.2, 14.8, 13.9, 14.1])
    z = 30.0 + 3.0 * t
    layout = packed.layout_from_lengths([10])
    for variant, score, want_start in (("paper", scipy.stats.norm.sf, 2), ("reference", scipy.stats.norm.pdf, 3)):
        opts = PseudoLabelOptions.preset(variant)
        p = score(z, 30.0, 3.0)  # float64: no underflow here
        assert _float64_loop_start(p, 2, opts.generate_window) == want_start
        assert (np.asarray(null_model.segment_scores_under_null(jnp.asarray(z, jnp.float32), _null(), opts)) == 0).all()
        labels = np.asarray(_generate_jit(jnp.asarray(z, jnp.float32), layout, jnp.asarray([True]), _null(), opts=opts))
        np.testing.assert_array_equal(np.flatnonzero(labels), [want_start, want_start + 1])


@pytest.mark.parametrize("score", ["pvalue_upper", "pvalue_two_sided", "density"])
def test_log_scores_match_float64(score):
    means, variances, counts = np.array([1.0, 3.0, -2.0]), np.array([0.5, 2.0, 1.5]), np.array([10, 30, 0])
    nulls = [null_model.NullGaussian(jnp.float32(m), jnp.float32(v), jnp.int32(c)) for m, v, c in zip(means, variances, counts)]
    mix = null_model.server_mixture(nulls)
    z = np.concatenate([np.linspace(-50, 60, 221), [300.0, 1e3]]).astype(np.float32)
    got = np.asarray(null_model.segment_log_scores_under_null(jnp.asarray(z), mix, PseudoLabelOptions(null_score=score)))
    z64 = z.astype(np.float64)[:, None]
    sd = np.sqrt(variances)
    with np.errstate(divide="ignore"):
        log_w = np.log(counts / counts.sum())
    if score == "pvalue_upper":
        per = scipy.stats.norm.logsf(z64, means, sd)
    elif score == "pvalue_two_sided":
        per = np.log(2) + scipy.stats.norm.logsf(np.abs(z64 - means) / sd)
    else:
        per = scipy.stats.norm.logpdf(z64, means, sd)
    want = scipy.special.logsumexp(log_w + per, axis=1)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    linear = np.asarray(null_model.segment_scores_under_null(jnp.asarray(z), mix, PseudoLabelOptions(null_score=score)))
    shown = linear > 1e-30
    np.testing.assert_allclose(np.exp(got[shown]), linear[shown], rtol=1e-4)


def _log_window_reference(log_s, w, rule):
    """float64 criteria in log space / rescaled: exact enough for far tails."""
    m = len(log_s)
    if rule == "min_mean":
        crit = [scipy.special.logsumexp(log_s[l : l + w]) for l in range(m - w + 1)]
        return np.asarray(crit), int(np.argmin(crit))
    rel = np.exp(log_s - log_s.max())
    crit = [np.abs(np.diff(rel[l : l + w])).sum() for l in range(m - w + 1)]
    return np.asarray(crit), int(np.argmax(crit))


@SETTINGS
@given(lengths=st.lists(st.integers(2, 25), min_size=1, max_size=5), seed=st.integers(0, 2**16),
       variant=st.sampled_from(["paper", "reference"]), depth=st.sampled_from([3.0, 15.0, 40.0]))
def test_generate_in_log_space_matches_float64(lengths, seed, variant, depth):
    """Random ragged videos reaching ``depth`` σ into the tail: the chosen window
    is the float64 optimum (up to float32 near-ties of the log-scores)."""
    opts = PseudoLabelOptions.preset(variant)
    rng = np.random.default_rng(seed)
    z = (30.0 + 3.0 * rng.uniform(0.0, depth, sum(lengths))).astype(np.float32)
    layout = packed.layout_from_lengths(lengths, N_PAD, S_PAD)
    padded = np.pad(z, (0, S_PAD - len(z)), constant_values=1e4)
    labels = np.asarray(_generate_jit(jnp.asarray(padded), layout, jnp.ones(N_PAD, bool), _null(), opts=opts))
    assert not labels[len(z):].any()
    log_s = (scipy.stats.norm.logsf if variant == "paper" else scipy.stats.norm.logpdf)(z.astype(np.float64), 30.0, 3.0)
    o = 0
    for m in lengths:
        w = windows.window_widths(np.asarray([m]), opts.beta, opts.window_rounding)[0]
        w = int(w)
        lab = labels[o : o + m]
        if w == 0:
            assert not lab.any()
        else:
            start = int(np.flatnonzero(lab)[0])
            assert lab.sum() == w
            crit, best = _log_window_reference(log_s[o : o + m], w, opts.generate_window)
            if opts.generate_window == "min_mean":
                assert crit[start] <= crit[best] + 1e-4  # log of the window sum
            else:
                assert crit[start] >= crit[best] * (1 - 1e-4)
        o += m


# ------------------------------------------------------------------ entropy


def _ref_entropy(f, opts):
    """float64 covariance (ddof 1), exactly 0 for exactly constant columns (the
    formula; np.cov's float64 mean of identical values may leave ~1e-30),
    float64 eigh, every positive eigenvalue."""
    f = f.astype(np.float32).astype(np.float64)
    if f.ndim == 3:
        f = f.astype(np.float32).mean(axis=1, dtype=np.float64)
    m, d = f.shape
    cov = np.cov(f.T, ddof=1).reshape(d, d) if m >= 2 else np.zeros((d, d))
    constant = f.max(axis=0) == f.min(axis=0)
    cov[constant, :] = 0.0
    cov[:, constant] = 0.0
    if opts.entropy == "diag_reference":
        c = np.diag(cov).copy()
        c[c == 0] = opts.diag_zero_value
        return float(-(c * np.log(c)).sum())
    lam = np.linalg.eigvalsh(cov)
    lam = lam[lam > 1e-13 * max(lam.max(), 0.0)]
    if opts.entropy == "trace_normalised" and lam.size:
        lam = lam / lam.sum()
    return float(-(lam * np.log(lam)).sum())


OPTS = {
    "paper": PseudoLabelOptions(),
    "eq4": PseudoLabelOptions(entropy="eq4_raw"),
    "reference": PseudoLabelOptions.preset("reference"),
}


_diag_jit = jax.jit(stats_mod.diagonal_entropy, static_argnames=("opts",))
_padded_jit = jax.jit(stats_mod.padded_video_statistics, static_argnames=("opts",))


def _all_routes(features, layout, opts):
    """H from the driver (both eigen backends) and the pure-jnp routes, by name."""
    out = {b: stats_mod.compute_statistics(features, layout, opts, eigen_backend=b).stats[:, 1] for b in ("numpy", "jax")}
    if opts.entropy == "diag_reference":
        out["diagonal_entropy"] = np.asarray(_diag_jit(features, layout, opts=opts))
    lengths = np.asarray(layout.lengths)
    padded = np.zeros((len(lengths), int(lengths.max())) + features.shape[1:], np.float32)
    for k, (o, m) in enumerate(zip(np.asarray(layout.offsets), lengths)):
        padded[k, :m] = features[o : o + m]
    out["padded"] = np.asarray(_padded_jit(padded, lengths, opts=opts)[0][:, 1])
    return out


@pytest.mark.parametrize("case", ["D2_crops", "D8_crops", "D2"])
def test_constant_video_has_zero_entropy(case):
    """A frozen camera feed (the issue's cases: D = 2, 6 segments x 3 crops of
    [0.95, 0.57]; D = 8, 175 segments): every route gives H = 0 (spectral) and
    the released formula's D · (-c ln c), c = 1e-9 (diagonal)."""
    rng = np.random.default_rng(7)
    if case == "D2_crops":  # Gram route (m <= D padded bucket) and covariance route (m > D)
        videos = [np.tile(np.asarray([0.95, 0.57], np.float32), (m, 3, 1)) for m in (2, 6)]
    elif case == "D8_crops":
        videos = [np.tile((rng.random((3, 8)) * s).astype(np.float32), (m, 1, 1)) for m, s in ((175, 10), (5, 100))]
    else:
        videos = [np.tile(rng.random(2).astype(np.float32), (m, 1)) for m in (257, 1)]
    other = rng.normal(size=(5,) + videos[0].shape[1:]).astype(np.float32)
    features, layout = packed.pack([other] + videos)
    dim = other.shape[-1]
    for name in ("paper", "reference"):  # eq4_raw shares the paper's covariance
        opts = OPTS[name]
        want = -dim * 1e-9 * math.log(1e-9) if name == "reference" else 0.0
        for video in videos:
            assert want == pytest.approx(_ref_entropy(video, opts), rel=1e-12)
        for route, got in _all_routes(features, layout, opts).items():
            if name == "reference":
                np.testing.assert_allclose(got[1:], want, rtol=1e-5, err_msg=route)
            else:
                np.testing.assert_array_equal(got[1:], 0.0, err_msg=route)


def test_constant_columns_get_the_released_floor():
    """Varying and constant columns mixed: the diagonal entropy equals the float64
    released formula (constant columns → 1e-9, not ~1e-24 of round-off)."""
    rng = np.random.default_rng(8)
    for m in (6, 40):  # Gram route (m <= D) and covariance route (m > D)
        video = rng.normal(size=(m, 3, 12)).astype(np.float32)
        video[:, :, [1, 4, 5]] = (rng.random((3, 3)) * 7).astype(np.float32)  # constant columns
        features, layout = packed.pack([video])
        opts = OPTS["reference"]
        want = _ref_entropy(video, opts)
        for route, got in _all_routes(features, layout, opts).items():
            assert got[0] == pytest.approx(want, rel=1e-5), route
        got = stats_mod.compute_statistics(features, layout, OPTS["paper"]).stats[0, 1]
        assert got == pytest.approx(_ref_entropy(video, OPTS["paper"]), rel=1e-4, abs=1e-6)


def test_small_eigenvalue_is_kept():
    """3x2 features [[0,0],[1,5e-4],[2,0]]: eigenvalues 1 and 8.3e-8 (old cut-off: H = 0).

    The pure-jnp padded route puts them in a 3x3 Gram matrix with a float32
    eigensolver, whose absolute eigenvalue error is ~eps32 · λ_max (1.2e-7):
    documented, so it only agrees to that accuracy."""
    video = np.asarray([[0, 0], [1, 5e-4], [2, 0]], np.float32)
    features, layout = packed.pack([video])
    want = _ref_entropy(video, OPTS["paper"])
    assert want == pytest.approx(1.4417e-6, rel=1e-4)
    routes = _all_routes(features, layout, OPTS["paper"])
    for route in ("numpy", "jax"):  # 2x2 covariance: exact for both solvers
        assert routes[route][0] == pytest.approx(want, rel=1e-4), route
    assert routes["padded"][0] == pytest.approx(want, abs=4 * 1.2e-7 * 16)


def _decaying_video(rng, m, dim, power, offset=1.0):
    k = min(m, dim)
    basis = np.linalg.qr(rng.normal(size=(dim, k)))[0].T
    latent = rng.normal(size=(m, k)) * np.arange(1, k + 1) ** -power
    return (latent @ basis + offset).astype(np.float32)


def _check_decaying(dim, cases, tol):
    rng = np.random.default_rng(9)
    videos = [_decaying_video(rng, m, dim, power) for m, power in cases]
    features, layout = packed.pack(videos)
    want = [_ref_entropy(v, OPTS["paper"]) for v in videos]
    for backend in ("numpy", "jax"):
        got = stats_mod.compute_statistics(features, layout, OPTS["paper"], eigen_backend=backend).stats[:, 1]
        np.testing.assert_allclose(got, want, atol=tol, rtol=0, err_msg=backend)
    return want


def test_decaying_spectra_keep_their_entropy():
    """Spectra decaying over 1e9-1e20 (D = 256): no cut-off relative to λ_max.
    The old n·eps·λ_max cut-off was off by 1e-3-1e-2 here."""
    want = _check_decaying(256, [(200, 1.0), (900, 3.0)], tol=5e-5)
    assert min(want) > 0.01


@pytest.mark.slow
def test_decaying_spectra_keep_their_entropy_2048():
    """The issue's scale: long 2048-d videos (covariance route) and a Gram-route one."""
    _check_decaying(2048, [(3000, 2.0), (2300, 1.0), (600, 2.0)], tol=1e-4)


@SETTINGS
@given(lengths=st.lists(st.integers(1, 14), min_size=1, max_size=5), seed=st.integers(0, 2**16),
       name=st.sampled_from(sorted(OPTS)), constant_columns=st.integers(0, 5))
@example(lengths=[4], seed=1, name="paper", constant_columns=4)  # found in CI: 2.35e-6 against the exact 0
def test_entropy_with_constant_columns_matches_float64(lengths, seed, name, constant_columns):
    opts = OPTS[name]
    rng = np.random.default_rng(seed)
    videos = []
    for m in lengths:
        v = (rng.normal(size=(m, 2, 5)) * rng.uniform(0.5, 3.0, size=(2, 5)) + 10.0).astype(np.float32)
        v[:, :, :constant_columns] = (rng.random((2, constant_columns)) * 5).astype(np.float32)
        videos.append(v)
    features, layout = packed.pack(videos)
    chunk_bytes = 4 * 2 * 5 * 3  # 3-row chunks: long videos take several chunks
    want = [_ref_entropy(v, opts) for v in videos]
    for backend in ("numpy", "jax"):
        got = stats_mod.compute_statistics(features, layout, opts, chunk_bytes=chunk_bytes, eigen_backend=backend)
        np.testing.assert_allclose(got.stats[:, 1], want, rtol=1e-4, atol=_float32_unresolved_entropy(5))


def _float32_unresolved_entropy(dim: int, ulps: float = 2.0) -> float:
    """Entropy that float32 eigenvalues can carry where the exact ones are 0.

    A float32 symmetric eigensolver resolves eigenvalues to about ``eps32 · λ_max``
    (there is deliberately no cut-off relative to ``λ_max``, see the decaying
    spectra tests), so each of the ``dim - 1`` eigenvalues beside the largest can
    hold a spectral share ``p`` of a few ulps, adding ``-p log p`` (+ the
    renormalisation, ``p``) to the entropy. E.g. 4 segments with one varying
    column gave 2.35e-6 against the exact 0 (p ~ 1.5 ulp).
    """
    p = ulps * float(np.finfo(np.float32).eps)
    return (dim - 1) * p * (1.0 - np.log(p))


def test_noise_floor_formula():
    floor = np.asarray(stats_mod.eigenvalue_noise_floor(jnp.asarray([5.0, 0.0, 5.0]), jnp.asarray([3, 10, 1])))
    eps = np.finfo(np.float32).eps
    np.testing.assert_allclose(floor[0], eps * eps * 5.0 / 2, rtol=1e-6)
    assert floor[1] == 0.0 and floor[2] == 0.0
    # Eigenvalues at or below the floor count as zero; above it they count.
    lam = jnp.asarray([[1.0, 1e-9, 0.0], [1.0, 1e-9, 0.0]])
    h = np.asarray(stats_mod.entropy_from_eigenvalues(lam, PseudoLabelOptions(), jnp.asarray([1e-9, 1e-10])))
    assert h[0] == 0.0 and h[1] == pytest.approx(1e-9 * (1 - math.log(1e-9)), rel=1e-4)
    # The floor bounds what rounding the features can do: float64 eigenvalues of
    # (float32 features - float64 features) never exceed it.
    rng = np.random.default_rng(10)
    exact = rng.normal(size=(50, 16)) * 3 + 20
    noise = exact.astype(np.float32).astype(np.float64) - exact
    noise_eig = np.linalg.eigvalsh(np.cov(noise.T)).max()
    bound = float(stats_mod.eigenvalue_noise_floor((exact.astype(np.float32) ** 2).sum(), 50))
    assert noise_eig <= bound


# ---------------------------------------------------------------------- VPL


def test_vpl_large_scale_statistics_refit_standardised():
    x = np.asarray([[1, 2], [1.5, 2.5], [2, 1], [1e9, -2e10], [1.1e9, -2.2e10], [1.3e9, -2.6e10]])
    with pytest.warns(vpl.VPLWarning, match="refit on standardised statistics"):
        result = vpl.fit_video_pseudo_labels(x)
    assert "ill-defined empirical covariance" in result.note
    np.testing.assert_array_equal(result.labels, [True, True, True, False, False, False])  # higher mean H
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vpl.VPLWarning)
        ref = vpl.fit_video_pseudo_labels(x, PseudoLabelOptions.preset("reference"))
    np.testing.assert_array_equal(ref.labels, ~result.labels)  # equal sizes: "smaller" picks component 0


@SETTINGS
@given(n=st.integers(2, 11), seed=st.integers(0, 2**16), exponent=st.integers(-12, 12),
       standardise=st.booleans(), reference=st.booleans())
def test_vpl_never_raises_at_any_scale(n, seed, exponent, standardise, reference):
    rng = np.random.default_rng(seed)
    stats = rng.normal(size=(n, 2)) * rng.uniform(0.1, 10, 2)
    opts = PseudoLabelOptions.preset("reference" if reference else "paper", gmm_standardise=standardise)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = vpl.fit_video_pseudo_labels(stats * 10.0**exponent, opts)
    assert result.labels.shape == (n,) and result.labels.dtype == bool
    assert result.components.shape == (n,)
    messages = [str(w.message) for w in caught if issubclass(w.category, vpl.VPLWarning)]
    for part in filter(None, result.note.split("; ")):
        assert any(part in msg for msg in messages)  # every fallback is also a warning
    if standardise:  # z-scores are bitwise equal under power-of-two scaling
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vpl.VPLWarning)
            again = vpl.fit_video_pseudo_labels(stats * 2.0 ** (4 * exponent), opts)
        np.testing.assert_array_equal(again.labels, result.labels)
