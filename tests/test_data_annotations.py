"""Annotation readers on the shared real files: frame counts and interval conventions.

``ucf_crime_test_annotation_with_frame_counts.txt`` gives every UCF-Crime test
video's frame count: the checks below tie the readers, the shipped table and
Sultani's compressed features to it.
"""

import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st

from clapjax import tables
from clapjax.data import (
    DataError,
    merge_annotations,
    read_annotations,
    sultani_segment_frames,
)
from clapjax.data.sources import NpyFilesSource
from real_data import REAL, needs_real

UCF_TEST = tables.load_table("ucf", "test")


@needs_real
def test_sultani_file_matches_the_shipped_ucf_table():
    ann = read_annotations(REAL / "annotations" / "ucf_crime_temporal_annotation.txt")
    assert ann.format == "sultani" and ann.convention == "inclusive" and len(ann) == 290
    assert set(ann.names) == set(UCF_TEST.names)
    for i, name in enumerate(UCF_TEST.names):
        a = ann.videos[name]
        assert a.intervals == UCF_TEST.anomaly_frames[i], name
        assert a.anomalous == bool(UCF_TEST.anomalous[i]) and a.label == UCF_TEST.classes[i]
        assert a.frames is None


@needs_real
def test_frame_counts_file_conventions():
    counts = read_annotations(REAL / "annotations" / "ucf_crime_test_annotation_with_frame_counts.txt")
    plain = read_annotations(REAL / "annotations" / "ucf_crime_temporal_annotation.txt")
    assert counts.format == "sultani_frames" and len(counts) == 290
    ceil_rows = 0
    for name, a in counts.videos.items():
        assert a.intervals == plain.videos[name].intervals, name
        m = int(UCF_TEST.n_segments[UCF_TEST.index_of(name)])
        # The I3D release pads the incomplete last clip: ceil(F / 16) rows for all 290
        # (floor for the 20 videos whose F is a multiple of 16).
        assert m == -(-a.frames // 16), name
        ceil_rows += a.frames % 16 != 0
        for s, e in a.intervals:
            # 0-based inclusive: every interval starts inside the video; ends reach at
            # most 2 frames past its last frame (5 annotations) - annotation slack that
            # the 15-frame tail rule of clapjax.data.groundtruth absorbs.
            assert 0 <= s < a.frames and e - (a.frames - 1) <= 3, (name, s, e, a.frames)
    assert ceil_rows == 270
    late = sorted((n, e - (a.frames - 1)) for n, a in counts.videos.items()
                  for _, e in a.intervals if e > a.frames - 1)
    assert [n for n, _ in late] == ["Arson011_x264", "Arson016_x264", "Assault006_x264", "Explosion033_x264",
                                    "Fighting003_x264", "Shooting015_x264", "Shooting046_x264"]


@needs_real
def test_extended_roadaccidents_annotations():
    ann = read_annotations(REAL / "annotations" / "extended_roadaccidents_temporal_annotation.txt")
    assert len(ann) == 49
    assert ann.videos["RoadAccidents320_x264"].intervals == ((30, 110), (250, 370))
    assert not ann.videos["Normal_Videos_955_x264"].anomalous
    have = {p.stem for p in (REAL / "ucf_crime" / "c3d_extended" / "32seg").glob("*.npy")}
    assert len(have) == 24 and have <= set(ann.names)
    assert sum(ann.videos[n].anomalous for n in have) == 14


@needs_real
def test_ucsd_mat_is_one_based_inclusive():
    ann = read_annotations(REAL / "ucsd_ped2" / "ped2.mat")
    assert ann.format == "ucsd_mat" and ann.numbered and len(ann) == 12
    # Entry k annotates the video whose name ends in k: folders 01..06 here.
    frames = {d.name: len(list(d.glob("*.jpg"))) for d in (REAL / "ucsd_ped2" / "frames").iterdir()}
    assert frames == {"01": 180, "02": 180, "03": 150, "04": 180, "05": 150, "06": 180}
    for name, f in frames.items():
        a = ann.find(name)
        assert a is ann.find(f"Test{int(name):03d}") and a.anomalous
        for s, e in a.intervals:
            assert 0 <= s <= e <= f - 1, (name, s, e, f)
    # gt{1} = [61; 180] (MATLAB, 1-based) is 0-based frames 60..179: the anomaly runs
    # to the last frame of video 01 exactly; read 0-based it would run one frame past.
    assert ann.find("01").intervals == ((60, 179),)
    assert ann.find("03").intervals == ((0, 145),)
    assert ann.find("Test013") is None


def _matlab_owner(m, f):
    """Segment owning each frame, in the order Evaluate_Anomaly_Detector.m writes them."""
    n = f // 16
    b = [int(np.floor(1 + (n - 1) * i / m + 0.5)) for i in range(m + 1)]
    owner = np.full(f, -1)
    for j in range(m):
        ss, ee = b[j], b[j + 1] - 1
        if ee < ss:
            owner[(ss - 1) * 16:(ss - 1) * 16 + 16] = j
        else:
            owner[(ss - 1) * 16:ee * 16] = j
    # Documented deviation: the last clip and the leftover frames (never
    # written by the original) belong to the last segment.
    owner[(n - 1) * 16:] = m - 1
    return owner

@settings(max_examples=200, deadline=None)
@given(m=st.sampled_from([1, 2, 31, 32, 33, 64]) | st.integers(1, 80), f=st.integers(16, 20_000))
def test_sultani_segment_frames_against_the_matlab_assignment(m, f):
    counts = sultani_segment_frames(m, f)
    assert counts.sum() == f and (counts >= 0).all() and counts.size == m
    np.testing.assert_array_equal(np.repeat(np.arange(m), counts), _matlab_owner(m, f))


def test_sultani_segment_frames_edges():
    for m, f in [(32, 16), (32, 450), (32, 505), (32, 512), (32, 1748), (64, 347), (32, 100_000)]:
        np.testing.assert_array_equal(np.repeat(np.arange(m), sultani_segment_frames(m, f)), _matlab_owner(m, f))
    with pytest.raises(DataError, match="'v'.*15 frames hold no 16-frame clip"):
        sultani_segment_frames(32, 15, "v")


@needs_real
def test_sultani_mapping_checked_on_the_real_features():
    counts = read_annotations(REAL / "annotations" / "ucf_crime_test_annotation_with_frame_counts.txt")
    folder = REAL / "ucf_crime" / "c3d_sultani_txt"
    for name, expect in (("Normal_Videos_006_x264", 450), ("RoadAccidents002_x264", 347),
                         ("Explosion025_x264", 505)):
        frames = counts.videos[name].frames
        assert frames == expect
        x = NpyFilesSource([[folder / f"{name}.txt"]], [name], "ucf", "test").read(0)[:, 0]
        same = {j for j in range(31) if np.allclose(x[j], x[j + 1], atol=1e-6)}

        def predicted(n):
            b = 1 + (2 * (n - 1) * np.arange(33) + 32) // 64
            clips = [(b[j], max(b[j], b[j + 1] - 1)) for j in range(32)]
            return {j for j in range(31) if clips[j] == clips[j + 1]}

        n = frames // 16
        # Segments that average the same single clip hold identical rows, with
        # n = floor(F / 16) clips (C3D drops the incomplete last clip) ...
        assert predicted(n) and predicted(n) <= same, name
        # ... and no neighbouring clip count explains the rows.
        assert not predicted(n - 1) <= same and not predicted(n + 1) <= same, name
        if name != "Explosion025_x264":  # whose last two clips are identical footage
            assert predicted(n) == same
        # The frame mapping agrees: a segment owning 0 frames repeats its successor.
        c = sultani_segment_frames(32, frames, name)
        assert {j for j in range(31) if c[j] == 0} <= same


def _write_mat(path, cells):
    cell = np.empty((1, len(cells)), dtype=object)
    for k, c in enumerate(cells):
        cell[0, k] = np.asarray(c, np.uint8)
    scipy.io.savemat(path, {"gt": cell})


def test_reader_errors_name_file_line_and_field(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("v1.mp4  Abuse  10  20  -1  -1\nv2.mp4  Normal  -1  -1  -1  -1\n")
    ann = read_annotations(f)
    assert ann.videos["v1"].intervals == ((10, 20),) and not ann.videos["v2"].anomalous
    half = read_annotations(f, convention="half_open")
    assert half.convention == "half_open"
    one = read_annotations(f, convention="inclusive_1based")
    assert one.videos["v1"].intervals == ((9, 19),) and one.convention == "inclusive"
    for text, match in [
        ("v1 Abuse 10 20 -1\n", r"a.txt line 1: video 'v1': 3 interval values"),
        ("v1 Abuse 10 x\n", r"a.txt line 1: video 'v1': interval field 'x'"),
        ("v1 Abuse 20 10\n", r"a.txt line 1: video 'v1': interval 20-10 ends before"),
        ("v1 Abuse 10 -1\n", r"one bound is -1"),
        ("v1 Normal 10 20\n", r"class 'Normal' but anomaly intervals"),
        ("v1 Abuse 1 2\nv1 Abuse 1 2\n", r"a.txt line 2: video 'v1' is annotated twice \(also .*line 1\)"),
        ("a/v1.mp4 100 Abuse 120 130\n", r"line 1: video 'v1': interval 120-130 starts after the video's 100 frames"),
        ("1 2 3\n", r"cannot tell the annotation format"),
    ]:
        f.write_text(text)
        with pytest.raises(DataError, match=match):
            read_annotations(f)
    with pytest.raises(DataError, match="annotation file not found"):
        read_annotations(tmp_path / "missing.txt")
    _write_mat(tmp_path / "g.mat", [[[61], [180]], [[1, 100], [20, 120]], np.zeros((0, 0))])
    mat = read_annotations(tmp_path / "g.mat")
    assert mat.find("Test002").intervals == ((0, 19), (99, 119)) and not mat.find("03").anomalous
    _write_mat(tmp_path / "bad.mat", [[[0], [10]]])
    with pytest.raises(DataError, match=r"bad.mat entry gt\{1\}: interval 0-10 starts at frame 0; 1-based"):
        read_annotations(tmp_path / "bad.mat")
    with pytest.raises(DataError, match=r"annotates both video '01' and video 'Test001'"):
        mat.resolve(["01", "Test001"])
    g = tmp_path / "g.txt"
    g.write_text("v1 Abuse 10 21\n")
    f.write_text("v1 Abuse 10 20\n")
    with pytest.raises(DataError, match=r"video 'v1': annotated differently in .*a.txt line 1 and .*g.txt line 1"):
        merge_annotations([read_annotations(f), read_annotations(g)])
