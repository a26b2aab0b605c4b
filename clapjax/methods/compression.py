"""Sultani's fixed-length compression of videos, and the weak-label stage.

Sultani et al. (CVPR 2018, §3.3 and ``Save_C3DFeatures_32Segments.m`` of
``WaqasSultani/AnomalyDetectionCVPR2018``) represent every video by ``M = 32``
segments: the video's ``n`` clip features are averaged over ``M`` near-equal
ranges of consecutive clips and each segment is L2-normalised. The range
boundaries are ``b = round(linspace(1, n, M + 1))`` (1-based, MATLAB rounding,
halves away from zero); segment ``j`` averages clips ``b_j .. b_{j+1} - 1``, or
clip ``b_j`` alone when that range is empty (``n < M``). As in the script,
clip ``n`` itself is in no range when ``n > 1`` (its last range stops at
``b_{M+1} - 1 = n - 1``); :func:`clapjax.data.sultani_segment_frames` maps the
same segments to frames.

MIL (:mod:`clapjax.methods.mil`) and CLAWS (:mod:`clapjax.methods.claws`) train
on compressed videos (a MIL bag is one video's ``M`` segments). Test videos are
scored as the data give them (clip features, or Sultani's released 32-segment
files): with ``normalize`` the methods L2-normalise every test row as the
compressed training rows are.

The weak-label stage (:func:`weak_labels`) replaces a pseudo-labelling stage:
weakly supervised methods train on every training video's TRUE label, given
to all its segments (the engine's per-row labels).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from clapjax import packed

#: Sultani et al.'s segments per video.
SEGMENTS = 32


def segment_ranges(n_clips: int, num_segments: int = SEGMENTS) -> tuple[np.ndarray, np.ndarray]:
    """0-based clip ranges ``[start_j, stop_j)`` of the ``M`` segments of ``n`` clips.

    ``start_j = b_j - 1`` and ``stop_j = max(b_{j+1} - 1, b_j)`` with
    ``b = round(linspace(1, n, M + 1))`` (halves away from zero, in exact
    integers): an empty range becomes the single clip ``b_j - 1``.

    Raises:
      ValueError: ``n_clips < 1`` or ``num_segments < 1``.
    """
    n, m = int(n_clips), int(num_segments)
    if n < 1 or m < 1:
        raise ValueError(f"cannot compress {n} clips into {m} segments (both must be >= 1)")
    j = np.arange(m + 1, dtype=np.int64)
    b = 1 + (2 * (n - 1) * j + m) // (2 * m)  # round(1 + (n - 1) j / M), halves up (all values >= 0)
    start = b[:-1] - 1
    stop = np.maximum(b[1:] - 1, start + 1)
    return start, stop


class CompressionPlan(NamedTuple):
    """Index arrays of the compression of packed videos (host, numpy).

    Attributes:
      row_segment: ``[S] int32`` output segment each input row is summed into,
        ``N·M`` (a discarded bucket) for rows in no multi-clip range.
      counts: ``[N·M] float32`` clips averaged by each output segment.
      single: ``[N·M] int32`` the one input row of a single-clip segment.
      is_single: ``[N·M] bool`` the segment is one clip (copied, not summed).
    """

    row_segment: np.ndarray
    counts: np.ndarray
    single: np.ndarray
    is_single: np.ndarray


def compression_plan(lengths: ArrayLike, num_segments: int = SEGMENTS) -> CompressionPlan:
    """The :class:`CompressionPlan` of videos of ``lengths`` rows each (packed in order)."""
    lengths = np.asarray(lengths, np.int64)
    m = int(num_segments)
    total = int(lengths.sum())
    out = lengths.size * m
    row_segment = np.full(total, out, np.int32)
    counts = np.zeros(out, np.float32)
    single = np.zeros(out, np.int32)
    offset = 0
    for v, n in enumerate(lengths):
        start, stop = segment_ranges(int(n), m)
        for j in range(m):
            seg = v * m + j
            a, b = offset + int(start[j]), offset + int(stop[j])
            counts[seg] = b - a
            single[seg] = a
            if b - a > 1:
                row_segment[a:b] = seg  # multi-clip ranges never overlap
        offset += int(n)
    return CompressionPlan(row_segment, counts, single, counts == 1)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(‖x‖₂, eps)`` over the last axis (zero rows stay zero)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def compress(features: jax.Array, plan: CompressionPlan, normalize: bool = True) -> jax.Array:
    """Means of consecutive rows over each video's ``M`` ranges.

    Args:
      features: ``[S, C, D] float32`` packed rows of the videos of ``plan``.
      plan: from :func:`compression_plan`.
      normalize: L2-normalise every output crop feature (Sultani's rows have norm 1).
    Returns:
      ``[N·M, C, D] float32``, video after video.
    """
    x = jnp.asarray(features, jnp.float32)
    out = plan.counts.shape[0]
    sums = jax.ops.segment_sum(x, jnp.asarray(plan.row_segment), num_segments=out + 1)[:out]
    means = sums / jnp.maximum(jnp.asarray(plan.counts), 1.0)[:, None, None]
    y = jnp.where(jnp.asarray(plan.is_single)[:, None, None], x[jnp.asarray(plan.single)], means)
    return l2_normalize(y) if normalize else y


def compress_labels(labels: ArrayLike, plan: CompressionPlan) -> np.ndarray:
    """``[N·M] uint8`` segment truth: 1 where any averaged clip is anomalous."""
    labels = np.asarray(labels).astype(np.uint8)
    out = plan.counts.shape[0]
    seg = np.zeros(out + 1, np.uint8)
    np.maximum.at(seg, plan.row_segment, labels)
    seg = seg[:out]
    return np.where(plan.is_single, labels[plan.single], seg).astype(np.uint8)


def compress_training_set(ts, num_segments: int = SEGMENTS, normalize: bool = True, compress_videos: bool = True):
    """The training set with every video compressed to ``num_segments`` rows.

    Args:
      ts: a :class:`clapjax.pipeline.TrainingSet` (in memory or streamed; read
        one participant at a time).
      num_segments: ``M``.
      normalize: L2-normalise the rows.
      compress_videos: False: the videos must already have ``M`` rows each
        (e.g. Sultani's released features); only ``normalize`` is applied.
    Returns:
      a new in-memory ``TrainingSet`` (``[N·M, C, D]`` features).
    Raises:
      ValueError: ``compress_videos`` is False and a video does not have
        ``M`` rows (named), or a video has no row.
    """
    from clapjax.pipeline import TrainingSet

    lengths = ts.lengths
    m = int(num_segments)
    if lengths.size and lengths.min() < 1:
        bad = int(np.flatnonzero(lengths < 1)[0])
        raise ValueError(f"video {ts.video_names[bad]!r}: no segments to compress")
    if not compress_videos and np.any(lengths != m):
        bad = int(np.flatnonzero(lengths != m)[0])
        raise ValueError(f"video {ts.video_names[bad]!r}: {int(lengths[bad])} segments, but compression is off "
                         f"and a bag needs exactly {m} (turn the {m}-segment compression on)")
    s, c, d = ts.features.shape
    out = np.empty((lengths.size * m, c, d), np.float32)
    truth = None if ts.true_segment_labels is None else np.zeros(lengths.size * m, np.uint8)
    row_ranges = []
    fn = jax.jit(compress, static_argnames="normalize")
    for k in range(ts.num_participants):
        (va, vb), (ra, rb) = ts.video_ranges[k], ts.row_ranges[k]
        feats = np.asarray(ts.participant_features(k), np.float32)
        if compress_videos:
            plan = compression_plan(lengths[va:vb], m)
            out[va * m:vb * m] = np.asarray(fn(feats, plan, normalize=normalize))
            if truth is not None:
                truth[va * m:vb * m] = compress_labels(ts.true_segment_labels[ra:rb], plan)
        else:
            out[va * m:vb * m] = np.asarray(l2_normalize(jnp.asarray(feats))) if normalize else feats
            if truth is not None:
                truth[va * m:vb * m] = ts.true_segment_labels[ra:rb]
        row_ranges.append((va * m, vb * m))
    layout = packed.layout_from_lengths(np.full(lengths.size, m, np.int64))
    return TrainingSet(out, layout, ts.table_index, ts.video_names, ts.video_ranges, tuple(row_ranges),
                       ts.participant_names, ts.true_video_labels, truth)


def weak_labels(ts, pairs: bool = True):
    """The weak-label stage: every video's true label on all its segments.

    Returns:
      a :class:`clapjax.pipeline.PseudoLabels` with ``vpl = video_labels =``
      the true labels, ``segment_labels`` each row's video label, zero
      statistics and null summaries (no statistics are computed), and, with
      ``pairs`` (MIL's bags), per participant a note when it lacks normal or
      anomalous videos.
    Raises:
      ValueError: the training videos' labels are unknown.
    """
    from clapjax.pipeline import PseudoLabels

    if ts.true_video_labels is None:
        raise ValueError("a weakly supervised method needs the label of every training video "
                         "(annotate every training video, normal ones with no interval)")
    labels = np.asarray(ts.true_video_labels, bool)
    k = ts.num_participants
    notes = []
    for name, (a, b) in zip(ts.participant_names, ts.video_ranges):
        n_anom = int(labels[a:b].sum())
        n_norm = (b - a) - n_anom
        notes.append("" if not pairs or (n_anom and n_norm) else
                     f"{n_norm} normal and {n_anom} anomalous videos: no (normal, anomalous) bag pair, "
                     f"so it trains no step")
    return PseudoLabels(
        magnitude=np.zeros(ts.features.shape[0], np.float32),
        statistics=np.zeros((labels.size, 2), np.float32),
        vpl=labels.copy(), video_labels=labels.copy(),
        null_means=np.zeros(k, np.float32), null_vars=np.zeros(k, np.float32), null_counts=np.zeros(k, np.int64),
        segment_labels=np.repeat(labels.astype(np.float32), ts.lengths),
        notes=tuple(notes))
