"""Dataset tables and participant splits: shipped data, validation, generators."""

import json
from pathlib import Path

import numpy as np
import pytest

from clapjax import splits, tables

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

OFFICIAL = {
    "ucf": [("random", 2), ("random", 5), ("random", 10), ("random", 25), ("random", 50),
            ("event", 13), ("scene", 11)],
    "xd": [("random", 5), ("random", 10), ("random", 25), ("random", 50)],
}


def test_available_lists_exactly_the_official_combinations():
    assert splits.available() == OFFICIAL


@pytest.mark.parametrize(
    "dataset,part,videos,segments",
    [
        ("ucf", "train", 1608, 779_780),
        ("ucf", "test", 290, 69_634),
        ("xd", "train", 3954, 1_021_917),
        ("xd", "test", 800, None),
    ],
)
def test_table_counts(dataset, part, videos, segments):
    t = tables.load_table(dataset, part)
    assert len(t) == videos
    assert len(set(t.names)) == videos
    if segments is not None:
        assert t.total_segments == segments
    if part == "train":
        # Anomalous videos come first in the authors' training-list order.
        first_normal = int(np.argmin(t.anomalous))
        assert t.anomalous[:first_normal].all() and not t.anomalous[first_normal:].any()


def test_ucf_train_structure():
    t = tables.load_table("ucf", "train")
    assert int(t.anomalous.sum()) == 809 and int((~t.anomalous).sum()) == 799
    assert t.n_segments.min() == 7 and t.n_segments.max() == 61_032
    assert "Abuse001_x264" not in t.names  # the known quirk: 1608, not 1610


def test_test_tables_have_intervals_for_anomalous_videos_only():
    for ds in ("ucf", "xd"):
        t = tables.load_table(ds, "test")
        for name, anom, iv, frames in zip(t.names, t.anomalous, t.anomaly_frames, t.n_frames):
            assert bool(iv) == bool(anom), name
            for start, end in iv:
                assert 0 <= start <= end, name
        if ds == "ucf":
            np.testing.assert_array_equal(t.n_frames, 16 * t.n_segments)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared data directory not beside the repo")
def test_shipped_data_equals_the_shared_source():
    for ds, combos in OFFICIAL.items():
        for part in ("train", "test"):
            ours = (tables.splits_dir() / ds / f"{part}_videos.csv").read_text()
            assert ours == (SHARED_DATA / ds / f"{part}_videos.csv").read_text()
        for kind, k in combos:
            ours = json.loads((tables.splits_dir() / ds / f"{kind}_{k}.json").read_text())
            theirs = json.loads((SHARED_DATA / ds / "splits" / f"{kind}_{k}.json").read_text())
            assert ours == theirs


@pytest.mark.parametrize("dataset,kind,k", [(d, s, k) for d, c in OFFICIAL.items() for s, k in c])
def test_every_official_split_validates_and_covers(dataset, kind, k):
    s = splits.load(dataset, kind, k)
    assert s.num_participants == k
    assert len(s.participant_names) == k
    allidx = np.concatenate(s.participants)
    assert np.array_equal(np.sort(allidx), np.arange(len(s.table)))
    assert s.segment_counts().sum() == s.table.total_segments
    assert s.anomalous_counts().sum() == len(s.table)


def test_official_event_split_quirk_and_names():
    s = splits.load("ucf", "event", 13)
    assert s.participant_names[0] == "Abuse"
    classes = np.asarray(s.table.classes)
    # Every event participant but the last holds the first video of the next class.
    for k in range(12):
        got = set(classes[s.participants[k]]) - {"Normal"}
        assert got == {s.participant_names[k], s.participant_names[k + 1]}


def test_scene_split_is_imbalanced_as_documented():
    counts = splits.load("ucf", "scene", 11).segment_counts()
    assert counts.min() == 3_787 and counts.max() == 213_916


def test_participant_video_names():
    s = splits.load("ucf", "random", 5)
    names = s.names(0)
    assert len(names) == len(s.participants[0])
    assert names[0] == s.table.names[s.participants[0][0]]


@pytest.mark.parametrize(
    "dataset,kind,k", [("xd", "event", 13), ("ucf", "random", 7), ("ucf", "scene", 5)]
)
def test_invalid_combination_lists_valid_ones(dataset, kind, k):
    with pytest.raises(ValueError, match=r"valid: ucf: random 2/5/10/25/50; event 13; scene 11"):
        splits.load(dataset, kind, k)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'shanghai'"):
        splits.load("shanghai", "random", 5)


def _write(tmp_path, participants, **extra):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"dataset": "ucf", "participants": participants, **extra}))
    return path


def test_from_json_rejects_overlap(tmp_path):
    n = len(tables.load_table("ucf", "train"))
    parts = [list(range(0, 10)), list(range(9, n))]
    with pytest.raises(splits.SplitError, match=r"video 9 \(Abuse011_x264\) is assigned to both"):
        splits.from_json(_write(tmp_path, parts))


def test_from_json_rejects_unknown_index(tmp_path):
    n = len(tables.load_table("ucf", "train"))
    with pytest.raises(splits.SplitError, match=rf"video index {n}, which is not in"):
        splits.from_json(_write(tmp_path, [list(range(n + 1))]))


def test_from_json_rejects_missing_videos(tmp_path):
    with pytest.raises(splits.SplitError, match=r"1598 training videos are assigned to no participant"):
        splits.from_json(_write(tmp_path, [list(range(10))]))


def test_from_json_rejects_duplicates_and_bad_fields(tmp_path):
    n = len(tables.load_table("ucf", "train"))
    with pytest.raises(splits.SplitError, match="lists video 0"):
        splits.from_json(_write(tmp_path, [[0] + list(range(n))]))
    with pytest.raises(splits.SplitError, match="non-integer index"):
        splits.from_json(_write(tmp_path, [[0, "a"]]))
    # Video names are resolved against the table, and unknown names refused.
    with pytest.raises(splits.SplitError, match="video 'a' is not a training video"):
        splits.from_json(_write(tmp_path, [["a"]]))
    with pytest.raises(splits.SplitError, match="num_participants says 3"):
        splits.from_json(_write(tmp_path, [list(range(n))], num_participants=3))
    with pytest.raises(splits.SplitError, match="participant 1 has no videos"):
        splits.from_json(_write(tmp_path, [list(range(n)), []]))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(splits.SplitError, match="bad.json: not valid JSON"):
        splits.from_json(bad)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        splits.from_json(tmp_path / "nope.json")


def test_round_trip_through_json(tmp_path):
    s = splits.load("ucf", "event", 13)
    path = tmp_path / "copy.json"
    path.write_text(json.dumps(s.to_json()))
    again = splits.from_json(path)
    assert again.participant_names == s.participant_names
    for a, b in zip(again.participants, s.participants):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dataset,k", [("ucf", 3), ("ucf", 13), ("xd", 7), ("xd", 50)])
def test_random_split_generator(dataset, k):
    a = splits.random_split(dataset, k, seed=1)
    b = splits.random_split(dataset, k, seed=1)
    c = splits.random_split(dataset, k, seed=2)
    assert a.num_participants == k
    for x, y in zip(a.participants, b.participants):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a.participants, c.participants))
    counts = a.anomalous_counts()
    # Balanced: each class differs by at most one video across participants.
    assert counts[:, 0].max() - counts[:, 0].min() <= 1
    assert counts[:, 1].max() - counts[:, 1].min() <= 1
    sizes = counts.sum(1)
    assert sizes.max() - sizes.min() <= 1


def test_random_split_rejects_bad_k():
    with pytest.raises(ValueError, match="participants must be between 1 and 809"):
        splits.random_split("ucf", 0)


def test_event_split_generator_is_clean():
    s = splits.event_split("ucf", seed=0)
    assert s.num_participants == 13
    classes = np.asarray(s.table.classes)
    for name, p in zip(s.participant_names, s.participants):
        assert set(classes[p]) == {name, "Normal"}
    normals = s.anomalous_counts()[:, 0]
    assert normals.max() - normals.min() <= 1
    with pytest.raises(ValueError, match="only UCF-Crime"):
        splits.event_split("xd")


def test_scene_split_generator_merges_official_scenes():
    official = splits.load("ucf", "scene", 11)
    same = splits.scene_split("ucf")
    for a, b in zip(same.participants, official.participants):
        np.testing.assert_array_equal(a, b)
    merged = splits.scene_split("ucf", groups=[[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10]])
    assert merged.num_participants == 3
    assert merged.segment_counts().sum() == official.table.total_segments
    with pytest.raises(ValueError, match="exactly once"):
        splits.scene_split("ucf", groups=[[0, 1], [1, 2]])


def test_centralized_holds_everything_in_participant_order():
    s = splits.load("ucf", "random", 5)
    c = splits.centralized(s)
    assert c.num_participants == 1
    np.testing.assert_array_equal(c.participants[0], np.concatenate(s.participants))
