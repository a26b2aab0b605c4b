"""clapjax.pipeline stages on a tiny synthetic split, against direct library calls."""

import numpy as np
import pytest

from clapjax import data, null_model, pipeline, spl, splits
from clapjax.data import DataError
from clapjax.options import PseudoLabelOptions

OPTS = PseudoLabelOptions()


@pytest.fixture(scope="module")
def training_set():
    split = data.shrink_split(splits.load("ucf", "random", 2), 3)
    source = data.open_source("ucf", "train", synthetic=data.SyntheticConfig.preset("tiny"))
    return split, source, pipeline.load_training_set(source, split)


def test_training_set_packs_participants_in_order(training_set):
    split, source, ts = training_set
    assert ts.num_participants == 2
    order = np.concatenate(split.participants)
    np.testing.assert_array_equal(ts.table_index, order)
    for k, p in enumerate(split.participants):
        a, b = ts.video_ranges[k]
        ra, rb = ts.row_ranges[k]
        feats, _ = source.read_many(p)
        np.testing.assert_array_equal(ts.features[ra:rb], feats)
        assert int(np.asarray(ts.participant_layout(k).lengths).sum()) == rb - ra
        assert ts.participant_layout(k).num_videos == b - a
        np.testing.assert_array_equal(ts.true_video_labels[a:b], split.table.anomalous[p])
    assert ts.true_segment_labels.shape == (ts.features.shape[0],)


def test_weak_videos_replace_vpl_and_stages_match_library(training_set):
    _, _, ts = training_set
    z, stats = pipeline.compute_statistics(ts, OPTS)
    weak = np.zeros(ts.layout.num_videos, bool)
    a, b = ts.video_ranges[1]
    weak[a:b] = True
    vpl, used, notes = pipeline.video_labels(ts, stats, OPTS, weak)
    np.testing.assert_array_equal(used[a:b], ts.true_video_labels[a:b])
    np.testing.assert_array_equal(used[:a], vpl[:a])
    with pytest.raises(ValueError, match="one flag per video"):
        pipeline.video_labels(ts, stats, OPTS, weak[:-1])
    labels = ts.true_video_labels
    nulls = pipeline.null_summaries(ts, z, labels)
    server = pipeline.mixtures(nulls, OPTS, "server_mixture")
    local = pipeline.mixtures(nulls, OPTS, "local")
    assert server[0] is server[1] and np.asarray(local[1].means).shape == (1,)
    with pytest.raises(ValueError, match="valid: server_mixture, local"):
        pipeline.mixtures(nulls, OPTS, "global")
    seg = pipeline.segment_labels(ts, z, labels, local, OPTS)
    for k in range(2):
        (va, vb), (ra, rb) = ts.video_ranges[k], ts.row_ranges[k]
        want = spl.generate_labels(z[ra:rb], ts.participant_layout(k), labels[va:vb], local[k], OPTS)
        np.testing.assert_array_equal(seg[ra:rb], np.asarray(want))
        g = null_model.participant_null(z[ra:rb], ts.participant_layout(k), labels[va:vb])
        assert float(nulls[k].mean) == pytest.approx(float(g.mean))
    assert set(np.unique(seg)) <= {0.0, 1.0}


def test_pseudo_labels_round_trip(training_set, tmp_path):
    _, _, ts = training_set
    pl = pipeline.pseudo_label(ts, OPTS)
    pipeline.save_pseudo_labels(tmp_path / "pl.npz", pl)
    back = pipeline.load_pseudo_labels(tmp_path / "pl.npz", ts)
    for f in pipeline.PseudoLabels._fields:
        if f == "notes":
            assert back.notes == pl.notes
        else:
            np.testing.assert_array_equal(getattr(back, f), getattr(pl, f))


def test_read_segment_labels(tmp_path):
    np.save(tmp_path / "a.npy", np.array([0, 1, 1], np.uint8))
    np.save(tmp_path / "b.npy", np.r_[np.zeros(16), np.ones(3), np.zeros(13)].astype(np.uint8))
    out = pipeline.read_segment_labels(tmp_path, ["a", "b"], np.array([3, 2]))
    np.testing.assert_array_equal(out, [0, 1, 1, 0, 1])
    with pytest.raises(DataError, match="video 'b'.*expected 3 segment labels or 48 frame labels"):
        pipeline.read_segment_labels(tmp_path, ["b"], np.array([3]))
    with pytest.raises(DataError, match="video 'c': segment label file not found"):
        pipeline.read_segment_labels(tmp_path, ["c"], np.array([1]))
    np.save(tmp_path / "d.npy", np.array([0, 2]))
    with pytest.raises(DataError, match="0 or 1"):
        pipeline.read_segment_labels(tmp_path, ["d"], np.array([2]))
