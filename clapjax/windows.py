"""Sliding windows over packed ragged videos (pure jnp, jit/vmap-able).

Every video ``i`` of a :class:`~clapjax.packed.Layout` gets its own window
width ``w_i``. A window is identified by its start position ``l`` inside the
video and covers positions ``l .. l + w_i - 1``; valid starts are
``0 <= l <= m_i - w_i``. The window rules are those of CLAP's Algorithm 2
(paper: lowest mean p-value in Generate, highest mean model score in PLR) and
of the released code (largest total variation ``Σ|v_{t+1} - v_t|``, chosen
with ``list.index(max(...))``); see SPEC §2.4 and the §3 table. Every function
is O(S) in the packed length and never pads a video to the longest one.

Numerical contract (exact window criteria, float32/int32 only):
  * Each video's values are read as fixed-point numbers on a grid of
    ``2^(e_i - 48)``, where ``2^(e_i - 1) <= max_i |v| < 2^(e_i)`` (the
    video's own largest magnitude). Every float32 value with
    ``|v| >= 2^-24 · max_i |v|`` lies on that grid, so it is represented
    exactly; smaller values are truncated toward zero to the grid (error
    below ``2^-47 · max_i |v|``).
  * The fixed-point numbers are held as four signed 12-bit int32 digits.
    Window sums and total variations come from int32 prefix sums of the
    digits, which wrap modulo ``2^32`` but are exact for every window
    (a window's digit sums stay below ``2^30`` for widths up to
    :data:`MAX_WIDTH`). The criteria are therefore exact integers, compared
    lexicographically on their normalised digits.
  * Hence: ties resolve to the earliest start *exactly* (constant,
    quantised and duplicated values included); a video's window depends on
    its own values only, never on the videos packed before it, on padding or
    on its position; scaling a video's values by a power of two changes
    nothing. No float64 is needed (TPUs lack it).
  * :func:`window_argmin` first clips videos of non-negative values (p-values,
    densities) far above their best windows, which provably keeps the
    argmin; its grid then follows the best windows' scale, not the video's
    largest value.
  * Widths above :data:`MAX_WIDTH` (2^17: a video of 655,360 segments at
    β = 0.2) are outside the contract (digit sums could wrap).
  * Non-finite values are read as ``jnp.nan_to_num`` does (NaN → 0,
    ±inf → ±float32 max); the pipeline never passes them.
  * The float outputs (:func:`window_sums`, :func:`window_means`,
    :func:`total_variation_sums`, :func:`segmented_cumsum`) are the exact
    fixed-point results rounded to float32 (within 2 ulp).

Conventions (documented, tested):
  * ``w_i`` is clipped to ``[0, m_i]``: a window never exceeds its video.
  * ``w_i = 0`` (e.g. ``⌊0.2 m⌋`` for ``m < 5``) is an empty window: start 0,
    no segment in the window. This matches the released code, which labels
    nothing in that case.
  * Padding videos (length 0) and padding rows are never in a window.
"""

from __future__ import annotations

import fractions
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from clapjax import packed
from clapjax.packed import Layout

#: Largest denominator used to read β as an exact fraction (0.2 → 1/5).
_MAX_DENOMINATOR = 10_000
#: Fixed-point digits: four signed base-2^12 digits, 48 bits below the top.
_DIGIT_BITS = 12
_DIGITS = 4
_RADIX = 1 << _DIGIT_BITS
_GRID_BITS = _DIGIT_BITS * _DIGITS
#: Largest window width with exact criteria (digit sums stay below 2^30).
MAX_WIDTH = 1 << 17


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


class _Fixed(NamedTuple):
    """Per-row fixed-point values: ``Σ_k digits[k] · 2^(12 (3 - k)) · 2^(exponent - 48)``."""

    digits: jax.Array  # [4, S] int32, each in (-2^12, 2^12), sign of the value
    exponent: jax.Array  # [S] int32, the row's video exponent e_i


def _pow2(k: jax.Array) -> jax.Array:
    """``2^k`` as float32, exactly, for int32 ``k`` in ``[-126, 127]``."""
    return lax.bitcast_convert_type((k + 127) << 23, jnp.float32)


def _scale_pow2(x: jax.Array, k: jax.Array) -> jax.Array:
    """``x · 2^k`` for ``k`` in ``[-252, 254]`` in two exact steps."""
    half = k // 2
    return x * _pow2(half) * _pow2(k - half)


def _fixed_point(values: ArrayLike, layout: Layout) -> _Fixed:
    """Values on their video's ``2^(e_i - 48)`` grid (see module docstring)."""
    x = jnp.nan_to_num(jnp.asarray(values, jnp.float32))
    x = jnp.where(layout.segment_mask, x, 0.0)
    largest = jax.ops.segment_max(jnp.abs(x), layout.video_of_segment, num_segments=layout.num_videos)
    largest = jnp.maximum(largest, 0.0)  # empty videos: -inf → 0
    # Biased float32 exponent; subnormal maxima use the smallest normal
    # exponent, whose grid 2^-173 still holds every subnormal exactly.
    biased = (lax.bitcast_convert_type(largest, jnp.int32) >> 23) & 255
    exponent = packed.per_segment(jnp.maximum(biased, 1) - 126, layout, fill=0)
    frac = _scale_pow2(jnp.abs(x), -exponent)  # in [0, 1), exact
    digits = []
    for _ in range(_DIGITS):
        frac = frac * _RADIX  # exact: a power of two
        digit = jnp.floor(frac)
        frac = frac - digit  # exact: the fractional part of a float
        digits.append(digit)
    sign = jnp.where(x < 0, -1, 1).astype(jnp.int32)
    return _Fixed(jnp.stack(digits).astype(jnp.int32) * sign, exponent)


def _normalise(digits: jax.Array) -> jax.Array:
    """Carries digits ``[4, ...]`` so digits 1..3 are in ``[0, 2^12)``.

    The represented integer is unchanged; the top digit keeps the sign, so
    normalised numbers compare lexicographically.
    """
    out = [None] * _DIGITS
    carry = jnp.zeros_like(digits[0])
    for k in range(_DIGITS - 1, 0, -1):
        total = digits[k] + carry
        out[k] = total & (_RADIX - 1)
        carry = total >> _DIGIT_BITS  # arithmetic shift: floor division
    out[0] = digits[0] + carry
    return jnp.stack(out)


def _exclusive_prefix(digits: jax.Array) -> jax.Array:
    """``[4, S] -> [4, S + 1]`` sums of rows ``< j``, modulo 2^32 (int32 bits)."""
    wrapped = lax.bitcast_convert_type(digits, jnp.uint32)  # unsigned adds wrap by definition
    # Integer addition modulo 2^32 is associative: any scan order (XLA may
    # use a tree) gives the same bits.
    csum = lax.cumsum(wrapped, axis=1)
    return jnp.concatenate([jnp.zeros((_DIGITS, 1), jnp.uint32), csum], axis=1)


def _range_sums(prefix: jax.Array, lo: jax.Array | None, count: jax.Array) -> jax.Array:
    """Exact digit sums of rows ``lo .. lo + count - 1`` (``[4, S]`` int32).

    ``lo=None`` means every row starts its own range (``lo = row``).
    """
    size = prefix.shape[1] - 1
    if lo is None:
        lo = jnp.arange(size, dtype=jnp.int32)
        first = prefix[:, :size]
    else:
        first = jnp.take(prefix, lo, axis=1)
    diff = jnp.take(prefix, lo + count, axis=1) - first
    return lax.bitcast_convert_type(diff, jnp.int32)


def _to_float(digits: jax.Array, exponent: jax.Array) -> jax.Array:
    """float32 of normalised fixed-point digits (two roundings: within 2 ulp)."""
    high = digits[0].astype(jnp.float32) * float(2 ** (3 * _DIGIT_BITS))
    middle = (digits[1] * _RADIX + digits[2]).astype(jnp.float32) * float(_RADIX)  # exact: < 2^36
    value = (high + middle) + digits[3].astype(jnp.float32)
    return _scale_pow2(value, exponent - _GRID_BITS)


def _row_widths(widths: ArrayLike, layout: Layout) -> tuple[jax.Array, jax.Array]:
    widths = jnp.clip(jnp.asarray(widths, jnp.int32), 0, layout.lengths)
    return packed.per_segment(widths, layout, fill=0), widths


def _valid_starts(layout: Layout, row_w: jax.Array) -> jax.Array:
    lengths = packed.per_segment(layout.lengths, layout, fill=0)
    return layout.segment_mask & (row_w > 0) & (layout.position + row_w <= lengths)


def _window_digit_sums(fixed: _Fixed, layout: Layout, row_w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Normalised exact window sums ``[4, S]`` by start row, and valid starts."""
    valid = _valid_starts(layout, row_w)
    sums = _range_sums(_exclusive_prefix(fixed.digits), None, jnp.where(valid, row_w, 0))
    return _normalise(jnp.where(valid, sums, 0)), valid


def _step_digits(fixed: _Fixed, layout: Layout) -> jax.Array:
    """Exact ``|v_{t+1} - v_t|`` digits at row t (0 at a video's last row and padding)."""
    digits = fixed.digits
    nxt = jnp.concatenate([digits[:, 1:], digits[:, -1:]], axis=1)
    diff = _normalise(nxt - digits)  # same video (same grid) wherever it is used
    step = jnp.where(diff[0] < 0, _normalise(-diff), diff)
    row_len = packed.per_segment(layout.lengths, layout, fill=0)
    has_next = layout.segment_mask & (layout.position + 1 < row_len)
    return jnp.where(has_next, step, 0)


def _variation_digit_sums(fixed: _Fixed, layout: Layout, row_w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Normalised exact total variations ``[4, S]`` by start row, and valid starts."""
    valid = _valid_starts(layout, row_w)
    # A width-w window holds the w - 1 steps starting at its first row.
    count = jnp.where(valid, jnp.maximum(row_w - 1, 0), 0)
    sums = _range_sums(_exclusive_prefix(_step_digits(fixed, layout)), None, count)
    return _normalise(jnp.where(valid, sums, 0)), valid


def segmented_cumsum(values: ArrayLike, layout: Layout) -> jax.Array:
    """Inclusive cumulative sum restarting at every video (``[S] -> [S]``).

    Exact on the video's fixed-point grid, then rounded to float32 (see the
    module docstring). Padding rows get 0.
    """
    fixed = _fixed_point(values, layout)
    first = jnp.arange(layout.num_segments, dtype=jnp.int32) - layout.position
    sums = _range_sums(_exclusive_prefix(fixed.digits), first, layout.position + 1)
    out = _to_float(_normalise(sums), fixed.exponent)
    return jnp.where(layout.segment_mask, out, 0.0)


def window_sums(values: ArrayLike, layout: Layout, widths: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Sum of every window, indexed by its start row.

    Args:
      values: ``[S]`` per-row values.
      layout: packed layout (``N`` videos, ``S`` rows).
      widths: ``[N]`` int window widths (clipped to ``[0, m]``, at most
        :data:`MAX_WIDTH`).

    Returns:
      ``sums [S] float32``: sum of ``values`` over the window starting at each
      row (0 where invalid; exact fixed-point sum rounded to float32) and
      ``valid [S] bool``: the row is a valid start.
    """
    fixed = _fixed_point(values, layout)
    row_w, _ = _row_widths(widths, layout)
    sums, valid = _window_digit_sums(fixed, layout, row_w)
    return jnp.where(valid, _to_float(sums, fixed.exponent), 0.0), valid


def window_means(values: ArrayLike, layout: Layout, widths: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Mean of every window, indexed by its start row (see :func:`window_sums`)."""
    sums, valid = window_sums(values, layout, widths)
    row_w, _ = _row_widths(widths, layout)
    return jnp.where(valid, sums / jnp.maximum(row_w, 1), 0.0), valid


def _select(criterion: jax.Array, valid: jax.Array, layout: Layout, widths: jax.Array, largest: bool) -> Window:
    """Earliest start with the best exact criterion (normalised digits ``[4, S]``) per video.

    Lexicographic order of the normalised digits is the order of the
    integers they represent; it is compared on three int32 keys.
    """
    n = layout.num_videos
    seg = layout.video_of_segment
    keys = (criterion[0], criterion[1] * _RADIX + criterion[2], criterion[3])
    lowest = jnp.iinfo(jnp.int32).min
    hit = valid
    for key in keys:
        key = key if largest else -key  # |key| < 2^31: negation is exact
        masked = jnp.where(hit, key, lowest)
        best = jax.ops.segment_max(masked, seg, num_segments=n)
        hit = hit & (masked == packed.per_segment(best, layout, fill=lowest))
    big = jnp.iinfo(jnp.int32).max
    start = jax.ops.segment_min(jnp.where(hit, layout.position, big), seg, num_segments=n)
    has_window = start < big
    start = jnp.where(has_window, start, 0).astype(jnp.int32)
    widths = jnp.where(has_window, widths, 0).astype(jnp.int32)
    return Window(start=start, width=widths, mask=window_mask(start, widths, layout))


def _clip_for_argmin(values: jax.Array, layout: Layout, widths: jax.Array, peak: jax.Array | None) -> jax.Array:
    """Clips non-negative videos above ``T_i`` without changing their argmin.

    ``M*_i`` is the smallest window maximum of video ``i``; the window
    attaining it has sum ``<= w_i M*_i``, so the lowest sum is too. ``T_i``
    is a power of two ``> 2 w_i M*_i``: a window holding a value above it
    sums to more than the optimum before and after clipping to ``T_i``.
    Windows within ``[0, T_i]`` are untouched, so the argmin and its ties
    are exact, and the fixed-point grid follows ``T_i`` instead of the
    video's largest value (far-tail windows stay distinguishable).
    """
    x = jnp.where(layout.segment_mask, jnp.nan_to_num(values), 0.0)
    n = layout.num_videos
    seg = layout.video_of_segment
    if peak is None:
        peak, valid = window_max(x, layout, widths)
    else:
        valid = _valid_starts(layout, packed.per_segment(widths, layout, fill=0))
    minimax = jax.ops.segment_min(jnp.where(valid, peak, jnp.inf), seg, num_segments=n)
    lowest = jax.ops.segment_min(jnp.where(layout.segment_mask, x, jnp.inf), seg, num_segments=n)
    bound = jnp.where(jnp.isfinite(minimax), minimax, 0.0) * jnp.clip(widths, 1, None).astype(jnp.float32)
    biased = (lax.bitcast_convert_type(jnp.abs(bound), jnp.int32) >> 23) & 255  # bound < 2^(biased-126)
    clip = (lowest >= 0) & jnp.isfinite(minimax) & (biased <= 252)
    threshold = _pow2(jnp.minimum(biased, 252) - 125)  # 2^(biased-125) > 2 · bound
    row_clip = packed.per_segment(clip, layout, fill=False)
    row_threshold = packed.per_segment(threshold, layout, fill=1.0)
    return jnp.where(row_clip, jnp.minimum(x, row_threshold), x)


def _mean_window(values: ArrayLike, layout: Layout, widths: ArrayLike, largest: bool, peak=None) -> Window:
    row_w, w = _row_widths(widths, layout)
    if not largest:
        values = _clip_for_argmin(jnp.asarray(values, jnp.float32), layout, w, peak)
    # One width per video: comparing window sums compares window means.
    sums, valid = _window_digit_sums(_fixed_point(values, layout), layout, row_w)
    return _select(sums, valid, layout, w, largest)


def window_mask(start: ArrayLike, widths: ArrayLike, layout: Layout) -> jax.Array:
    """``[S] bool`` rows with ``start_i <= position < start_i + w_i``."""
    row_start = packed.per_segment(jnp.asarray(start, jnp.int32), layout, fill=0)
    row_w = packed.per_segment(jnp.asarray(widths, jnp.int32), layout, fill=0)
    pos = layout.position
    return layout.segment_mask & (pos >= row_start) & (pos < row_start + row_w)


def window_argmin(values: ArrayLike, layout: Layout, widths: ArrayLike, window_peak: ArrayLike | None = None) -> Window:
    """Window of lowest mean per video, ties → earliest start (exact; paper
    Algorithm 2, Generate: the window of lowest mean p-value).

    In a video whose values are all ``>= 0`` (p-values, densities), values
    far above the best windows are first clipped to a power of two that
    provably keeps the argmin, so the exact grid is relative to the best
    window's scale rather than to the video's largest value: a window of
    p ~ 1e-30 is still told apart from one of 1e-25 next to p ~ 0.5.

    Args:
      values: ``[S]`` per-row values.
      layout: packed layout.
      widths: ``[N]`` int widths, clipped to ``[0, m]``, at most :data:`MAX_WIDTH`.
      window_peak: optional ``[S]`` :func:`window_max` of ``values`` (or any
        upper bound of it, e.g. from a monotone transform of the values),
        to save recomputing it.

    Returns:
      :class:`Window` (``start [N]``, ``width [N]``, ``mask [S]``).
    """
    return _mean_window(values, layout, widths, largest=False, peak=window_peak)


def window_argmax(values: ArrayLike, layout: Layout, widths: ArrayLike) -> Window:
    """Window of highest mean per video, ties → earliest start (exact; paper
    Algorithm 2, Update: the window of highest mean model score)."""
    return _mean_window(values, layout, widths, largest=True)


def total_variation_sums(values: ArrayLike, layout: Layout, widths: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """``Σ_{t=l}^{l+w-2} |v_{t+1} - v_t|`` for every window start ``l``.

    Returns ``(tv [S] float32, valid [S] bool)``, indexed by start row like
    :func:`window_sums` (exact fixed-point variation rounded to float32). A
    window of width 1 has variation 0.
    """
    fixed = _fixed_point(values, layout)
    row_w, _ = _row_widths(widths, layout)
    tv, valid = _variation_digit_sums(fixed, layout, row_w)
    return jnp.where(valid, _to_float(tv, fixed.exponent), 0.0), valid


def window_max_total_variation(values: ArrayLike, layout: Layout, widths: ArrayLike) -> Window:
    """Window of largest total variation ``Σ|v_{t+1} - v_t|`` (the released
    code's rule for Generate and its dormant PLR), ties → earliest start
    (``list.index(max(...))`` in the released code); exact (module docstring).
    """
    row_w, w = _row_widths(widths, layout)
    tv, valid = _variation_digit_sums(_fixed_point(values, layout), layout, row_w)
    return _select(tv, valid, layout, w, largest=True)


def window_max(values: ArrayLike, layout: Layout, widths: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Largest value of every window, indexed by its start row (exact).

    Sparse table restricted to each video: level ``k`` holds the maximum of
    rows ``i .. i + 2^k - 1`` (rows past the video's end excluded); a window
    of width ``w`` with ``2^k <= w < 2^(k+1)`` is the union of the level-k
    ranges at ``l`` and ``l + w - 2^k``. ``O(S log MAX_WIDTH)`` elementwise
    work in ``log2`` static levels (cheap to compile), no padding per video.

    Args:
      values: ``[S]`` per-row values.
      layout: packed layout.
      widths: ``[N]`` int widths, clipped to ``[0, m]``, at most :data:`MAX_WIDTH`.

    Returns:
      ``(max [S] float32, valid [S] bool)``; invalid starts get ``-inf``.
    """
    x = jnp.where(layout.segment_mask, jnp.asarray(values, jnp.float32), -jnp.inf)
    size = layout.num_segments
    row_w, _ = _row_widths(widths, layout)
    valid = _valid_starts(layout, row_w)
    width = jnp.maximum(row_w, 1)
    level = (31 - lax.clz(width)).astype(jnp.int32)  # floor(log2 w)
    room = packed.per_segment(layout.lengths, layout, fill=0) - layout.position  # rows left in the video
    levels = max(1, int(np.ceil(np.log2(max(min(MAX_WIDTH, size), 2)))))
    span = x  # level-k maxima
    head = x  # level-(level of the row's video) maxima
    for k in range(levels):
        step = 1 << k
        if step >= size:
            break
        ahead = jnp.concatenate([span[step:], jnp.full((step,), -jnp.inf, jnp.float32)])
        span = jnp.maximum(span, jnp.where(room > step, ahead, -jnp.inf))
        head = jnp.where(level == k + 1, span, head)
    rows = jnp.arange(size, dtype=jnp.int32)
    # Row l + w - 2^k is in the same video (same level) for a valid start.
    tail = jnp.take(head, jnp.where(valid, rows + width - (1 << level), rows))
    return jnp.where(valid, jnp.maximum(head, tail), -jnp.inf), valid
