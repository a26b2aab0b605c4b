"""Sliding windows over packed ragged videos (pure jnp, jit/vmap-able).

Every video ``i`` of a :class:`~clapjax.packed.Layout` gets its own window
width ``w_i``. A window is identified by its start position ``l`` inside the
video and covers positions ``l .. l + w_i - 1``; valid starts are
``0 <= l <= m_i - w_i``. Window sums come from a segment-wise (per video)
cumulative sum, so every function is O(S) in the packed length and never pads
a video to the longest one.

Precision: prefix sums run over the whole packed axis (one ``jnp.cumsum``,
cheap to compile), on values centred by their video's mean. Every video then
contributes ~0 to the running sum, which stays of the order of one video's
deviations instead of growing with ``S`` (a raw float32 cumsum over 780k rows
would lose ~0.06 absolute). Within a video, the mean shift is the same for all
windows, so comparisons use the centred sums directly.

Conventions (documented, tested):
  * ``w_i`` is clipped to ``[0, m_i]``: a window never exceeds its video.
  * ``w_i = 0`` (e.g. ``⌊0.2 m⌋`` for ``m < 5``) is an empty window: start 0,
    no segment in the window. This matches the released code, which labels
    nothing in that case.
  * Ties resolve to the earliest start. Criteria closer than the float32
    round-off of their prefix sums (``(log2 S + 2) · eps · max|prefix|`` over
    the video) count as ties, so exactly tied windows are found despite
    round-off.
  * Padding videos (length 0) and padding rows are never in a window.
"""

from __future__ import annotations

import fractions
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from clapjax import packed
from clapjax.packed import Layout

#: Largest denominator used to read β as an exact fraction (0.2 → 1/5).
_MAX_DENOMINATOR = 10_000


class Window(NamedTuple):
    """One window per video.

    Attributes:
      start: ``[N] int32`` start position inside each video (0 if empty).
      width: ``[N] int32`` clipped width (0 = empty window).
      mask: ``[S] bool`` True for rows inside their video's window.
    """

    start: jax.Array
    width: jax.Array
    mask: jax.Array


def window_widths(lengths: ArrayLike, beta: float, rounding: str = "ceil") -> jax.Array:
    """Per-video widths ``⌈β m⌉`` or ``⌊β m⌋`` in exact integer arithmetic.

    ``β`` is read as the nearest fraction ``p/q`` with ``q <= 10000`` so that
    e.g. ``⌈0.2 · 15⌉ = 3`` (float arithmetic gives 4).

    Args:
      lengths: ``[..., N]`` int video lengths.
      beta: window fraction in ``[0, 1]`` (a Python float: static).
      rounding: ``"ceil"`` or ``"floor"``.

    Returns:
      ``[..., N] int32`` widths in ``[0, m]``.
    """
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"window fraction beta={beta!r} must be in [0, 1]")
    if rounding not in ("ceil", "floor"):
        raise ValueError(f"window rounding {rounding!r}; valid: ceil, floor")
    frac = fractions.Fraction(float(beta)).limit_denominator(_MAX_DENOMINATOR)
    p, q = frac.numerator, frac.denominator
    m = jnp.asarray(lengths, jnp.int32)
    whole = (m // q) * p
    rest = (m % q) * p  # < q * p <= 1e8: no int32 overflow
    extra = (rest + (q - 1)) // q if rounding == "ceil" else rest // q
    return jnp.clip(whole + extra, 0, m).astype(jnp.int32)


class _Prefix(NamedTuple):
    csum: jax.Array  # [S] global cumsum of centred values
    before: jax.Array  # [S] csum of the previous row (0 for row 0)
    mean: jax.Array  # [S] video mean of each row (0 for padding)
    tol: jax.Array  # [S] round-off scale of centred window sums of the row's video


def _prefix(values: ArrayLike, layout: Layout) -> _Prefix:
    values = jnp.asarray(values, jnp.float32)
    x = jnp.where(layout.segment_mask, values, 0.0)
    mean = packed.segment_sum(x, layout) / jnp.maximum(layout.lengths, 1).astype(jnp.float32)
    mean_row = packed.per_segment(mean, layout, fill=0.0)
    csum = jnp.cumsum(jnp.where(layout.segment_mask, x - mean_row, 0.0))
    before = jnp.concatenate([jnp.zeros(1, csum.dtype), csum[:-1]])
    size = jnp.maximum(jnp.abs(csum), jnp.abs(before))
    scale = jax.ops.segment_max(size, layout.video_of_segment, num_segments=layout.num_videos)
    depth = float(np.ceil(np.log2(max(values.shape[0], 2)))) + 2.0
    tol = depth * float(np.finfo(np.float32).eps) * packed.per_segment(jnp.maximum(scale, 0.0), layout, fill=0.0)
    return _Prefix(csum=csum, before=before, mean=mean_row, tol=tol)


def segmented_cumsum(values: ArrayLike, layout: Layout) -> jax.Array:
    """Inclusive cumulative sum restarting at every video (``[S] -> [S]``).

    Padding rows get 0.
    """
    pre = _prefix(values, layout)
    rows = jnp.arange(pre.csum.shape[0], dtype=jnp.int32)
    first = jnp.take(pre.before, jnp.maximum(rows - layout.position, 0))
    sums = pre.csum - first + (layout.position + 1).astype(jnp.float32) * pre.mean
    return jnp.where(layout.segment_mask, sums, 0.0)


def _row_widths(widths: ArrayLike, layout: Layout) -> tuple[jax.Array, jax.Array]:
    widths = jnp.clip(jnp.asarray(widths, jnp.int32), 0, layout.lengths)
    return packed.per_segment(widths, layout, fill=0), widths


def _centred_window_sums(pre: _Prefix, layout: Layout, row_w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Window sums of the centred values by start row, and valid starts."""
    lengths = packed.per_segment(layout.lengths, layout, fill=0)
    valid = layout.segment_mask & (row_w > 0) & (layout.position + row_w <= lengths)
    rows = jnp.arange(pre.csum.shape[0], dtype=jnp.int32)
    last = jnp.where(valid, rows + row_w - 1, rows)
    sums = jnp.take(pre.csum, last) - pre.before
    return jnp.where(valid, sums, 0.0), valid


def window_sums(values: ArrayLike, layout: Layout, widths: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Sum of every window, indexed by its start row.

    Args:
      values: ``[S]`` per-row values.
      layout: packed layout (``N`` videos, ``S`` rows).
      widths: ``[N]`` int window widths (clipped to ``[0, m]``).

    Returns:
      ``sums [S]``: sum of ``values`` over the window starting at each row
      (0 where invalid) and ``valid [S] bool``: the row is a valid start.
    """
    pre = _prefix(values, layout)
    row_w, _ = _row_widths(widths, layout)
    centred, valid = _centred_window_sums(pre, layout, row_w)
    return jnp.where(valid, centred + row_w * pre.mean, 0.0), valid


def window_means(values: ArrayLike, layout: Layout, widths: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Mean of every window, indexed by its start row (see :func:`window_sums`)."""
    sums, valid = window_sums(values, layout, widths)
    row_w, _ = _row_widths(widths, layout)
    return jnp.where(valid, sums / jnp.maximum(row_w, 1), 0.0), valid


def _select(criterion: jax.Array, valid: jax.Array, tol: jax.Array, layout: Layout, widths: jax.Array, largest: bool) -> Window:
    """Earliest start whose criterion is within ``tol`` of the best, per video."""
    n = layout.num_videos
    seg = layout.video_of_segment
    if largest:
        masked = jnp.where(valid, criterion, -jnp.inf)
        best = jax.ops.segment_max(masked, seg, num_segments=n)
    else:
        masked = jnp.where(valid, criterion, jnp.inf)
        best = jax.ops.segment_min(masked, seg, num_segments=n)
    best_rows = packed.per_segment(best, layout, fill=0)
    hit = valid & ((masked == best_rows) | (jnp.abs(masked - best_rows) <= tol))
    big = jnp.iinfo(jnp.int32).max
    start = jax.ops.segment_min(jnp.where(hit, layout.position, big), seg, num_segments=n)
    has_window = start < big
    start = jnp.where(has_window, start, 0).astype(jnp.int32)
    widths = jnp.where(has_window, widths, 0).astype(jnp.int32)
    return Window(start=start, width=widths, mask=window_mask(start, widths, layout))


def _mean_window(values: ArrayLike, layout: Layout, widths: ArrayLike, largest: bool) -> Window:
    pre = _prefix(values, layout)
    row_w, w = _row_widths(widths, layout)
    centred, valid = _centred_window_sums(pre, layout, row_w)
    # Same shift (the video mean) for every window of a video: compare centred means.
    denom = jnp.maximum(row_w, 1).astype(jnp.float32)
    return _select(centred / denom, valid, pre.tol / denom, layout, w, largest)


def window_mask(start: ArrayLike, widths: ArrayLike, layout: Layout) -> jax.Array:
    """``[S] bool`` rows with ``start_i <= position < start_i + w_i``."""
    row_start = packed.per_segment(jnp.asarray(start, jnp.int32), layout, fill=0)
    row_w = packed.per_segment(jnp.asarray(widths, jnp.int32), layout, fill=0)
    pos = layout.position
    return layout.segment_mask & (pos >= row_start) & (pos < row_start + row_w)


def window_argmin(values: ArrayLike, layout: Layout, widths: ArrayLike) -> Window:
    """Window of lowest mean per video (ties → earliest start).

    Args:
      values: ``[S]`` per-row values.
      layout: packed layout.
      widths: ``[N]`` int widths, clipped to ``[0, m]``.

    Returns:
      :class:`Window` (``start [N]``, ``width [N]``, ``mask [S]``).
    """
    return _mean_window(values, layout, widths, largest=False)


def window_argmax(values: ArrayLike, layout: Layout, widths: ArrayLike) -> Window:
    """Window of highest mean per video (ties → earliest start)."""
    return _mean_window(values, layout, widths, largest=True)


def _steps(values: ArrayLike, layout: Layout) -> jax.Array:
    """``|v_{t+1} - v_t|`` at row t (0 at a video's last row and padding)."""
    values = jnp.asarray(values, jnp.float32)
    nxt = jnp.concatenate([values[1:], values[-1:]])
    row_len = packed.per_segment(layout.lengths, layout, fill=0)
    has_next = layout.segment_mask & (layout.position + 1 < row_len)
    return jnp.where(has_next, jnp.abs(nxt - values), 0.0)


def total_variation_sums(values: ArrayLike, layout: Layout, widths: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """``Σ_{t=l}^{l+w-2} |v_{t+1} - v_t|`` for every window start ``l``.

    Returns ``(tv [S], valid [S] bool)``, indexed by start row like
    :func:`window_sums`. A window of width 1 has variation 0.
    """
    row_w, w = _row_widths(widths, layout)
    # A width-w window holds w-1 steps starting at its first row.
    step_sums, _ = window_sums(_steps(values, layout), layout, jnp.maximum(w - 1, 0))
    row_len = packed.per_segment(layout.lengths, layout, fill=0)
    valid = layout.segment_mask & (row_w > 0) & (layout.position + row_w <= row_len)
    return jnp.where(valid, step_sums, 0.0), valid


def window_max_total_variation(values: ArrayLike, layout: Layout, widths: ArrayLike) -> Window:
    """Window of largest total variation (the released code's rule).

    Ties → earliest start (``list.index(max(...))`` in the released code).
    """
    row_w, w = _row_widths(widths, layout)
    pre = _prefix(_steps(values, layout), layout)
    step_w = jnp.maximum(row_w - 1, 0)
    centred, _ = _centred_window_sums(pre, layout, step_w)
    row_len = packed.per_segment(layout.lengths, layout, fill=0)
    valid = layout.segment_mask & (row_w > 0) & (layout.position + row_w <= row_len)
    # TV = centred + (w-1)·mean; the shift is equal for all windows of a video.
    criterion = jnp.where(step_w > 0, centred, 0.0)
    return _select(criterion, valid, pre.tol, layout, w, largest=True)
