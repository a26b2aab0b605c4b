"""Custom datasets: the extractor's layout, UCSD's .mat, Sultani's compressed C3D, splits."""

import json
import warnings

import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st

from clapjax import data, splits
from clapjax.data import DataError, custom_dataset, frame_ground_truth, read_manifest, read_video_list
from clapjax.evaluation import frame_metrics
from real_data import REAL, needs_real

CROPS, D = 2, 16
#: name -> (segments, dropped frames, annotation line)
VIDEOS = {
    "cam1_0001": (12, 5, "cam1_0001.mp4 Fighting 40 70 150 190"),
    "cam1_0002": (9, 0, "cam1_0002.mp4 Normal -1 -1 -1 -1"),
    "cam2_0001": (15, 11, "cam2_0001.mp4 Theft 241 248 -1 -1"),  # ends in the dropped tail
    "cam2_0002": (7, 3, "cam2_0002.mp4 Normal -1 -1"),
    "cam3_0001": (10, 0, ""),  # not annotated: a training video
    "cam3_0002": (11, 2, ""),
}


def _extracted(folder, videos=VIDEOS, seed=0, manifest=True):
    """Tiny files in the extractor's layout: <video>.npy (m, crops, D) float32 + manifest.json."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = {}
    for name, (m, dropped, _) in videos.items():
        np.save(folder / f"{name}.npy", rng.standard_normal((m, CROPS, D)).astype(np.float32))
        entries[name] = {"frames": 16 * m + dropped, "fps": 25.0, "segments": m, "dropped_frames": dropped}
    if manifest:
        (folder / "manifest.json").write_text(json.dumps({"backbone": "i3d", "videos": entries}))
    return folder


def _annotations(path, videos=VIDEOS):
    path.write_text("\n".join(line for _, _, line in videos.values() if line) + "\n")
    return path


def test_extractor_layout_end_to_end(tmp_path):
    feats = _extracted(tmp_path / "feats")
    ann = _annotations(tmp_path / "ann.txt")
    ds = custom_dataset(feats, annotations=ann)
    # Annotated videos are the test videos, the others train.
    assert ds.test_table.names == ("cam1_0001", "cam1_0002", "cam2_0001", "cam2_0002")
    assert ds.train_table.names == ("cam3_0001", "cam3_0002")
    assert not ds.train_table.labels_known  # unannotated training videos
    assert (ds.train.feature_dim, ds.train.crops) == (D, CROPS)
    assert ds.test_table.n_frames.tolist() == [16 * 12, 16 * 9, 16 * 15, 16 * 7]
    assert ds.test_table.video_frames.tolist() == [16 * 12 + 5, 16 * 9, 16 * 15 + 11, 16 * 7 + 3]
    with pytest.warns(UserWarning, match=r"cam2_0001.*241-248 lies wholly in the last 11 frames"):
        gt = frame_ground_truth(ds.test)
    assert gt.size == 16 * (12 + 9 + 15 + 7)
    want = np.zeros(gt.size, np.uint8)
    want[40:71] = 1
    want[150:191] = 1  # 0-based inclusive
    np.testing.assert_array_equal(gt, want)  # cam2_0001's interval has no features: not evaluated
    assert ds.test.read(0).shape == (12, CROPS, D)
    # Transductive: every video trains, the test videos included (unlabelled).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = custom_dataset(feats, annotations=ann, transductive=True)
    assert len(both.train_table) == 6 and any("transductive" in n for n in both.notes)
    # Explicit lists.
    (tmp_path / "train.txt").write_text("# training\ncam3_0002\ncam1_0002.mp4\n")
    (tmp_path / "test.txt").write_text("feats/cam1_0001.npy\n")
    listed = custom_dataset(feats, annotations=ann, train_list=tmp_path / "train.txt",
                            test_list=tmp_path / "test.txt")
    assert listed.train_table.names == ("cam3_0002", "cam1_0002")
    assert listed.test_table.names == ("cam1_0001",)


def test_custom_errors_name_file_video_and_field(tmp_path):
    feats = _extracted(tmp_path / "feats")
    ann = _annotations(tmp_path / "ann.txt")
    (tmp_path / "test.txt").write_text("cam1_0001\ncam3_0001\n")
    with pytest.raises(DataError, match=r"test video 'cam3_0001' \(file .*cam3_0001.npy\) has no annotation in .*ann.txt"):
        custom_dataset(feats, annotations=ann, test_list=tmp_path / "test.txt")
    (tmp_path / "test.txt").write_text("cam1_0001\nnope\n")
    with pytest.raises(DataError, match=r"test video 'nope' .*test.txt.* has no feature file"):
        custom_dataset(feats, annotations=ann, test_list=tmp_path / "test.txt")
    # An interval beyond the video's true frame count (manifest) is an error.
    bad = dict(VIDEOS, cam1_0002=(9, 0, "cam1_0002.mp4 Theft 100 170 -1 -1"))
    with pytest.raises(DataError, match=r"'cam1_0002'.*100-170.*runs 27 frames past the 144 frames of the video"):
        custom_dataset(feats, annotations=_annotations(tmp_path / "bad.txt", bad))
    # An anomalous class without any interval would be an all-normal ground truth.
    bad = dict(VIDEOS, cam1_0002=(9, 0, "cam1_0002.mp4 Theft -1 -1 -1 -1"))
    with pytest.raises(DataError, match=r"test video 'cam1_0002'.*anomalous \(class 'Theft'\).*no anomaly interval"):
        custom_dataset(feats, annotations=_annotations(tmp_path / "bad.txt", bad))
    # Features and manifest from different runs.
    manifest = json.loads((feats / "manifest.json").read_text())
    manifest["videos"]["cam1_0001"]["segments"] = 13
    manifest["videos"]["cam1_0001"]["frames"] = 16 * 13 + 5
    (feats / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"'cam1_0001' \(file .*cam1_0001.npy\): 12 segments but the extraction manifest records 13"):
        custom_dataset(feats, annotations=ann)
    manifest["videos"]["cam1_0001"]["frames"] = 10
    (feats / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"manifest.json: video 'cam1_0001': frames 10 != 16 x 13 segments \+ 5"):
        read_manifest(feats / "manifest.json")
    # Everything annotated and nothing left to train on.
    only = {k: v for k, v in VIDEOS.items() if v[2]}
    feats2 = _extracted(tmp_path / "only", only)
    with pytest.raises(DataError, match="none is left for training.*--transductive"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        custom_dataset(feats2, annotations=_annotations(tmp_path / "o.txt", only))
    with pytest.raises(DataError, match="needs annotations"):
        custom_dataset(feats)
    with pytest.raises(DataError, match="listed twice"):
        (tmp_path / "dup.txt").write_text("a\nb\na\n")
        read_video_list(tmp_path / "dup.txt")


def test_crops_first_custom_files_decided_by_the_manifest(tmp_path):
    feats = _extracted(tmp_path / "feats")
    for name, (m, _, _) in VIDEOS.items():
        x = np.load(feats / f"{name}.npy")
        np.save(feats / f"{name}.npy", x.transpose(1, 0, 2))  # (crops, m, D)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = custom_dataset(feats, annotations=_annotations(tmp_path / "a.txt"))
    assert ds.train.layout == ds.test.layout == "crops_first"
    assert ds.test.lengths.tolist() == [12, 9, 15, 7] and ds.test.crops == CROPS
    # Without a manifest nothing gives segment counts: the crop axis then varies
    # between videos and the error names the fix.
    (feats / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"crop count .*layout='crops_first'"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        custom_dataset(feats, annotations=_annotations(tmp_path / "a.txt"))


def test_ucsd_mat_custom_dataset(tmp_path):
    # Three "Ped2-like" videos of 180, 150 and 180 frames: 11, 9 and 11 clips.
    videos = {"01": (11, 4, ""), "02": (9, 6, ""), "03": (11, 4, "")}
    feats = _extracted(tmp_path / "feats", videos)
    cell = np.empty((1, 12), dtype=object)
    ranges = [[61, 180], [95, 150], [1, 146]] + [[1, 10]] * 9
    for k, (s, e) in enumerate(ranges):
        cell[0, k] = np.array([[s], [e]], np.uint8)
    scipy.io.savemat(tmp_path / "ped2.mat", {"gt": cell})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = custom_dataset(feats, annotations=tmp_path / "ped2.mat", transductive=True)
    assert ds.test_table.names == ("01", "02", "03") and len(ds.train_table) == 3
    assert any("9 annotated videos have no features" in n for n in ds.notes)
    gt = frame_ground_truth(ds.test)
    f = [176, 144, 176]
    v1, v2, v3 = gt[:f[0]], gt[f[0]:f[0] + f[1]], gt[f[0] + f[1]:]
    # 1-based [61, 180] -> 0-based 60..179, clipped to the 176 frames with features.
    assert v1[60:].all() and not v1[:60].any()
    assert v2[94:144].all() and not v2[:94].any()
    assert v3[:146].all() and not v3[146:].any()


def test_training_labels_and_segment_truth_from_annotations(tmp_path):
    feats = _extracted(tmp_path / "feats")
    ann = _annotations(tmp_path / "ann.txt")
    extra = tmp_path / "train_ann.txt"
    extra.write_text("cam3_0001 Theft 17 40\ncam3_0002 Normal -1 -1\n")
    (tmp_path / "test.txt").write_text("cam1_0001\ncam1_0002\n")
    ds = custom_dataset(feats, annotations=[ann, extra], test_list=tmp_path / "test.txt")
    t = ds.train_table
    assert t.labels_known and t.frame_truth
    i = t.index_of("cam3_0001")
    assert bool(t.anomalous[i]) and t.classes[i] == "Theft"
    seg = ds.train.true_segment_labels(i)
    np.testing.assert_array_equal(np.flatnonzero(seg), [1, 2])  # frames 17..40 -> segments 1, 2
    assert not ds.train.true_segment_labels(t.index_of("cam3_0002")).any()


def test_custom_splits(tmp_path):
    feats = _extracted(tmp_path / "feats")
    ann = _annotations(tmp_path / "ann.txt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = custom_dataset(feats, annotations=ann, transductive=True)
    t = ds.train_table  # 6 videos, 2 of them unannotated: labels unknown
    s = splits.random_split(t, 3, seed=1)
    assert sorted(np.concatenate(s.participants).tolist()) == list(range(6))
    assert [len(p) for p in s.participants] == [2, 2, 2]
    with pytest.raises(ValueError, match="between 1 and 6"):
        splits.random_split(t, 7)
    # A given split as 'video participant' lines ...
    (tmp_path / "split.txt").write_text(
        "cam1_0001 east\ncam1_0002 east\ncam2_0001 west\ncam2_0002 west\ncam3_0001 north\ncam3_0002.mp4 north\n")
    given = splits.from_file(tmp_path / "split.txt", t)
    assert given.participant_names == ("east", "west", "north") and given.names(2) == ["cam3_0001", "cam3_0002"]
    # ... or JSON with names, which a custom split also writes.
    (tmp_path / "split.json").write_text(json.dumps(given.to_json()))
    again = splits.from_file(tmp_path / "split.json", t)
    assert [a.tolist() for a in again.participants] == [g.tolist() for g in given.participants]
    (tmp_path / "short.txt").write_text("cam1_0001 east\n")
    with pytest.raises(splits.SplitError, match="5 training videos are assigned to no participant"):
        splits.from_file(tmp_path / "short.txt", t)
    (tmp_path / "bad.txt").write_text("cam9 east\n")
    with pytest.raises(splits.SplitError, match=r"bad.txt line 1: video 'cam9' is not a training video"):
        splits.from_file(tmp_path / "bad.txt", t)
    with pytest.raises(ValueError, match="event class of every training video"):
        splits.event_split(t)
    # Labels known: balanced random split, event split by annotated class.
    extra = tmp_path / "more.txt"
    extra.write_text("cam3_0001 Theft 17 40\ncam3_0002 Normal -1 -1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lab = custom_dataset(feats, annotations=[ann, extra], transductive=True).train_table
    assert lab.labels_known and int(lab.anomalous.sum()) == 3
    bal = splits.random_split(lab, 3, seed=0)
    assert bal.anomalous_counts().tolist() == [[1, 1], [1, 1], [1, 1]]
    ev = splits.event_split(lab, seed=0)
    assert ev.participant_names == ("Fighting", "Theft")


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), lengths=st.lists(st.integers(1, 40), min_size=1, max_size=5),
       ties=st.booleans())
def test_frame_metrics_with_segment_frames_equals_frame_level(seed, lengths, ties):
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    counts = rng.integers(0, 40, lengths.sum())
    counts[0] = 20  # at least some frames
    scores = rng.integers(0, 4, lengths.sum()).astype(float) if ties else rng.random(lengths.sum())
    gt = (rng.random(int(counts.sum())) < 0.3).astype(np.uint8)
    gt[0], gt[1] = 0, 1  # both classes
    got = frame_metrics(scores, lengths, gt, segment_frames=counts)
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

    frame = np.repeat(scores, counts)
    assert got["auc"] == pytest.approx(roc_auc_score(gt, frame), abs=1e-12)
    assert got["ap_sklearn"] == pytest.approx(average_precision_score(gt, frame), abs=1e-12)
    p, r, _ = precision_recall_curve(gt, frame)
    assert got["ap_trapezoid"] == pytest.approx(auc(r, p), abs=1e-12)
    with pytest.raises(ValueError, match="frame ground truth has"):
        frame_metrics(scores, lengths, gt[:-1], segment_frames=counts)
    # 16 frames each is the default.
    g16 = (rng.random(16 * lengths.sum()) < 0.3).astype(np.uint8)
    g16[0], g16[1] = 0, 1  # both classes (AUC is undefined otherwise)
    assert frame_metrics(scores, lengths, g16) == frame_metrics(
        scores, lengths, g16, segment_frames=np.full(lengths.sum(), 16))


@needs_real
def test_real_c3d_train_extended_test_sultani():
    ucf = REAL / "ucf_crime"
    ann = [REAL / "annotations" / "ucf_crime_test_annotation_with_frame_counts.txt",
           REAL / "annotations" / "extended_roadaccidents_temporal_annotation.txt"]
    ds = custom_dataset(ucf / "c3d_extended" / "32seg", annotations=ann,
                        test_features_dir=ucf / "c3d_sultani_txt")
    assert len(ds.train_table) == 24 and ds.train_table.labels_known
    assert int(ds.train_table.anomalous.sum()) == 14 and not ds.train_table.frame_truth
    assert ds.train.feature_dim == ds.test.feature_dim == 4096
    t = ds.test_table
    assert len(t) == 10 and t.segment_frames is not None
    frames_of = {a.name: a.frames for a in data.read_annotations(ann[0]).videos.values()}
    for i, name in enumerate(t.names):
        # Compressed segments cover every frame of the video (its annotated count).
        assert int(t.frames_of_segments(i).sum()) == t.n_frames[i] == frames_of[name]
    gt = frame_ground_truth(ds.test)
    assert gt.size == sum(frames_of[n] for n in t.names)
    i = t.names.index("Explosion008_x264")
    start = int(t.n_frames[:i].sum())
    video = gt[start:start + int(t.n_frames[i])]
    assert np.flatnonzero(video).tolist() == list(range(1005, 1246))
    # A run's eval set carries the segment frames to the metrics.
    from clapjax import pipeline

    ev = pipeline.load_test_set(ds.test)
    assert ev.segment_frames is not None and int(ev.segment_frames.sum()) == gt.size
    m = frame_metrics(np.arange(320, dtype=float), ev.lengths, ev.ground_truth, ev.names, ev.segment_frames)
    assert 0.0 <= m["auc"] <= 1.0
