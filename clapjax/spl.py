"""Segment-level pseudo-labels (paper Algorithm 2; SPEC §2.4 and §2.6).

Both modes are pure jnp on the packed layout, jit-able (``opts`` static) and
vmappable over stacked participants. Padding rows always get label 0.

Generate: in every video with ``ŷ_i = 1``, score segments under the null
mixture ``G``; width ``w_i = ⌈β m_i⌉`` (or ``⌊β m_i⌋``); the window of lowest
mean p-value (paper) or largest total variation (released code) gets 1,
everything else 0. Videos with ``ŷ_i = 0`` are all 0. With ``opts.alpha`` set
(p-value scores only), segments with ``p < α`` in anomalous videos are also 1.

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
from clapjax.null_model import Mixture, segment_scores_under_null
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


def generate_from_scores(
    scores: ArrayLike,
    layout: Layout,
    video_labels: ArrayLike,
    opts: PseudoLabelOptions = PseudoLabelOptions(),
) -> jax.Array:
    """Generate mode from precomputed null scores (p-values or density).

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
    scores = segment_scores_under_null(z, mixture, opts)
    return generate_from_scores(scores, layout, video_labels, opts)


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
