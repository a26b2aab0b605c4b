"""Segment-level pseudo-labels (paper Algorithm 2; SPEC §2.4 and §2.6).

Both modes are pure jnp on the packed layout, jit-able (``opts`` static) and
vmappable over stacked participants. Padding rows always get label 0.

Generate: in every video with ``ŷ_i = 1``, score segments under the null
mixture ``G``; width ``w_i = ⌈β m_i⌉`` (or ``⌊β m_i⌋``); the window of lowest
mean p-value (paper) or largest total variation (released code) gets 1,
everything else 0. Videos with ``ŷ_i = 0`` are all 0. With ``opts.alpha`` set
(p-value scores only), segments with ``p < α`` in anomalous videos are also 1.

Numerical contract of Generate (:func:`generate_labels`): scores are taken
as log-scores (:func:`~clapjax.null_model.segment_log_scores_under_null`)
and each video is rescaled by one constant before exponentiating
(:func:`window_values_from_log_scores`), which changes neither the lowest
mean nor the largest total variation window, so videos far in the null's
tail (where float32 p-values and densities underflow to 0) still get their
true window. The windows themselves are exact (:mod:`clapjax.windows`).

Update (PLR): the window ``q̃_i`` of highest mean model score (paper) or
largest total variation (released code), width from ``plr_beta``.
  * ``"paper"``: if ``q̃_i`` overlaps the current labels ``ỹ_i`` (``> 0.5``),
    new labels = ``ỹ_i ∩ q̃_i``, else ``ỹ_i ∪ q̃_i``.
  * ``"reference_iou"``: ``IoU = |ỹ_i ∩ q̃_i| / |ỹ_i ∪ q̃_i|`` (``ỹ_i > 0.5``;
    0 if the union is empty, where the released code reuses the previous
    video's IoU); if ``IoU < plr_iou_threshold`` new = ``1[ỹ_i + q̃_i > 0]``
    else new = ``(ỹ_i + q̃_i) / 2`` (soft labels 0.5).
Videos outside ``plr_scope`` keep their labels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from clapjax import packed, windows
from clapjax.null_model import Mixture, segment_log_scores_under_null
from clapjax.options import PseudoLabelOptions
from clapjax.packed import Layout


def _anomalous_rows(video_labels: ArrayLike, layout: Layout) -> jax.Array:
    return packed.per_segment(jnp.asarray(video_labels, bool), layout, fill=False) & layout.segment_mask


def select_window(values: ArrayLike, layout: Layout, widths: ArrayLike, rule: str) -> windows.Window:
    """Dispatches ``"min_mean" | "max_mean" | "max_total_variation"``."""
    if rule == "min_mean":
        return windows.window_argmin(values, layout, widths)
    if rule == "max_mean":
        return windows.window_argmax(values, layout, widths)
    if rule == "max_total_variation":
        return windows.window_max_total_variation(values, layout, widths)
    raise ValueError(f"unknown window rule {rule!r}; valid: min_mean, max_mean, max_total_variation")


def _rescaled(log_scores: jax.Array, layout: Layout, widths: ArrayLike, rule: str) -> tuple[jax.Array, jax.Array | None]:
    """``(exp(log s - c_i) [S], its window maxima [S] or None)``."""
    n = layout.num_videos
    seg = layout.video_of_segment
    peak = None
    if rule == "min_mean":
        peak, valid = windows.window_max(log_scores, layout, widths)
        minimax = jax.ops.segment_min(jnp.where(valid, peak, jnp.inf), seg, num_segments=n)
        width = jnp.maximum(jnp.clip(jnp.asarray(widths, jnp.int32), 0, layout.lengths), 1)
        shift = minimax + jnp.log(width.astype(jnp.float32))
        ceiling = jnp.log(4.0)
    else:
        shift = jax.ops.segment_max(jnp.where(layout.segment_mask, log_scores, -jnp.inf), seg, num_segments=n)
        ceiling = 0.0
    shift = packed.per_segment(jnp.where(jnp.isfinite(shift), shift, 0.0), layout, fill=0.0)
    values = jnp.where(layout.segment_mask, jnp.exp(jnp.minimum(log_scores - shift, ceiling)), 0.0)
    if peak is not None:  # exp is monotone: the window maxima of the values
        peak = jnp.exp(jnp.minimum(peak - shift, ceiling))
    return values, peak


def window_values_from_log_scores(log_scores: ArrayLike, layout: Layout, widths: ArrayLike, rule: str) -> jax.Array:
    """``exp(log s - c_i)``: each video's scores over one constant, no underflow.

    Dividing every score of a video by the same constant ``e^{c_i}`` leaves the
    window of lowest mean and the window of largest total variation
    unchanged. The constant keeps the values that decide the window in
    float32 range:
      * ``"max_total_variation"`` / ``"max_mean"``: ``c_i`` = the video's
        largest log-score (values in ``(0, 1]``; the largest steps and means
        are never lost).
      * ``"min_mean"``: ``c_i = M*_i + log w_i`` with ``M*_i`` the smallest
        window maximum of the log-scores. The best window's values are then
        ``<= 1`` and its largest is ``>= 1/w_i``, however deep in the tail
        the whole video is; values more than 4 times larger (which cannot be
        in the best window, see :func:`clapjax.windows.window_argmin`) are
        clipped to 4 instead of overflowing.

    Args:
      log_scores: ``[S]`` natural-log scores (``-inf`` allowed).
      layout: packed layout.
      widths: ``[N]`` window widths.
      rule: ``"min_mean" | "max_mean" | "max_total_variation"``.

    Returns:
      ``[S] float32`` in ``[0, 4]`` (0 on padding rows).
    """
    return _rescaled(jnp.asarray(log_scores, jnp.float32), layout, widths, rule)[0]


def generate_from_log_scores(
    log_scores: ArrayLike,
    layout: Layout,
    video_labels: ArrayLike,
    opts: PseudoLabelOptions = PseudoLabelOptions(),
) -> jax.Array:
    """Generate mode from null log-scores (log p-values or log-density).

    Args:
      log_scores: ``[S]`` natural-log scores of segments under ``G``
        (:func:`~clapjax.null_model.segment_log_scores_under_null`).
      layout: packed layout.
      video_labels: ``[N] bool`` video pseudo-labels.
      opts: ``beta``, ``window_rounding``, ``generate_window``, ``alpha``,
        ``null_score``.

    Returns:
      ``[S] float32`` labels in {0, 1}. The α rule compares
      ``log p < log α``.
    """
    log_scores = jnp.asarray(log_scores, jnp.float32)
    widths = windows.window_widths(layout.lengths, opts.beta, opts.window_rounding)
    values, peak = _rescaled(log_scores, layout, widths, opts.generate_window)
    if opts.generate_window == "min_mean":
        chosen = windows.window_argmin(values, layout, widths, window_peak=peak)
    else:
        chosen = select_window(values, layout, widths, opts.generate_window)
    anomalous = _anomalous_rows(video_labels, layout)
    labels = chosen.mask & anomalous
    if opts.alpha is not None and opts.null_score != "density":
        labels = labels | (anomalous & (log_scores < jnp.log(jnp.float32(opts.alpha))))
    return labels.astype(jnp.float32)


def generate_from_scores(
    scores: ArrayLike,
    layout: Layout,
    video_labels: ArrayLike,
    opts: PseudoLabelOptions = PseudoLabelOptions(),
) -> jax.Array:
    """Generate mode from precomputed null scores (p-values or density).

    The windows are exact on these float32 values; scores that already
    underflowed to 0 cannot be told apart (prefer
    :func:`generate_from_log_scores`).

    Args:
      scores: ``[S]`` scores of segments under ``G``.
      layout: packed layout.
      video_labels: ``[N] bool`` video pseudo-labels.

    Returns:
      ``[S] float32`` labels in {0, 1}.
    """
    scores = jnp.asarray(scores, jnp.float32)
    widths = windows.window_widths(layout.lengths, opts.beta, opts.window_rounding)
    chosen = select_window(scores, layout, widths, opts.generate_window)
    anomalous = _anomalous_rows(video_labels, layout)
    labels = chosen.mask & anomalous
    if opts.alpha is not None and opts.null_score != "density":
        labels = labels | (anomalous & (scores < opts.alpha))
    return labels.astype(jnp.float32)


def generate_labels(
    z: ArrayLike,
    layout: Layout,
    video_labels: ArrayLike,
    mixture: Mixture,
    opts: PseudoLabelOptions = PseudoLabelOptions(),
) -> jax.Array:
    """Algorithm 2, Generate: window pseudo-labels in pseudo-anomalous videos.

    Scores are computed and compared in log space (see the module docstring).

    Args:
      z: ``[S]`` segment magnitudes.
      layout: packed layout (``N`` videos, ``S`` rows).
      video_labels: ``[N] bool`` (True = anomalous).
      mixture: server null mixture ``G``.
      opts: ``null_score``, ``beta``, ``window_rounding``, ``generate_window``,
        ``alpha``.

    Returns:
      ``[S] float32`` in {0, 1}; padding rows 0.
    """
    log_scores = segment_log_scores_under_null(z, mixture, opts)
    return generate_from_log_scores(log_scores, layout, video_labels, opts)


def refine_labels(
    scores: ArrayLike,
    labels: ArrayLike,
    layout: Layout,
    video_labels: ArrayLike,
    opts: PseudoLabelOptions = PseudoLabelOptions(),
) -> jax.Array:
    """Algorithm 2, Update (pseudo-label refinement, PLR).

    Args:
      scores: ``[S]`` model scores ``q`` of the participant's own segments.
      labels: ``[S]`` current segment labels ``ỹ`` (0/1, or soft 0.5 after
        ``reference_iou``).
      layout: packed layout.
      video_labels: ``[N] bool`` video pseudo-labels (scope ``"anomalous"``).
      opts: ``plr``, ``plr_window``, ``plr_scope``, ``plr_beta``,
        ``window_rounding``, ``plr_iou_threshold``.

    Returns:
      ``[S] float32`` refined labels; padding rows 0.
    """
    scores = jnp.asarray(scores, jnp.float32)
    labels = jnp.where(layout.segment_mask, jnp.asarray(labels, jnp.float32), 0.0)
    n = layout.num_videos
    seg = layout.video_of_segment
    widths = windows.window_widths(layout.lengths, opts.plr_beta, opts.window_rounding)
    window = select_window(scores, layout, widths, opts.plr_window).mask
    current = labels > 0.5
    both = jax.ops.segment_sum((current & window).astype(jnp.int32), seg, num_segments=n)
    if opts.plr == "paper":
        overlap = packed.per_segment(both > 0, layout, fill=False)
        new = jnp.where(overlap, current & window, current | window).astype(jnp.float32)
    else:
        either = jax.ops.segment_sum((current | window).astype(jnp.int32), seg, num_segments=n)
        iou = jnp.where(either > 0, both / jnp.maximum(either, 1), 0.0)
        union_rule = packed.per_segment(iou < opts.plr_iou_threshold, layout, fill=True)
        total = labels + window.astype(jnp.float32)
        new = jnp.where(union_rule, (total > 0).astype(jnp.float32), total / 2.0)
    if opts.plr_scope == "anomalous":
        in_scope = _anomalous_rows(video_labels, layout)
    else:
        in_scope = layout.segment_mask
    return jnp.where(layout.segment_mask, jnp.where(in_scope, new, labels), 0.0)
