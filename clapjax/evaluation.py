"""Frame-level evaluation of segment scores (SPEC §4).

Segment scores are repeated x16 to frames (per video, in list order),
concatenated, and compared with the concatenated frame ground truth; features
compressed to a fixed number of segments give each segment its own frame
count (``segment_frames``). Metrics:

* ``auc``: ROC-AUC, ties handled like ``sklearn.metrics.roc_auc_score``.
* ``ap_sklearn``: ``sklearn.metrics.average_precision_score`` (step integral of
  the precision-recall curve).
* ``ap_trapezoid``: ``sklearn.metrics.auc(recall, precision)`` on
  ``precision_recall_curve``: the trapezoidal area the XD-Violence literature
  (RTFM, XDVioDet, MGFN code) reports as "AP".

Everything is numpy on the host. Frames of one segment share a score, so the
curves are computed on segments weighted by their positive/negative frame
counts: exactly the frame-level numbers, 16x fewer elements to sort.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from clapjax.tables import FRAMES_PER_SEGMENT

__all__ = [
    "ap_sklearn",
    "ap_trapezoid",
    "frame_metrics",
    "frame_scores",
    "roc_auc",
]


def _video_name(names: Sequence[str] | None, i: int) -> str:
    return repr(names[i]) if names is not None else f"#{i}"


def _check_lengths(lengths: ArrayLike) -> np.ndarray:
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0:
        raise ValueError(f"test_lengths must be a non-empty 1-D array, got shape {lengths.shape}")
    if not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"test_lengths must be integers, got dtype {lengths.dtype}")
    return lengths.astype(np.int64)


def frame_scores(
    segment_scores: ArrayLike | Sequence[ArrayLike],
    lengths: ArrayLike,
    names: Sequence[str] | None = None,
    segment_frames: ArrayLike | None = None,
) -> np.ndarray:
    """Repeats segment scores x16 (or x ``segment_frames``) to frames.

    Args:
      segment_scores: ``[S]`` packed scores in video order, or a list of N
        per-video arrays ``[m_i]``.
      lengths: ``[N]`` segments per video.
      names: optional video names for error messages.
      segment_frames: optional ``[S] int`` frames per segment (compressed
        features); default 16 each.

    Returns:
      ``[16 * S] float64`` (or ``[sum(segment_frames)]``) frame scores.

    Raises:
      ValueError: naming the first video whose scores do not match its length.
    """
    lengths = _check_lengths(lengths)
    seg = _segment_scores(segment_scores, lengths, names)
    counts = _segment_frame_counts(segment_frames, lengths)
    return np.repeat(seg, FRAMES_PER_SEGMENT if counts is None else counts)


def _segment_scores(
    segment_scores: ArrayLike | Sequence[ArrayLike],
    lengths: np.ndarray,
    names: Sequence[str] | None,
) -> np.ndarray:
    """Validates scores against lengths; returns packed ``[S] float64``."""
    if isinstance(segment_scores, (list, tuple)):
        if len(segment_scores) != lengths.size:
            raise ValueError(
                f"{len(segment_scores)} per-video score arrays for {lengths.size} test videos"
            )
        parts = []
        for i, (s, m) in enumerate(zip(segment_scores, lengths)):
            s = np.asarray(s, np.float64).reshape(-1)
            if s.size != m:
                raise ValueError(
                    f"video {_video_name(names, i)}: {s.size} segment scores but the "
                    f"features have {int(m)} segments"
                )
            parts.append(s)
        seg = np.concatenate(parts)
    else:
        seg = np.asarray(segment_scores, np.float64)
        if seg.ndim != 1:
            raise ValueError(f"segment_scores must be 1-D [S], got shape {seg.shape}")
        total = int(lengths.sum())
        if seg.size != total:
            ends = np.cumsum(lengths)
            # The first video the scores do not cover exactly.
            i = int(np.searchsorted(ends, min(seg.size, total), side="left"))
            if seg.size > total:
                where = f"{seg.size - total} extra scores after the last video {_video_name(names, lengths.size - 1)}"
            else:
                where = f"the scores end inside or before video {_video_name(names, i)}"
            raise ValueError(
                f"{seg.size} segment scores for {total} test segments ({where}); "
                "scores must follow the test list order exactly"
            )
    bad = ~np.isfinite(seg)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        i = int(np.searchsorted(np.cumsum(lengths), j, side="right"))
        raise ValueError(
            f"segment score {seg[j]} (not finite) in video {_video_name(names, i)}, "
            f"packed row {j}"
        )
    return seg


def _curve(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray):
    """Cumulative (tp, fp) at each distinct threshold, highest score first.

    ``pos``/``neg`` are per-element positive/negative weights (frame counts).
    """
    order = np.argsort(scores, kind="stable")[::-1]
    s = scores[order]
    tps_all = np.cumsum(pos[order], dtype=np.float64)
    fps_all = np.cumsum(neg[order], dtype=np.float64)
    # Last index of each run of equal scores: ties form a single threshold.
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    return tps_all[last], fps_all[last]


def _check_binary(tps: np.ndarray, fps: np.ndarray, what: str) -> None:
    if tps[-1] == 0 or fps[-1] == 0:
        kind = "no anomalous" if tps[-1] == 0 else "no normal"
        raise ValueError(
            f"{what} is undefined: the ground truth has {kind} frames "
            "(it needs both classes)"
        )


def _roc_auc(tps, fps) -> float:
    _check_binary(tps, fps, "ROC-AUC")
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) * 0.5))


def _precision_recall(tps, fps):
    _check_binary(tps, fps, "AP")
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return precision, recall


def _ap_step(tps, fps) -> float:
    precision, recall = _precision_recall(tps, fps)
    return float(max(0.0, np.sum(np.diff(np.r_[0.0, recall]) * precision)))


def _ap_trapezoid(tps, fps) -> float:
    precision, recall = _precision_recall(tps, fps)
    # sklearn's curve starts at (recall 0, precision 1).
    p = np.r_[1.0, precision]
    r = np.r_[0.0, recall]
    return float(np.sum(np.diff(r) * (p[1:] + p[:-1]) * 0.5))


def _binary_inputs(y_true: ArrayLike, y_score: ArrayLike):
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(y_score, np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} elements but y_score has {s.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if not np.isfinite(s).all():
        raise ValueError("y_score holds NaN or inf")
    yf = y.astype(np.float64)
    return _curve(s, yf, 1.0 - yf)


def roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """ROC-AUC of binary labels ``[F]`` against scores ``[F]`` (= sklearn, ties included)."""
    return _roc_auc(*_binary_inputs(y_true, y_score))


def ap_sklearn(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """``sklearn.metrics.average_precision_score`` (step integral)."""
    return _ap_step(*_binary_inputs(y_true, y_score))


def ap_trapezoid(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """``sklearn.metrics.auc(recall, precision)``: the XD-Violence literature's "AP"."""
    return _ap_trapezoid(*_binary_inputs(y_true, y_score))


def _segment_frame_counts(segment_frames, lengths: np.ndarray) -> np.ndarray | None:
    """Validated ``[S] int64`` frames per segment, or None for 16 each."""
    if segment_frames is None:
        return None
    counts = np.asarray(segment_frames).reshape(-1)
    if not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"segment_frames must be integers, got dtype {counts.dtype}")
    if counts.size != int(lengths.sum()):
        raise ValueError(f"segment_frames has {counts.size} entries for {int(lengths.sum())} test segments")
    if (counts < 0).any():
        raise ValueError("segment_frames must be >= 0")
    return counts.astype(np.int64)


def frame_metrics(
    segment_scores: ArrayLike | Sequence[ArrayLike],
    test_lengths: ArrayLike,
    gt: ArrayLike,
    names: Sequence[str] | None = None,
    segment_frames: ArrayLike | None = None,
) -> dict[str, float]:
    """Frame-level ROC-AUC and both APs from segment scores.

    Args:
      segment_scores: ``[S_test]`` packed scores in test-list order (or a list
        of per-video ``[m_i]`` arrays).
      test_lengths: ``[N] int`` segments per test video; ``S_test = sum``.
      gt: ``[F]`` frame labels in {0, 1}, concatenated in list order;
        ``F = 16 * S_test`` unless ``segment_frames`` is given.
      names: optional ``[N]`` video names used in error messages.
      segment_frames: optional ``[S_test] int`` frames each segment's score
        covers (features compressed to a fixed number of segments, e.g.
        :func:`clapjax.data.sultani_segment_frames`); default 16 each.
        ``F = sum(segment_frames)``; a segment of 0 frames is not scored.

    Returns:
      ``{"auc", "ap_sklearn", "ap_trapezoid"}`` as Python floats.

    Raises:
      ValueError: a score/length/ground-truth mismatch (naming the video),
        non-finite scores, labels other than 0/1, or ground truth with a
        single class (the metrics are undefined).
    """
    tps, fps = _frame_curve(segment_scores, test_lengths, gt, names, segment_frames)
    return {
        "auc": _roc_auc(tps, fps),
        "ap_sklearn": _ap_step(tps, fps),
        "ap_trapezoid": _ap_trapezoid(tps, fps),
    }


def frame_roc(
    segment_scores: ArrayLike | Sequence[ArrayLike],
    test_lengths: ArrayLike,
    gt: ArrayLike,
    names: Sequence[str] | None = None,
    segment_frames: ArrayLike | None = None,
    grid: int = 201,
) -> tuple[np.ndarray, np.ndarray]:
    """The frame-level ROC curve, as :func:`frame_metrics` computes its AUC,
    sampled at ``grid`` evenly spaced false-positive rates.

    Returns:
      ``(fpr [grid], tpr [grid])`` float64; ``tpr`` is linearly interpolated
      between the curve's points (the AUC's trapezoids). Same arguments and
      errors as :func:`frame_metrics`.
    """
    tps, fps = _frame_curve(segment_scores, test_lengths, gt, names, segment_frames)
    _check_binary(tps, fps, "ROC curve")
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    grid_fpr = np.linspace(0.0, 1.0, int(grid))
    return grid_fpr, np.interp(grid_fpr, fpr, tpr)


def _frame_curve(segment_scores, test_lengths, gt, names=None, segment_frames=None):
    """Validated cumulative ``(tps, fps)`` at the distinct segment scores (see :func:`frame_metrics`)."""
    lengths = _check_lengths(test_lengths)
    seg = _segment_scores(segment_scores, lengths, names)
    gt = np.asarray(gt).reshape(-1)
    counts = _segment_frame_counts(segment_frames, lengths)
    if counts is None:
        seg_frames = np.full(int(lengths.sum()), FRAMES_PER_SEGMENT, np.int64)
        how = f"= 16 x {int(lengths.sum())} segments"
    else:
        seg_frames = counts
        how = "= the frames their segments cover"
    expected = int(seg_frames.sum())
    if gt.size != expected:
        video_ends = np.cumsum(seg_frames)[np.cumsum(lengths) - 1]
        if gt.size > expected:
            where = f"{gt.size - expected} extra frames after the last video {_video_name(names, lengths.size - 1)}"
        else:
            i = int(np.searchsorted(video_ends, gt.size, side="right"))
            where = f"the ground truth ends inside video {_video_name(names, min(i, lengths.size - 1))}"
        raise ValueError(
            f"frame ground truth has {gt.size} frames but the test features have "
            f"{expected} ({how}); {where}. "
            "Ground truth is never truncated: regenerate it for these features"
        )
    if not np.isin(gt, (0, 1)).all():
        raise ValueError("frame ground truth must hold only 0 and 1")
    if counts is None:
        pos = gt.reshape(-1, FRAMES_PER_SEGMENT).sum(axis=1, dtype=np.float64)
    else:
        # Frames of one segment share its score: per-segment positive counts.
        owner = np.repeat(np.arange(seg_frames.size), seg_frames)
        pos = np.bincount(owner, weights=gt.astype(np.float64), minlength=seg_frames.size)
    neg = seg_frames.astype(np.float64) - pos
    if counts is not None:
        # A segment covering no frame is no threshold of the frame-level curves.
        keep = seg_frames > 0
        seg, pos, neg = seg[keep], pos[keep], neg[keep]
    return _curve(seg, pos, neg)
