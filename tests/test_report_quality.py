"""Pseudo-label quality metrics against a plain-loop reference."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from clapjax.report import quality


def _loop_reference(pred, true):
    tp = fp = fn = 0
    for p, t in zip(pred, true):
        p, t = p >= 0.5, t >= 0.5
        tp += p and t
        fp += p and not t
        fn += t and not p
    prec = tp / (tp + fp) if tp + fp else None
    rec = tp / (tp + fn) if tp + fn else None
    iou = tp / (tp + fp + fn) if tp + fp + fn else None
    return prec, rec, iou


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.5, 1.0]), st.integers(0, 1)), max_size=40))
def test_segment_quality_matches_loop(pairs):
    pred = np.asarray([p for p, _ in pairs], np.float32)
    true = np.asarray([t for _, t in pairs], np.uint8)
    q = quality.segment_quality(pred, true)
    prec, rec, iou = _loop_reference(pred, true)
    for got, want in ((q["precision"], prec), (q["recall"], rec), (q["iou"], iou)):
        assert (got is None) == (want is None)
        if want is not None:
            assert got == pytest.approx(want)


def test_segment_quality_mask_and_errors():
    pred = np.array([1, 1, 0, 1], np.float32)
    true = np.array([1, 0, 0, 1], np.uint8)
    q = quality.segment_quality(pred, true, mask=np.array([True, False, True, True]))
    assert q["precision"] == 1.0 and q["recall"] == 1.0 and q["iou"] == 1.0 and q["n"] == 3
    with pytest.raises(ValueError, match="shape"):
        quality.segment_quality(pred, true[:3])
    with pytest.raises(ValueError, match="NaN"):
        quality.segment_quality(np.array([np.nan, 1.0]), np.array([0, 1]))


def test_video_accuracy_per_participant():
    pred = np.array([True, False, True, True, False])
    true = np.array([True, True, True, False, False])
    out = quality.participant_video_accuracy(pred, true, [(0, 2), (2, 5)])
    assert out["per_participant"] == [0.5, pytest.approx(2 / 3)]
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["mean"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert quality.video_accuracy([], [])["accuracy"] is None


def test_participant_segment_quality_splits_rows():
    pred = np.array([1, 0, 0, 0, 1, 1], np.float32)
    true = np.array([1, 1, 0, 0, 0, 1], np.uint8)
    out = quality.participant_segment_quality(pred, true, [(0, 3), (3, 6)])
    assert out["per_participant"][0] == dict(precision=1.0, recall=0.5, iou=0.5)
    assert out["per_participant"][1] == dict(precision=0.5, recall=1.0, iou=0.5)
    assert out["iou"] == pytest.approx(2 / 4)
    assert quality.mean_defined([None, 0.5, 1.0]) == 0.75
    assert quality.mean_defined([None]) is None
