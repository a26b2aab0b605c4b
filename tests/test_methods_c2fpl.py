"""C2FPL's stages against plain numpy / loop references on small inputs."""

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from clapjax import data, packed, pipeline, splits
from clapjax.methods import C2FPLOptions, c2fpl

PAPER, REFERENCE = C2FPLOptions.preset("paper"), C2FPLOptions.preset("reference")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.sampled_from(["std", "var"]), st.integers(0, 99))
def test_video_statistics_match_a_loop(lengths, spread, seed):
    z = np.random.default_rng(seed).gamma(2.0, 1.0, sum(lengths)).astype(np.float32)
    lay = packed.layout_from_lengths(lengths, len(lengths) + 1, sum(lengths) + 3)  # padded
    zp = np.concatenate([z, np.full(3, 7.0, np.float32)])
    got = np.asarray(c2fpl.video_statistics(zp, lay, spread))
    start = 0
    for i, m in enumerate(lengths):
        v = z[start:start + m].astype(np.float64)
        start += m
        var = v.var(ddof=1) if m >= 2 else 0.0
        want = [v.mean(), np.sqrt(var) if spread == "std" else var]
        np.testing.assert_allclose(got[i], want, rtol=2e-5, atol=1e-6)
    np.testing.assert_array_equal(got[-1], [0.0, 0.0])  # padding video


def _notebook_loop(x, opts):
    """The released notebook's coarse loop, transcribed with lists (reference rule)."""
    from sklearn.mixture import GaussianMixture

    def gmm():
        return GaussianMixture(n_components=2, max_iter=opts.gmm_max_iter, random_state=opts.gmm_seed,
                               covariance_type=opts.gmm_covariance)

    params = [list(r) for r in x]
    first = gmm().fit(params).predict(params)
    abag = [i for i in range(len(params)) if first[i] == 1]
    nbag = [i for i in range(len(params)) if first[i] == 0]
    while len(abag) / len(nbag) < opts.eta:
        g = gmm().fit([params[i] for i in nbag])
        score = g.score_samples([params[i] for i in nbag])
        cut = np.percentile(score, opts.likelihood_percentile)
        res = [1 if s < cut else 0 for s in score]
        abag += [nbag[j] for j in range(len(nbag)) if res[j] == 1]
        nbag = [nbag[j] for j in range(len(nbag)) if res[j] == 0]
    out = np.zeros(len(params), bool)
    out[abag] = True
    return out


def _paper_loop(x, opts):
    """Divisive clustering as the paper describes it, written as a plain loop."""
    from sklearn.mixture import GaussianMixture

    def split(idx):
        g = GaussianMixture(2, covariance_type=opts.gmm_covariance, max_iter=opts.gmm_max_iter,
                            random_state=opts.gmm_seed).fit(x[idx])
        c = g.predict(x[idx])
        small = int(np.argmin(np.bincount(c, minlength=2)))
        return [i for i, ci in zip(idx, c) if ci == small], [i for i, ci in zip(idx, c) if ci != small]

    anomalous, normal = split(list(range(len(x))))
    while len(anomalous) / len(normal) < opts.eta:
        moved, normal = split(normal)
        anomalous += moved
    out = np.zeros(len(x), bool)
    out[anomalous] = True
    return out


def _blobs(seed, n_normal=30, n_anomalous=12):
    rng = np.random.default_rng(seed)
    normal = rng.normal([1.0, 0.2], [0.1, 0.03], size=(n_normal, 2))
    anomalous = rng.normal([2.0, 0.8], [0.4, 0.2], size=(n_anomalous, 2))
    return np.concatenate([normal, anomalous])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_divisive_clustering_reference_rule_is_the_notebook_loop(seed):
    x = _blobs(seed)
    got = c2fpl.divisive_clustering(x, REFERENCE)
    np.testing.assert_array_equal(got.labels, _notebook_loop(x, REFERENCE))
    assert got.labels.sum() / (~got.labels).sum() >= REFERENCE.eta and got.note == ""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_divisive_clustering_paper_rule_is_a_plain_loop(seed):
    x = _blobs(seed)
    for eta in (0.3, 1.0):
        opts = PAPER.replace(eta=eta)
        got = c2fpl.divisive_clustering(x, opts)
        np.testing.assert_array_equal(got.labels, _paper_loop(x, opts))
        assert got.labels.sum() / (~got.labels).sum() >= eta


def test_divisive_clustering_degenerate_inputs():
    assert c2fpl.divisive_clustering(np.ones((1, 2)), PAPER).note.startswith("1 video(s)")
    res = c2fpl.divisive_clustering(_blobs(0), PAPER.replace(eta=50.0, max_splits=2))
    assert res.splits == 2 and "max_splits=2" in res.note
    with pytest.raises(ValueError, match="video 3: non-finite"):
        x = _blobs(0)
        x[3, 1] = np.nan
        c2fpl.divisive_clustering(x, PAPER)


def _segment_reference(z, lengths, video_labels, opts):
    """Null Gaussian over normal videos, then a loop over windows of every anomalous video."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    normal = np.concatenate([z[s:s + m] for s, m, a in zip(starts, lengths, video_labels) if not a]).astype(np.float64)
    mu, sd = normal.mean(), normal.std(ddof=1)
    if opts.null_score == "density":
        p = scipy.stats.norm.pdf(z, mu, sd)
    else:
        p = scipy.stats.norm.sf(z, mu, sd)
    out = np.zeros(len(z), np.float32)
    for s, m, a in zip(starts, lengths, video_labels):
        if not a:
            continue
        w = int(np.ceil(opts.beta * m)) if opts.window_rounding == "ceil" else int(opts.beta * m)
        w = min(max(w, 1), m)
        pv = p[s:s + m]
        if opts.window == "min_mean":
            crit = [pv[i:i + w].mean() for i in range(m - w + 1)]
            best = int(np.argmin(crit))
        else:
            crit = [np.abs(np.diff(pv[i:i + w])).sum() for i in range(m - w + 1)]
            best = int(np.argmax(crit))
        out[s + best:s + best + w] = 1.0
    return out


@pytest.mark.parametrize("opts", [PAPER, REFERENCE], ids=["paper", "reference"])
def test_segment_labels_match_a_loop(opts):
    rng = np.random.default_rng(4)
    lengths = [12, 7, 30, 9, 16]
    video_labels = np.array([False, True, False, True, True])
    z = rng.gamma(4.0, 1.0, sum(lengths)).astype(np.float32)
    # one clear bump per anomalous video, so the window is well defined
    z[12 + 2:12 + 4] += 8
    z[49 + 5:49 + 7] += 8
    z[58 + 10:58 + 13] += 8
    got, g = c2fpl.segment_labels(z, packed.layout_from_lengths(lengths), video_labels, opts)
    np.testing.assert_array_equal(np.asarray(got), _segment_reference(z, lengths, video_labels, opts))
    assert int(g.count) == 42


def test_segment_labels_need_a_normal_video():
    with pytest.raises(ValueError, match="no normal-labelled video"):
        c2fpl.segment_labels(np.ones(4, np.float32), packed.layout_from_lengths([4]), np.array([True]), PAPER)


@pytest.fixture(scope="module")
def training_set():
    split = data.shrink_split(splits.load("ucf", "random", 2), 4)
    source = data.open_source("ucf", "train", synthetic=data.SyntheticConfig.preset("tiny"))
    return pipeline.load_training_set(source, split)


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_pseudo_label_is_per_participant_composition(training_set, variant):
    ts, opts = training_set, C2FPLOptions.preset(variant)
    pl = c2fpl.pseudo_label(ts, opts)
    seg_opts = opts.segment_options()
    from clapjax import statistics

    for k in range(ts.num_participants):
        (va, vb), (ra, rb) = ts.video_ranges[k], ts.row_ranges[k]
        lay = ts.participant_layout(k)
        z = np.asarray(statistics.segment_magnitude(ts.features[ra:rb], seg_opts))
        np.testing.assert_array_equal(pl.magnitude[ra:rb], z)
        x = np.asarray(c2fpl.video_statistics(z, lay, opts.spread))
        np.testing.assert_allclose(pl.statistics[va:vb], x, rtol=1e-6)
        coarse = c2fpl.divisive_clustering(x, opts).labels
        np.testing.assert_array_equal(pl.vpl[va:vb], coarse)
        seg, g = c2fpl.segment_labels(z, lay, coarse, opts)
        np.testing.assert_array_equal(pl.segment_labels[ra:rb], np.asarray(seg))
        assert pl.null_counts[k] == int(g.count)
    assert set(np.unique(pl.segment_labels)) <= {0.0, 1.0}
    # Weak supervision replaces the coarse labels of the chosen videos only.
    weak = np.zeros(ts.layout.num_videos, bool)
    a, b = ts.video_ranges[1]
    weak[a:b] = True
    pw = c2fpl.pseudo_label(ts, opts, weak_videos=weak)
    np.testing.assert_array_equal(pw.video_labels[a:b], ts.true_video_labels[a:b])
    np.testing.assert_array_equal(pw.video_labels[:a], pl.video_labels[:a])


def test_presets_follow_the_table():
    assert (REFERENCE.magnitude, REFERENCE.spread, REFERENCE.gmm_covariance) == ("mean_sq_norm", "var", "spherical")
    assert (REFERENCE.null_score, REFERENCE.window, REFERENCE.window_rounding) == ("density", "max_total_variation",
                                                                                    "floor")
    assert (PAPER.null_score, PAPER.window, PAPER.split_rule) == ("pvalue_upper", "min_mean", "smaller_cluster")
    ref = c2fpl.train_overrides("reference")
    assert (ref["lr"], ref["momentum"], ref["nesterov"], ref["l2"], ref["lr_milestones"]) == (0.001, 0.9, True,
                                                                                              5e-4, (15, 25))
    assert c2fpl.model_options("paper").attention is False
    with pytest.raises(ValueError, match="valid: paper, reference"):
        C2FPLOptions.preset("released")
    with pytest.raises(ValueError, match="split_rule"):
        C2FPLOptions(split_rule="kmeans")
