"""Packed ragged layout for videos of different lengths.

All segments of all videos are concatenated along one axis (``S`` rows);
:class:`Layout` says where each video starts and how long it is. Every stage
works on this layout in O(S) without padding videos to the longest one.

Where a fixed shape is needed (jit with several participants, vmap over a
leading participant axis), a layout is padded with zero-length videos and with
padding segments. Padding segments belong to the out-of-range video index
``num_videos``: ``jax.ops.segment_sum(..., num_segments=num_videos)`` drops
them, and ``segment_mask`` is False for them.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


class Layout(NamedTuple):
    """Where each video lives in a packed segment axis.

    Attributes:
      offsets: ``[N] int32`` first packed row of each video.
      lengths: ``[N] int32`` segments per video (0 for padding videos).
      video_of_segment: ``[S] int32`` owning video of each row; ``N`` for
        padding rows.
      position: ``[S] int32`` index of each row inside its video (0 for padding).
      segment_mask: ``[S] bool`` True for real rows.
    """

    offsets: jax.Array
    lengths: jax.Array
    video_of_segment: jax.Array
    position: jax.Array
    segment_mask: jax.Array

    @property
    def num_videos(self) -> int:
        return self.lengths.shape[-1]

    @property
    def num_segments(self) -> int:
        return self.video_of_segment.shape[-1]

    @property
    def video_mask(self) -> jax.Array:
        """``[N] bool`` True for real (non-empty) videos."""
        return self.lengths > 0


def layout_from_lengths(
    lengths: ArrayLike,
    num_videos: int | None = None,
    num_segments: int | None = None,
) -> Layout:
    """Builds a layout from per-video lengths, optionally padded.

    Args:
      lengths: ``[n]`` positive segment counts, in packed order.
      num_videos: pad to this many videos (>= n) with zero-length videos.
      num_segments: pad to this many rows (>= sum(lengths)) with padding rows.
    """
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if (lengths < 0).any():
        raise ValueError(f"video lengths must be >= 0, got {int(lengths.min())}")
    n = lengths.size
    total = int(lengths.sum())
    n_pad = n if num_videos is None else int(num_videos)
    s_pad = total if num_segments is None else int(num_segments)
    if n_pad < n:
        raise ValueError(f"num_videos={n_pad} is smaller than the {n} videos given")
    if s_pad < total:
        raise ValueError(f"num_segments={s_pad} is smaller than the {total} segments given")
    if max(total, s_pad) >= 2**31 - 1:
        raise ValueError(f"{s_pad} segments do not fit int32 indices")
    full_lengths = np.zeros(n_pad, np.int64)
    full_lengths[:n] = lengths
    offsets = np.zeros(n_pad, np.int64)
    if n_pad > 1:
        np.cumsum(full_lengths[:-1], out=offsets[1:])
    video = np.full(s_pad, n_pad, np.int64)
    video[:total] = np.repeat(np.arange(n), lengths)
    position = np.zeros(s_pad, np.int64)
    position[:total] = np.arange(total) - np.repeat(offsets[:n], lengths)
    mask = np.zeros(s_pad, bool)
    mask[:total] = True
    return Layout(
        offsets=jnp.asarray(offsets, jnp.int32),
        lengths=jnp.asarray(full_lengths, jnp.int32),
        video_of_segment=jnp.asarray(video, jnp.int32),
        position=jnp.asarray(position, jnp.int32),
        segment_mask=jnp.asarray(mask),
    )


def pack(
    videos: Sequence[ArrayLike],
    num_videos: int | None = None,
    num_segments: int | None = None,
    dtype=np.float32,
) -> tuple[np.ndarray, Layout]:
    """Concatenates per-video arrays ``[m_i, ...]`` into ``[S, ...]`` plus a layout.

    Padding rows (if ``num_segments`` exceeds the total) are zeros.
    """
    if len(videos) == 0:
        raise ValueError("pack needs at least one video")
    arrays = [np.asarray(v, dtype=dtype) for v in videos]
    tail = arrays[0].shape[1:]
    for i, a in enumerate(arrays):
        if a.ndim < 1 or a.shape[1:] != tail:
            raise ValueError(
                f"video {i} has shape {a.shape}; expected (m, {', '.join(map(str, tail))})"
            )
    layout = layout_from_lengths([a.shape[0] for a in arrays], num_videos, num_segments)
    out = np.zeros((layout.num_segments, *tail), dtype)
    total = sum(a.shape[0] for a in arrays)
    if total:
        out[:total] = np.concatenate(arrays, axis=0)
    return out, layout


def unpack(values: ArrayLike, layout: Layout) -> list[np.ndarray]:
    """Inverse of :func:`pack` for the real videos (host-side, for tests/reports)."""
    values = np.asarray(values)
    offsets = np.asarray(layout.offsets)
    lengths = np.asarray(layout.lengths)
    return [values[o : o + m] for o, m in zip(offsets, lengths) if m > 0]


def pad(layout: Layout, num_videos: int, num_segments: int) -> Layout:
    """Pads an (unpadded or padded) layout to larger fixed sizes."""
    lengths = np.asarray(layout.lengths)
    # Trailing zero-length videos are padding; interior ones are kept.
    nz = np.flatnonzero(lengths > 0)
    real = lengths[: nz[-1] + 1] if nz.size else lengths[:0]
    return layout_from_lengths(real, num_videos, num_segments)


def stack(layouts: Sequence[Layout]) -> Layout:
    """Stacks layouts along a new leading axis, padding them to common sizes.

    The result has ``[K, N_max]`` and ``[K, S_max]`` fields and can be vmapped.
    """
    if not layouts:
        raise ValueError("stack needs at least one layout")
    n_max = max(lay.num_videos for lay in layouts)
    s_max = max(lay.num_segments for lay in layouts)
    padded = [pad(lay, n_max, s_max) for lay in layouts]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *padded)


def per_segment(values: ArrayLike, layout: Layout, fill=0) -> jax.Array:
    """Broadcasts per-video values ``[N, ...]`` to rows ``[S, ...]``.

    Padding rows get ``fill``.
    """
    values = jnp.asarray(values)
    gathered = jnp.take(values, layout.video_of_segment, axis=0, mode="clip")
    mask = layout.segment_mask.reshape(layout.segment_mask.shape + (1,) * (values.ndim - 1))
    return jnp.where(mask, gathered, jnp.asarray(fill, values.dtype))


def segment_sum(values: ArrayLike, layout: Layout) -> jax.Array:
    """Per-video sums of row values ``[S, ...] -> [N, ...]`` (padding rows ignored)."""
    return jax.ops.segment_sum(
        jnp.asarray(values), layout.video_of_segment, num_segments=layout.num_videos
    )
