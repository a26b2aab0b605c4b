"""Frame metrics against scikit-learn (ties included) and their error handling."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from clapjax.evaluation import ap_sklearn, ap_trapezoid, frame_metrics, frame_scores, roc_auc


def _sk(y, s):
    p, r, _ = precision_recall_curve(y, s)
    return roc_auc_score(y, s), average_precision_score(y, s), auc(r, p)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 60),
    levels=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_binary_metrics_match_sklearn_with_ties(n, levels, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    s = rng.integers(0, levels, n) / levels  # few distinct values: many ties
    want = _sk(y, s)
    got = (roc_auc(y, s), ap_sklearn(y, s), ap_trapezoid(y, s))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=8),
    seed=st.integers(0, 2**31 - 1),
)
def test_frame_metrics_equal_sklearn_on_repeated_frames(lengths, seed):
    rng = np.random.default_rng(seed)
    S = sum(lengths)
    seg = np.round(rng.random(S), 1)  # ties across and inside videos
    gt = (rng.random(16 * S) < 0.3).astype(np.uint8)
    gt[0], gt[1] = 0, 1
    frames = np.repeat(seg, 16)
    want = _sk(gt, frames)
    got = frame_metrics(seg, np.asarray(lengths), gt)
    np.testing.assert_allclose([got["auc"], got["ap_sklearn"], got["ap_trapezoid"]], want, rtol=1e-10)
    per_video = np.split(seg, np.cumsum(lengths)[:-1])
    got2 = frame_metrics(list(per_video), np.asarray(lengths), gt)
    assert got2 == got
    np.testing.assert_array_equal(frame_scores(seg, np.asarray(lengths)), frames)


def test_large_random_with_ties():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 400, 300)
    S = int(lengths.sum())
    seg = np.round(rng.random(S), 3)
    gt = np.zeros(16 * S, np.uint8)
    # Anomalous runs aligned to nothing in particular.
    for start in rng.integers(0, 16 * S - 500, 60):
        gt[start : start + rng.integers(1, 500)] = 1
    got = frame_metrics(seg, lengths, gt)
    want = _sk(gt, np.repeat(seg, 16))
    np.testing.assert_allclose([got["auc"], got["ap_sklearn"], got["ap_trapezoid"]], want, rtol=1e-9)


def test_length_mismatch_names_video():
    lengths = np.array([3, 2, 4])
    names = ["a", "b", "c"]
    gt = np.zeros(16 * 9, np.uint8)
    gt[:5] = 1
    with pytest.raises(ValueError, match="inside or before video 'c'"):
        frame_metrics(np.zeros(8), lengths, gt, names=names)
    with pytest.raises(ValueError, match="extra scores after the last video 'c'"):
        frame_metrics(np.zeros(10), lengths, gt, names=names)
    with pytest.raises(ValueError, match="video 'b': 3 segment scores but the features have 2"):
        frame_metrics([np.zeros(3), np.zeros(3), np.zeros(4)], lengths, gt, names=names)
    with pytest.raises(ValueError, match="ends inside video 'c'"):
        frame_metrics(np.zeros(9), lengths, gt[:-16], names=names)
    with pytest.raises(ValueError, match="16 extra frames after the last video 'c'"):
        frame_metrics(np.zeros(9), lengths, np.r_[gt, np.zeros(16, np.uint8)], names=names)
    with pytest.raises(ValueError, match="video #1"):
        frame_metrics([np.zeros(3), np.zeros(1), np.zeros(4)], lengths, gt)


def test_degenerate_and_bad_inputs():
    lengths = np.array([2, 2])
    with pytest.raises(ValueError, match="no anomalous frames"):
        frame_metrics(np.arange(4.0), lengths, np.zeros(64, np.uint8))
    with pytest.raises(ValueError, match="no normal frames"):
        frame_metrics(np.arange(4.0), lengths, np.ones(64, np.uint8))
    gt = np.zeros(64, np.uint8)
    gt[:10] = 1
    with pytest.raises(ValueError, match="not finite.*video #1"):
        frame_metrics(np.array([0.1, 0.2, np.nan, 0.3]), lengths, gt)
    with pytest.raises(ValueError, match="only 0 and 1"):
        frame_metrics(np.arange(4.0), lengths, gt * 2)
    with pytest.raises(ValueError, match="no anomalous"):
        roc_auc([0, 0, 0], [0.1, 0.2, 0.3])
