"""Packed ragged layout: construction, padding, stacking against plain loops."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clapjax import packed

lengths_st = st.lists(st.integers(1, 9), min_size=1, max_size=7)


@settings(max_examples=40, deadline=None)
@given(lengths=lengths_st, extra_videos=st.integers(0, 3), extra_rows=st.integers(0, 5))
def test_layout_matches_loop(lengths, extra_videos, extra_rows):
    n, s = len(lengths), sum(lengths)
    lay = packed.layout_from_lengths(lengths, n + extra_videos, s + extra_rows)
    video, position, offsets = [], [], []
    for i, m in enumerate(lengths):
        offsets.append(len(video))
        video += [i] * m
        position += list(range(m))
    np.testing.assert_array_equal(lay.offsets[:n], offsets)
    np.testing.assert_array_equal(lay.lengths[:n], lengths)
    np.testing.assert_array_equal(lay.lengths[n:], 0)
    np.testing.assert_array_equal(lay.video_of_segment[:s], video)
    np.testing.assert_array_equal(lay.video_of_segment[s:], n + extra_videos)
    np.testing.assert_array_equal(lay.position[:s], position)
    np.testing.assert_array_equal(lay.segment_mask, [True] * s + [False] * extra_rows)
    # Padding rows are dropped by segment sums.
    sums = packed.segment_sum(np.ones(s + extra_rows), lay)
    np.testing.assert_array_equal(sums[:n], lengths)
    np.testing.assert_array_equal(sums[n:], 0)


@settings(max_examples=25, deadline=None)
@given(lengths=lengths_st, d=st.integers(1, 4))
def test_pack_unpack_round_trip(lengths, d):
    rng = np.random.default_rng(0)
    videos = [rng.normal(size=(m, d)) for m in lengths]
    x, lay = packed.pack(videos, num_segments=sum(lengths) + 2)
    assert x.dtype == np.float32 and x.shape == (sum(lengths) + 2, d)
    np.testing.assert_array_equal(x[-2:], 0)
    for a, b in zip(packed.unpack(x, lay), videos):
        np.testing.assert_allclose(a, b.astype(np.float32))


def test_stack_pads_to_common_sizes_and_vmaps():
    a = packed.layout_from_lengths([3, 1])
    b = packed.layout_from_lengths([2, 2, 2])
    st_ = packed.stack([a, b])
    assert st_.lengths.shape == (2, 3) and st_.video_of_segment.shape == (2, 6)
    counts = jax.vmap(lambda lay: packed.segment_sum(lay.segment_mask.astype(int), lay))(st_)
    np.testing.assert_array_equal(counts, [[3, 1, 0], [2, 2, 2]])


def test_per_segment_broadcast_fills_padding():
    lay = packed.layout_from_lengths([2, 1], num_segments=5)
    out = packed.per_segment(np.array([7.0, 9.0]), lay, fill=-1)
    np.testing.assert_array_equal(out, [7, 7, 9, -1, -1])


def test_errors_are_clear():
    with pytest.raises(ValueError, match="num_segments=2 is smaller than the 3 segments"):
        packed.layout_from_lengths([3], num_segments=2)
    with pytest.raises(ValueError, match="num_videos=1 is smaller than the 2 videos"):
        packed.layout_from_lengths([1, 1], num_videos=1)
    with pytest.raises(ValueError, match="video 1 has shape"):
        packed.pack([np.zeros((2, 3)), np.zeros((2, 4))])
