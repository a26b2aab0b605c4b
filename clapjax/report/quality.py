"""Pseudo-label quality against known true labels (host-side numpy).

The paper never reports how good its pseudo-labels are; when true labels are
known (always for synthetic data, for real data when the user supplies them)
these functions measure them:

* VPL: video-level accuracy (and the confusion counts) per participant;
* SPL and every PLR update: segment-level precision, recall and IoU of the
  positive (anomalous) class.

Undefined ratios (e.g. precision with no predicted positives) are ``None``,
never NaN, so they serialise to JSON ``null``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Soft labels (the reference PLR writes 0.5) count as positive from here on.
POSITIVE_THRESHOLD = 0.5


def _ratio(num: int, den: int) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _as_bool(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name}: expected numeric or bool labels, got dtype {arr.dtype}")
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{name}: labels contain NaN or inf")
    return arr >= POSITIVE_THRESHOLD


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: predicted labels have shape {a.shape}, true labels {b.shape}")


def video_accuracy(predicted, true) -> dict:
    """VPL quality of one participant.

    Args:
      predicted: ``[N] bool`` video pseudo-labels (True = anomalous).
      true: ``[N] bool`` true video labels.

    Returns:
      ``dict(accuracy, tp, fp, tn, fn, n)``; accuracy is ``None`` for ``N == 0``.
    """
    p = _as_bool(predicted, "video pseudo-labels")
    t = _as_bool(true, "true video labels")
    _check_same_shape(p, t, "video accuracy")
    tp = int(np.sum(p & t))
    tn = int(np.sum(~p & ~t))
    fp = int(np.sum(p & ~t))
    fn = int(np.sum(~p & t))
    return dict(accuracy=_ratio(tp + tn, p.size), tp=tp, fp=fp, tn=tn, fn=fn, n=int(p.size))


def segment_quality(predicted, true, mask=None) -> dict:
    """Segment-level quality of pseudo-labels for the anomalous class.

    Args:
      predicted: ``[S]`` labels in ``[0, 1]`` (``>= 0.5`` counts as anomalous) or bool.
      true: ``[S]`` true segment labels (0/1 or bool).
      mask: optional ``[S] bool``; False rows (padding) are ignored.

    Returns:
      ``dict(precision, recall, iou, positives, true_positives, n)``.
    """
    p = _as_bool(predicted, "segment pseudo-labels")
    t = _as_bool(true, "true segment labels")
    _check_same_shape(p, t, "segment quality")
    if mask is not None:
        m = np.asarray(mask, bool)
        _check_same_shape(m, p, "segment quality mask")
        p, t = p[m], t[m]
    tp = int(np.sum(p & t))
    pred_pos = int(np.sum(p))
    true_pos = int(np.sum(t))
    union = int(np.sum(p | t))
    return dict(
        precision=_ratio(tp, pred_pos),
        recall=_ratio(tp, true_pos),
        iou=_ratio(tp, union),
        positives=pred_pos,
        true_positives=true_pos,
        n=int(p.size),
    )


def mean_defined(values: Sequence[float | None]) -> float | None:
    """Mean over the entries that are not ``None`` (``None`` if there are none)."""
    defined = [float(v) for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def participant_video_accuracy(predicted, true, video_ranges) -> dict:
    """VPL accuracy per participant and overall.

    Args:
      predicted: ``[N] bool`` pseudo-labels of all participants' videos, packed
        participant after participant.
      true: ``[N] bool`` true labels in the same order.
      video_ranges: K ``(start, stop)`` video index ranges, one per participant.

    Returns:
      ``dict(accuracy=overall, per_participant=[accuracy_k], mean=mean_k)``.
    """
    predicted = np.asarray(predicted)
    true = np.asarray(true)
    per = [video_accuracy(predicted[a:b], true[a:b])["accuracy"] for a, b in video_ranges]
    overall = video_accuracy(predicted, true)
    return dict(accuracy=overall["accuracy"], per_participant=per, mean=mean_defined(per))


def participant_segment_quality(predicted, true, row_ranges, mask=None) -> dict:
    """Segment precision/recall/IoU overall and per participant.

    Args:
      predicted: ``[S]`` segment labels of all participants, packed in order.
      true: ``[S]`` true segment labels.
      row_ranges: K ``(start, stop)`` row ranges, one per participant.
      mask: optional ``[S] bool``.

    Returns:
      ``dict(precision, recall, iou, per_participant=[{precision, recall, iou}])``.
    """
    predicted = np.asarray(predicted)
    true = np.asarray(true)
    m = None if mask is None else np.asarray(mask, bool)
    overall = segment_quality(predicted, true, m)
    per = []
    for a, b in row_ranges:
        q = segment_quality(predicted[a:b], true[a:b], None if m is None else m[a:b])
        per.append({k: q[k] for k in ("precision", "recall", "iou")})
    return dict(
        precision=overall["precision"],
        recall=overall["recall"],
        iou=overall["iou"],
        per_participant=per,
    )
