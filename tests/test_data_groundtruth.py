"""Frame ground truth: intervals, the real tables' end-of-video rule, gt files."""

import warnings

import numpy as np
import pytest

from clapjax import tables
from clapjax.data import (
    DataError,
    INTERVAL_CONVENTION,
    SyntheticConfig,
    frame_ground_truth,
    interval_labels,
    open_source,
    segment_labels_from_frames,
)


def test_interval_labels_hand_built():
    # 3 segments = 48 frames.
    inc = interval_labels([(5, 9), (40, 47)], 48, "inclusive", "v")
    want = np.zeros(48, np.uint8)
    want[5:10] = 1
    want[40:48] = 1
    np.testing.assert_array_equal(inc, want)
    half = interval_labels([(5, 9), (40, 47)], 48, "half_open", "v")
    want = np.zeros(48, np.uint8)
    want[5:9] = 1
    want[40:47] = 1
    np.testing.assert_array_equal(half, want)
    np.testing.assert_array_equal(segment_labels_from_frames(half), [1, 0, 1])
    np.testing.assert_array_equal(segment_labels_from_frames(interval_labels([(16, 16)], 48, "inclusive")), [0, 1, 0])


def test_end_of_video_rule():
    # Up to 15 frames of the dropped incomplete last clip are clipped...
    labels = interval_labels([(30, 48)], 48, "inclusive", "v")  # UCF-style end == n_frames
    assert labels[30:].all() and labels.size == 48
    labels = interval_labels([(30, 63)], 48, "half_open", "v")  # XD-style, 15 frames past
    assert labels[30:].all() and labels.size == 48
    # ...but not more, and never an interval that starts after the end.
    with pytest.raises(DataError, match=r"video 'clipX'.*30-64.*16 frames past"):
        interval_labels([(30, 64)], 48, "half_open", "clipX")
    with pytest.raises(DataError, match=r"video 'clipY'.*starts after the last frame"):
        interval_labels([(48, 50)], 48, "inclusive", "clipY")


@pytest.mark.parametrize("dataset", ["ucf", "xd"])
def test_real_tables(dataset):
    table = tables.load_table(dataset, "test")
    gt = frame_ground_truth(table)
    assert gt.dtype == np.uint8 and gt.size == int(table.n_frames.sum())
    # Normal videos are all 0, anomalous videos have anomalous frames.
    ends = np.cumsum(table.n_frames)
    starts = ends - table.n_frames
    for i in range(len(table)):
        assert gt[starts[i] : ends[i]].any() == bool(table.anomalous[i]), table.names[i]
    if dataset == "ucf":
        # Assault006 ends exactly at n_frames (RTFM stops at the last frame).
        i = table.index_of("Assault006_x264")
        seg = gt[starts[i] : ends[i]]
        assert seg[1185:].all() and not seg[:1185].any()
        # Inclusive: Abuse028 "165-240" covers 76 frames.
        assert int(gt[: table.n_frames[0]].sum()) == 240 - 165 + 1
    else:
        i = 0  # "157-180;185-244;250-360;582-810", half-open
        assert int(gt[: table.n_frames[0]].sum()) == (180 - 157) + (244 - 185) + (360 - 250) + (810 - 582)
    assert INTERVAL_CONVENTION[dataset] in ("inclusive", "half_open")


def _real_test_source(tmp_path, names_idx, lengths_override=None):
    table = tables.load_table("ucf", "test")
    names = [table.names[i] for i in names_idx]
    for k, i in enumerate(names_idx):
        m = int(table.n_segments[i]) if lengths_override is None else lengths_override[k]
        np.save(tmp_path / f"{table.names[i]}.npy", np.zeros((m, 2), np.float32))
    return open_source("ucf", "test", tmp_path, videos=names), table


def test_lengths_checked_against_features(tmp_path):
    src, table = _real_test_source(tmp_path, [0, 1])
    gt = frame_ground_truth(src)
    assert gt.size == 16 * int(table.n_segments[:2].sum())
    (tmp_path / "short").mkdir()
    bad, _ = _real_test_source(tmp_path / "short", [0, 1],
                               [int(table.n_segments[0]), int(table.n_segments[1]) - 1])
    with pytest.raises(DataError, match=rf"{table.names[1]}.*{int(table.n_segments[1]) - 1} segments.*n_frames"):
        frame_ground_truth(bad)


def test_concatenated_and_per_video_gt_files(tmp_path):
    src, table = _real_test_source(tmp_path, [0, 1, 2])
    want = frame_ground_truth(src)
    np.save(tmp_path / "gt.npy", want.astype(np.float64))
    np.testing.assert_array_equal(frame_ground_truth(src, tmp_path / "gt.npy"), want)
    np.testing.assert_array_equal(frame_ground_truth(src, want), want)
    # Too short (the common gt-ucf.npy problem): an error naming the video, no truncation.
    np.save(tmp_path / "short.npy", want[:-16])
    with pytest.raises(DataError, match=rf"short.npy.*16 frames short of the end of video '{table.names[2]}'"):
        frame_ground_truth(src, tmp_path / "short.npy")
    np.save(tmp_path / "long.npy", np.r_[want, 0])
    with pytest.raises(DataError, match=rf"1 frames more.*'{table.names[2]}'"):
        frame_ground_truth(src, tmp_path / "long.npy")
    bad = want.astype(np.float64)
    bad[3] = 0.5
    with pytest.raises(DataError, match="frame label 0.5"):
        frame_ground_truth(src, bad)
    # Per-video files.
    folder = tmp_path / "gt_dir"
    folder.mkdir()
    n = np.cumsum([0] + [16 * int(table.n_segments[i]) for i in range(3)])
    for k in range(3):
        np.save(folder / f"{table.names[k]}.npy", want[n[k] : n[k + 1]])
    np.testing.assert_array_equal(frame_ground_truth(src, folder), want)
    np.save(folder / f"{table.names[1]}.npy", want[n[1] : n[2] - 3])
    with pytest.raises(DataError, match=rf"{table.names[1]}.*{table.names[1]}.npy.*frame labels"):
        frame_ground_truth(src, folder)
    (folder / f"{table.names[2]}.npy").unlink()
    np.save(folder / f"{table.names[1]}.npy", want[n[1] : n[2]])
    with pytest.raises(DataError, match=rf"{table.names[2]}.*not found"):
        frame_ground_truth(src, folder)


def test_shortened_synthetic_intervals_agree():
    src = open_source("xd", "test", synthetic=SyntheticConfig.preset("tiny"), videos=list(range(12)))
    gt = frame_ground_truth(src)
    assert gt.size == 16 * int(src.lengths.sum())
    start = 0
    for i in range(len(src)):
        m = int(src.lengths[i])
        seg = segment_labels_from_frames(gt[start : start + 16 * m])
        np.testing.assert_array_equal(seg, src.true_segment_labels(i))
        assert seg.any() == bool(src.table.anomalous[src.table_index[i]])
        start += 16 * m


# ------------------------------------------------------------ a user's ground truth


def _anomalous_source(tmp_path):
    """Four anomalous and two normal UCF test videos of different lengths."""
    table = tables.load_table("ucf", "test")
    anomalous = [i for i in range(len(table)) if table.anomalous[i]][:4]
    normal = [i for i in range(len(table)) if not table.anomalous[i]][:2]
    src, _ = _real_test_source(tmp_path, anomalous + normal)
    return src, table


def test_user_gt_checked_against_the_annotations(tmp_path):
    src, table = _anomalous_source(tmp_path)
    want = frame_ground_truth(src)
    np.testing.assert_array_equal(frame_ground_truth(src, want), want)
    # Another convention (half-open ends) and segment-resolution ground truth agree
    # within the boundary tolerance.
    half = frame_ground_truth(src, convention="half_open")
    assert (half != want).sum() > 0
    np.testing.assert_array_equal(frame_ground_truth(src, half), half)
    seg = np.repeat(want.reshape(-1, 16).any(axis=1), 16).astype(np.uint8)
    frame_ground_truth(src, seg)
    # All-zero ground truth of the anomalous videos: refused, each video named.
    zero = np.zeros_like(want)
    np.save(tmp_path / "gt-zero.npy", zero)
    with pytest.raises(DataError) as info:
        frame_ground_truth(src, tmp_path / "gt-zero.npy")
    msg = str(info.value)
    assert "\n" not in msg and "gt-zero.npy" in msg and "for 4 of 6 videos" in msg
    for name in src.names[:4]:
        assert f"{name!r} (annotated" in msg
    assert "ground truth all 0" in msg and "splits/ucf/test_videos.csv" in msg
    # check="warn" accepts it with the same message; "off" says nothing.
    with pytest.warns(UserWarning, match="for 4 of 6 videos"):
        np.testing.assert_array_equal(frame_ground_truth(src, zero, check="warn"), zero)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame_ground_truth(src, zero, check="off")


def test_user_gt_in_the_wrong_video_order(tmp_path):
    src, table = _anomalous_source(tmp_path)
    want = frame_ground_truth(src)
    ends = np.cumsum(16 * src.lengths)
    parts = np.split(want, ends[:-1])
    shuffled = np.concatenate([parts[k] for k in (2, 0, 3, 1, 5, 4)])
    assert shuffled.size == want.size
    with pytest.raises(DataError, match=r"another video order\? It must follow the test list order"):
        frame_ground_truth(src, shuffled)
    # A per-video folder with one file swapped names the two videos.
    folder = tmp_path / "per_video"
    folder.mkdir()
    for name, p in zip(src.names, parts):
        np.save(folder / f"{name}.npy", p)
    np.save(folder / f"{src.names[4]}.npy", np.ones_like(parts[4]))
    with pytest.raises(DataError, match=rf"for 1 of 6 videos: '{src.names[4]}' \(normal; ground truth marks"):
        frame_ground_truth(src, folder)


def test_all_zero_gt_moves_a_perfect_detector(tmp_path):
    """Why the check exists: the whole UCF test table, a perfect segment scorer."""
    from clapjax.evaluation import frame_metrics

    table = tables.load_table("ucf", "test")
    gt = frame_ground_truth(table)
    scores = gt.reshape(-1, 16).mean(axis=1)
    assert frame_metrics(scores, table.n_segments, gt)["auc"] > 0.9999
    bad = gt.copy()
    ends = np.cumsum(table.n_frames)
    for i in np.flatnonzero(table.anomalous)[:77]:
        bad[ends[i] - table.n_frames[i]:ends[i]] = 0
    assert frame_metrics(scores, table.n_segments, bad)["auc"] < 0.98  # silently worse
    with pytest.raises(DataError, match="for 77 of 290 videos"):
        frame_ground_truth(table, bad)
