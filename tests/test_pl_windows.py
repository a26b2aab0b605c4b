"""Sliding windows, null model and Algorithm 2 (Generate / PLR) vs numpy loops."""

import fractions
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clapjax import null_model, packed, spl, windows
from clapjax.options import PseudoLabelOptions

N_PAD, S_PAD = 8, 64
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

lengths_strategy = st.lists(st.integers(1, 12), min_size=1, max_size=N_PAD).filter(lambda ls: sum(ls) <= S_PAD)


def _values(rng, total, kind):
    if kind == "ties":  # small integers: exact float32 sums, many ties
        return rng.integers(0, 3, size=total).astype(np.float32)
    if kind == "constant":
        return np.full(total, 0.5, np.float32)
    return rng.random(total).astype(np.float32)


def _ref_width(m, beta, rounding):
    exact = fractions.Fraction(beta).limit_denominator(10_000) * m
    w = math.ceil(exact) if rounding == "ceil" else math.floor(exact)
    return min(max(w, 0), m)


def _ref_select(v, w, rule):
    """Loop reference: (start, width) with ties → earliest start; w = 0 → empty.

    Window sums use ``math.fsum`` (correctly rounded): for these float32
    inputs (<= 12 values within 24 binades) they are exact, so ties are exact
    and the windows must match the jnp functions exactly.
    """
    m = len(v)
    w = min(max(w, 0), m)
    if w == 0:
        return 0, 0
    v = v.astype(np.float64)
    if rule == "max_total_variation":
        crit = [math.fsum(abs(v[t + 1] - v[t]) for t in range(l, l + w - 1)) for l in range(m - w + 1)]
        best = max(crit)
    else:
        crit = [math.fsum(v[l : l + w]) for l in range(m - w + 1)]  # one width per video: sums order as means
        best = min(crit) if rule == "min_mean" else max(crit)
    return crit.index(best), w


def _ref_mask(lengths, starts, widths):
    return np.concatenate([
        (np.arange(m) >= s) & (np.arange(m) < s + w) for m, s, w in zip(lengths, starts, widths)
    ])


_RULES = {
    "min_mean": windows.window_argmin,
    "max_mean": windows.window_argmax,
    "max_total_variation": windows.window_max_total_variation,
}


@pytest.mark.parametrize("rounding", ["ceil", "floor"])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.2, 0.25, 1 / 3, 0.5, 0.7, 1.0])
def test_window_widths_exact(beta, rounding):
    m = np.arange(0, 400)
    got = np.asarray(windows.window_widths(m, beta, rounding))
    want = np.array([_ref_width(int(k), beta, rounding) for k in m])
    np.testing.assert_array_equal(got, want)
    assert int(windows.window_widths(np.array([15]), 0.2, "ceil")[0]) == 3  # float ceil gives 4


_select_jit = jax.jit(lambda v, lay, w, rule: _RULES[rule](v, lay, w), static_argnums=3)


@SETTINGS
@given(lengths=lengths_strategy, seed=st.integers(0, 2**16), kind=st.sampled_from(["ties", "random", "constant"]),
       rule=st.sampled_from(sorted(_RULES)), width_mode=st.sampled_from(["beta", "random"]))
def test_windows_match_loop_and_padding(lengths, seed, kind, rule, width_mode):
    rng = np.random.default_rng(seed)
    total = sum(lengths)
    values = _values(rng, total, kind)
    if width_mode == "beta":
        widths = np.array([_ref_width(m, 0.3, "ceil") for m in lengths])
    else:  # includes w = 0 and w > m (clipped)
        widths = rng.integers(0, 15, size=len(lengths))
    layout = packed.layout_from_lengths(lengths, N_PAD, S_PAD)
    padded_values = np.zeros(S_PAD, np.float32)
    padded_values[:total] = values
    padded_values[total:] = 7.0  # garbage in padding rows must not matter
    padded_widths = np.zeros(N_PAD, np.int32)
    padded_widths[: len(lengths)] = widths
    win = _select_jit(jnp.asarray(padded_values), layout, jnp.asarray(padded_widths), rule)

    offsets = np.cumsum([0] + list(lengths[:-1]))
    ref = [_ref_select(values[o : o + m], int(w), rule) for o, m, w in zip(offsets, lengths, widths)]
    starts = np.array([r[0] for r in ref])
    eff_w = np.array([r[1] for r in ref])
    got_start = np.asarray(win.start)[: len(lengths)]
    got_width = np.asarray(win.width)[: len(lengths)]
    # Exact window criteria (clapjax.windows): the same starts as the exact
    # reference, random values included (no float32 near-tie allowance).
    np.testing.assert_array_equal(got_start, starts)
    np.testing.assert_array_equal(np.asarray(win.mask)[:total], _ref_mask(lengths, starts, eff_w))
    np.testing.assert_array_equal(got_width, eff_w)
    assert not np.asarray(win.mask)[total:].any()
    assert not np.asarray(win.start)[len(lengths):].any()



@pytest.mark.parametrize("rule", sorted(_RULES))
def test_padding_changes_nothing(rule):
    rng = np.random.default_rng(1)
    lengths = [3, 1, 9, 2, 6]
    values = rng.random(sum(lengths)).astype(np.float32)
    widths = np.array([2, 1, 4, 0, 6])
    bare = _select_jit(jnp.asarray(values), packed.layout_from_lengths(lengths), jnp.asarray(widths), rule)
    padded = _select_jit(
        jnp.asarray(np.pad(values, (0, S_PAD - len(values)), constant_values=-3.0)),
        packed.layout_from_lengths(lengths, N_PAD, S_PAD),
        jnp.asarray(np.pad(widths, (0, N_PAD - len(widths)), constant_values=5)),
        rule,
    )
    np.testing.assert_array_equal(np.asarray(padded.start)[: len(lengths)], np.asarray(bare.start))
    np.testing.assert_array_equal(np.asarray(padded.mask)[: len(values)], np.asarray(bare.mask))
    assert not np.asarray(padded.mask)[len(values):].any()


def test_window_edge_cases():
    layout = packed.layout_from_lengths([1, 3, 4])
    values = jnp.asarray([5.0, 1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 0.0])

    @jax.jit
    def run(values, layout):
        return (
            windows.window_argmax(values, layout, jnp.asarray([0, 3, 9])),
            windows.window_max_total_variation(values, layout, jnp.asarray([1, 1, 2])),
            windows.segmented_cumsum(values, layout),
        )

    win, tv, cs = run(values, layout)
    np.testing.assert_array_equal(np.asarray(win.start), [0, 0, 0])
    np.testing.assert_array_equal(np.asarray(win.width), [0, 3, 4])  # w=0 empty, w>m clipped
    np.testing.assert_array_equal(np.asarray(win.mask), [False, True, True, True, True, True, True, True])
    np.testing.assert_array_equal(np.asarray(tv.start), [0, 0, 0])  # w = 1: variation 0 → earliest
    np.testing.assert_allclose(np.asarray(cs), [5, 1, 2, 3, 0, 2, 4, 4])


def _stack_values(arrays, size, fill=0):
    return jnp.stack([jnp.pad(jnp.asarray(a), (0, size - len(a)), constant_values=fill) for a in arrays])


def test_windows_vmap_over_participants_equals_loop():
    rng = np.random.default_rng(0)
    groups = [[3, 1, 7], [12, 2], [1]]
    values = [rng.random(sum(g)).astype(np.float32) for g in groups]
    stacked = packed.stack([packed.layout_from_lengths(g) for g in groups])
    n_max, s_max = stacked.num_videos, stacked.num_segments
    vals = _stack_values(values, s_max)

    def all_rules(v, lay):
        w = windows.window_widths(lay.lengths, 0.4, "ceil")
        return [fn(v, lay, w) for fn in _RULES.values()]

    batched = jax.jit(jax.vmap(all_rules))(vals, stacked)
    single_fn = jax.jit(all_rules)
    for k, g in enumerate(groups):
        # Each participant alone (its own layout, padded to the same shapes: one compile).
        singles = single_fn(vals[k], packed.layout_from_lengths(g, n_max, s_max))
        for rule, b, s1 in zip(_RULES, batched, singles):
            np.testing.assert_array_equal(np.asarray(b.start[k]), np.asarray(s1.start), err_msg=rule)
            np.testing.assert_array_equal(np.asarray(b.mask[k]), np.asarray(s1.mask), err_msg=rule)
            starts = [_ref_select(v, _ref_width(m, 0.4, "ceil"), rule)[0]
                      for v, m in zip(packed.unpack(values[k], packed.layout_from_lengths(g)), g)]
            if rule == "max_total_variation":
                np.testing.assert_array_equal(np.asarray(s1.start)[: len(g)], starts)


# ----------------------------------------------------------------- null model


def _ref_null(z, lengths, labels):
    offsets = np.cumsum([0] + list(lengths[:-1]))
    rows = np.concatenate([z[o : o + m] for o, m, a in zip(offsets, lengths, labels) if not a] or [np.zeros(0)])
    rows = rows.astype(np.float64)
    if rows.size == 0:
        return 0.0, 0.0, 0
    return rows.mean(), (rows.var(ddof=1) if rows.size > 1 else 0.0), rows.size


@SETTINGS
@given(lengths=lengths_strategy, seed=st.integers(0, 2**16))
def test_participant_null_matches_numpy(lengths, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(3.0, 1.0, sum(lengths)).astype(np.float32)
    labels = rng.random(len(lengths)) < 0.5
    layout = packed.layout_from_lengths(lengths, N_PAD, S_PAD)
    zp = np.pad(z, (0, S_PAD - len(z)), constant_values=100.0)
    lp = np.pad(labels, (0, N_PAD - len(labels)))
    got = null_model.participant_null(jnp.asarray(zp), layout, jnp.asarray(lp))
    mean, var, count = _ref_null(z, lengths, labels)
    assert int(got.count) == count
    np.testing.assert_allclose(float(got.mean), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(got.var), var, rtol=1e-4, atol=1e-5)


def test_server_mixture_rules():
    g1 = null_model.NullGaussian(jnp.float32(2.0), jnp.float32(1.0), jnp.int32(30))
    g0 = null_model.NullGaussian(jnp.float32(0.0), jnp.float32(0.0), jnp.int32(0))  # no normal segment
    g2 = null_model.NullGaussian(jnp.float32(5.0), jnp.float32(0.0), jnp.int32(10))  # zero variance
    mix = null_model.server_mixture([g1, g0, g2])
    np.testing.assert_allclose(np.asarray(mix.weights), [0.75, 0.0, 0.25])
    assert float(mix.variances[2]) > 0
    scores = null_model.segment_scores_under_null(jnp.asarray([1.0, 5.0, 6.0]), mix, PseudoLabelOptions.preset("reference"))
    assert np.isfinite(np.asarray(scores)).all()
    with pytest.raises(ValueError, match="no participant has normal-labelled segments"):
        null_model.server_mixture([g0, g0])
    with pytest.raises(TypeError, match="participant 0: expected a NullGaussian"):
        null_model.server_mixture([np.zeros((5, 8))])
    stacked = jax.vmap(lambda m, v, c: null_model.NullGaussian(m, v, c))(
        jnp.asarray([2.0, 5.0]), jnp.asarray([1.0, 0.5]), jnp.asarray([30, 10])
    )
    np.testing.assert_allclose(np.asarray(null_model.server_mixture(stacked).weights), [0.75, 0.25])


@pytest.mark.parametrize("score", ["pvalue_upper", "pvalue_two_sided", "density"])
def test_scores_match_scipy(score):
    means, variances, counts = np.array([1.0, 3.0, -2.0]), np.array([0.5, 2.0, 1.5]), np.array([10, 30, 5])
    nulls = [null_model.NullGaussian(jnp.float32(m), jnp.float32(v), jnp.int32(c)) for m, v, c in zip(means, variances, counts)]
    mix = null_model.server_mixture(nulls)
    z = np.linspace(-6, 9, 41)
    got = np.asarray(null_model.segment_scores_under_null(jnp.asarray(z), mix, PseudoLabelOptions(null_score=score)))
    w = counts / counts.sum()
    sd = np.sqrt(variances)
    if score == "pvalue_upper":
        want = sum(wk * scipy.stats.norm.sf(z, m, s) for wk, m, s in zip(w, means, sd))
    elif score == "pvalue_two_sided":
        want = sum(wk * 2 * scipy.stats.norm.sf(np.abs(z - m) / s) for wk, m, s in zip(w, means, sd))
    else:
        want = sum(wk * scipy.stats.norm.pdf(z, m, s) for wk, m, s in zip(w, means, sd))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


# ----------------------------------------------------------------- Algorithm 2


def _ref_generate(scores, lengths, video_labels, opts):
    out, o = [], 0
    for m, a in zip(lengths, video_labels):
        lab = np.zeros(m, np.float32)
        if a:
            s, w = _ref_select(scores[o : o + m], _ref_width(m, opts.beta, opts.window_rounding), opts.generate_window)
            lab[s : s + w] = 1
            if opts.alpha is not None:
                lab[scores[o : o + m] < opts.alpha] = 1
        out.append(lab)
        o += m
    return np.concatenate(out)


def _ref_refine(q, labels, lengths, video_labels, opts):
    out, o = [], 0
    for m, a in zip(lengths, video_labels):
        y = labels[o : o + m].astype(np.float64)
        in_scope = a or opts.plr_scope == "all"
        if in_scope:
            s, w = _ref_select(q[o : o + m], _ref_width(m, opts.plr_beta, opts.window_rounding), opts.plr_window)
            win = np.zeros(m)
            win[s : s + w] = 1
            cur = y > 0.5
            if opts.plr == "paper":
                inter = cur & (win > 0)
                y = (inter if inter.any() else (cur | (win > 0))).astype(np.float64)
            else:
                res = cur.astype(float) + win
                union = np.count_nonzero(res)
                iou = np.sum(res == 2) / union if union else 0.0
                total = y + win
                y = (total > 0).astype(float) if iou < opts.plr_iou_threshold else total / 2
        out.append(y)
        o += m
    return np.concatenate(out).astype(np.float32)


_generate_jit = jax.jit(spl.generate_from_scores, static_argnames=("opts",))
_refine_jit = jax.jit(spl.refine_labels, static_argnames=("opts",))

_GEN_OPTS = [
    PseudoLabelOptions(),
    PseudoLabelOptions.preset("reference"),
    PseudoLabelOptions(alpha=0.3, beta=0.35),
]
_PLR_OPTS = [
    PseudoLabelOptions(),
    PseudoLabelOptions(plr_scope="all"),
    PseudoLabelOptions.preset("reference"),
    PseudoLabelOptions.preset("reference", plr_window="max_mean", plr_beta=0.3),
]


@SETTINGS
@given(lengths=lengths_strategy, seed=st.integers(0, 2**16), kind=st.sampled_from(["ties", "random"]),
       opt_index=st.integers(0, len(_GEN_OPTS) - 1))
def test_generate_matches_loop(lengths, seed, kind, opt_index):
    opts = _GEN_OPTS[opt_index]
    rng = np.random.default_rng(seed)
    total = sum(lengths)
    scores = _values(rng, total, kind) / (3.0 if kind == "ties" else 1.0)
    video_labels = rng.random(len(lengths)) < 0.6
    layout = packed.layout_from_lengths(lengths, N_PAD, S_PAD)
    got = _generate_jit(
        jnp.asarray(np.pad(scores, (0, S_PAD - total), constant_values=9.0)),
        layout,
        jnp.asarray(np.pad(video_labels, (0, N_PAD - len(lengths)), constant_values=True)),
        opts=opts,
    )
    got = np.asarray(got)
    assert not got[total:].any()
    want = _ref_generate(scores, lengths, video_labels, opts)
    np.testing.assert_array_equal(got[:total], want)  # exact windows: no near-tie allowance


@SETTINGS
@given(lengths=lengths_strategy, seed=st.integers(0, 2**16), opt_index=st.integers(0, len(_PLR_OPTS) - 1),
       soft=st.booleans())
def test_refine_matches_loop(lengths, seed, opt_index, soft):
    opts = _PLR_OPTS[opt_index]
    rng = np.random.default_rng(seed)
    total = sum(lengths)
    q = rng.integers(0, 4, total).astype(np.float32) / 4  # exact values, ties
    levels = [0.0, 0.5, 1.0] if soft else [0.0, 1.0]
    labels = rng.choice(levels, total).astype(np.float32)
    video_labels = rng.random(len(lengths)) < 0.6
    layout = packed.layout_from_lengths(lengths, N_PAD, S_PAD)
    got = np.asarray(_refine_jit(
        jnp.asarray(np.pad(q, (0, S_PAD - total))),
        jnp.asarray(np.pad(labels, (0, S_PAD - total), constant_values=1.0)),
        layout,
        jnp.asarray(np.pad(video_labels, (0, N_PAD - len(lengths)))),
        opts=opts,
    ))
    np.testing.assert_array_equal(got[:total], _ref_refine(q, labels, lengths, video_labels, opts))
    assert not got[total:].any()


def test_generate_end_to_end_and_vmap_equals_loop():
    rng = np.random.default_rng(3)
    groups = [[5, 1, 9, 2], [20, 3], [4]]
    video_labels = [np.array([True, True, False, True]), np.array([True, False]), np.array([False])]
    zs = [rng.normal(2.0, 0.5, sum(g)).astype(np.float32) for g in groups]
    stacked = packed.stack([packed.layout_from_lengths(g) for g in groups])
    s_max, n_max = stacked.num_segments, stacked.num_videos
    z_st = _stack_values(zs, s_max)
    lab_st = _stack_values(video_labels, n_max, fill=False)
    nulls = jax.jit(jax.vmap(null_model.participant_null))(z_st, stacked, lab_st)
    for k, (z, g, lab) in enumerate(zip(zs, groups, video_labels)):
        mean, var, count = _ref_null(z, g, lab)
        assert int(nulls.count[k]) == count
        np.testing.assert_allclose(float(nulls.mean[k]), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(nulls.var[k]), var, rtol=1e-4, atol=1e-6)
    for opts in (PseudoLabelOptions(), PseudoLabelOptions.preset("reference")):
        mix = null_model.server_mixture(nulls, opts)  # stacked [K] summaries

        def both(z, lay, lab, mix):
            gen = spl.generate_labels(z, lay, lab, mix, opts)
            return gen, spl.refine_labels(z, gen, lay, lab, opts), null_model.segment_scores_under_null(z, mix, opts)

        gen, ref, _ = jax.jit(jax.vmap(both, in_axes=(0, 0, 0, None)))(z_st, stacked, lab_st, mix)
        single_fn = jax.jit(both)
        for k, (z, g, lab) in enumerate(zip(zs, groups, video_labels)):
            s_gen, s_ref, scores = single_fn(z_st[k], packed.layout_from_lengths(g, n_max, s_max), lab_st[k], mix)
            np.testing.assert_array_equal(np.asarray(gen[k]), np.asarray(s_gen))
            np.testing.assert_array_equal(np.asarray(ref[k]), np.asarray(s_ref))
            want = _ref_generate(np.asarray(scores)[: len(z)], g, lab, opts)
            np.testing.assert_array_equal(np.asarray(s_gen)[: len(z)], want)
            assert not np.asarray(gen[k, len(z):]).any()


def test_no_recompile_on_new_values():
    traces = {"n": 0}

    def counted(z, lay, lab, mix, scores, labels):
        traces["n"] += 1
        opts = PseudoLabelOptions()
        gen = spl.generate_labels(z, lay, lab, mix, opts)
        return gen, spl.refine_labels(scores, labels, lay, lab, opts)

    fn = jax.jit(counted)
    layout = packed.layout_from_lengths([3, 5, 2], N_PAD, S_PAD)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        z = jnp.asarray(rng.random(S_PAD), jnp.float32)
        lab = jnp.asarray(rng.random(N_PAD) < 0.5)
        null = null_model.participant_null(z, layout, ~lab)
        mix = null_model.server_mixture([null, null])
        out = fn(z, layout, lab, mix, z, jnp.zeros(S_PAD))
        jax.block_until_ready(out)
    # A new layout with the same padded shapes reuses the compiled function too.
    fn(z, packed.layout_from_lengths([10, 1], N_PAD, S_PAD), lab, mix, z, jnp.zeros(S_PAD))
    assert traces["n"] == 1
    assert fn._cache_size() == 1
