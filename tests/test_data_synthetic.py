"""The synthetic UCF/XD-shaped generator: structure, determinism, independence, difficulty."""

import dataclasses

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from clapjax import splits, tables
from clapjax.data import (
    FeatureSource,
    SyntheticConfig,
    frame_ground_truth,
    open_source,
    segment_labels_from_frames,
    shrink_split,
)
from clapjax.evaluation import frame_metrics

SMALL = SyntheticConfig(feature_dim=24, crops=2, rank=4)


@pytest.mark.parametrize("dataset", ["ucf", "xd"])
def test_real_structure(dataset):
    for part in ("train", "test"):
        src = open_source(dataset, part, synthetic=SMALL)
        table = tables.load_table(dataset, part)
        assert isinstance(src, FeatureSource)
        assert src.names == table.names
        np.testing.assert_array_equal(src.lengths, table.n_segments)
        assert (src.crops, src.feature_dim) == (2, 24)
    assert int(open_source(dataset, "train", synthetic=SMALL).lengths.sum()) == (
        779_780 if dataset == "ucf" else 1_021_917
    )


def test_deterministic_and_per_video_independent():
    full = open_source("ucf", "train", synthetic=SMALL)
    picks = [0, 5, 900, 1600]
    alone = [open_source("ucf", "train", synthetic=SMALL, videos=[t]).read(0) for t in picks]
    packed, layout = full.read_many([1600, 0, 900, 5])
    rows = dict(zip([1600, 0, 900, 5], np.split(packed, np.cumsum(np.asarray(layout.lengths))[:-1])))
    for t, a in zip(picks, alone):
        assert a.dtype == np.float32 and np.isfinite(a).all()
        np.testing.assert_array_equal(a, full.read(t))
        np.testing.assert_array_equal(a, rows[t])
        np.testing.assert_array_equal(a, open_source("ucf", "train", synthetic=SMALL).read(t))
    other_seed = open_source("ucf", "train", synthetic=dataclasses.replace(SMALL, seed=1))
    assert not np.allclose(other_seed.read(5), full.read(5))
    # Train and test videos with the same index differ.
    test = open_source("ucf", "test", synthetic=SMALL)
    m = min(test.lengths[0], full.lengths[0])
    assert not np.allclose(test.read(0)[:m], full.read(0)[:m])
    # Labels: a function of the video alone as well.
    np.testing.assert_array_equal(
        full.true_segment_labels(3),
        open_source("ucf", "train", synthetic=SMALL, videos=[3]).true_segment_labels(0),
    )


def test_crop_mean_matches_keep():
    keep = open_source("xd", "test", synthetic=SMALL, videos=[0, 1])
    mean = open_source("xd", "test", synthetic=SMALL, videos=[0, 1], crops="mean")
    np.testing.assert_allclose(mean.read(1)[:, 0], keep.read(1).mean(1), rtol=1e-6, atol=1e-6)
    assert mean.crops == 1


@pytest.mark.parametrize("dataset", ["ucf", "xd"])
def test_labels(dataset):
    train = open_source(dataset, "train", synthetic=SMALL)
    table = train.table
    for t in list(range(0, len(table), 97)):
        lab = train.true_segment_labels(t)
        assert lab.shape == (table.n_segments[t],) and lab.dtype == np.uint8
        assert lab.any() == bool(table.anomalous[t])
    # Test labels agree with the frame ground truth of the real intervals.
    test = open_source(dataset, "test", synthetic=SMALL)
    gt = frame_ground_truth(test)
    seg = segment_labels_from_frames(gt)
    np.testing.assert_array_equal(seg, np.concatenate([test.true_segment_labels(i) for i in range(len(test))]))


def test_training_windows_follow_test_interval_statistics():
    train = open_source("ucf", "train", synthetic=SMALL)
    test_table = tables.load_table("ucf", "test")
    fr_train = np.mean([train.true_segment_labels(t).mean() for t in np.flatnonzero(train.table.anomalous)])
    gt = frame_ground_truth(test_table)
    ends = np.cumsum(test_table.n_frames)
    fr_test = np.mean([gt[e - n : e].mean() for e, n, a in zip(ends, test_table.n_frames, test_table.anomalous) if a])
    # Mean anomalous fraction of anomalous videos is of the same order as the real one.
    assert 0.5 * fr_test < fr_train < 2.0 * fr_test


def test_scenes():
    train = open_source("ucf", "train", synthetic=SMALL)
    scene = splits.load("ucf", "scene", 11)
    for k, p in enumerate(scene.participants):
        assert train.scene(int(p[0])) == k
    xd = open_source("xd", "train", synthetic=SMALL)
    movies = [n.split("__")[0] for n in xd.names]
    same = [i for i in range(1, 200) if movies[i] == movies[0]]
    assert all(xd.scene(i) == xd.scene(0) for i in same)


def _anomaly_norm_change(no_rise_fraction):
    cfg = dataclasses.replace(SMALL, no_rise_fraction=no_rise_fraction, crops=1)
    base = open_source("ucf", "test", synthetic=dataclasses.replace(cfg, strength=0.0, rise=0.0))
    anom = open_source("ucf", "test", synthetic=cfg)
    changes = []
    for i in np.flatnonzero(anom.table.anomalous)[:20]:
        lab = anom.true_segment_labels(i).astype(bool)
        a = np.linalg.norm(anom.read(i)[lab, 0], axis=1)
        b = np.linalg.norm(base.read(i)[lab, 0], axis=1)
        np.testing.assert_array_equal(anom.read(i)[~lab], base.read(i)[~lab])
        changes.append(np.mean(a / b - 1.0))
    return np.asarray(changes)


def test_anomalies_with_and_without_magnitude_rise():
    no_rise = _anomaly_norm_change(1.0)
    rise = _anomaly_norm_change(0.0)
    print("relative norm change, no rise:", np.abs(no_rise).mean(), "rise:", rise.mean())
    # Only the per-crop noise (added after the anomaly) changes the norm.
    assert np.abs(no_rise).mean() < 0.03
    assert rise.mean() > 0.05 and rise.mean() > 10 * np.abs(no_rise).mean()


def test_normal_bursts():
    on = open_source("ucf", "test", synthetic=dataclasses.replace(SMALL, burst_fraction=1.0))
    off = open_source("ucf", "test", synthetic=dataclasses.replace(SMALL, burst_fraction=0.0))
    ratios = []
    for i in np.flatnonzero(~on.table.anomalous)[:10]:
        a = np.linalg.norm(on.read(i).mean(1), axis=1)
        b = np.linalg.norm(off.read(i).mean(1), axis=1)
        ratios.append((a / b).max())
        assert (a >= b - 1e-3 * b).all()
    assert max(ratios) > 1.2


def test_tiny_preset_and_shrink_split():
    cfg = SyntheticConfig.preset("tiny")
    train = open_source("ucf", "train", synthetic=cfg)
    assert train.lengths.max() <= 32 and train.feature_dim == 16
    split = shrink_split(splits.load("ucf", "event", 13), 2)
    idx = np.concatenate(split.participants)
    feats, layout = train.read_many(idx)
    assert feats.shape == (int(train.lengths[idx].sum()), 2, 16)
    assert all(len(p) <= 4 for p in split.participants)
    test = open_source("ucf", "test", synthetic=cfg)
    gt = frame_ground_truth(test)
    assert gt.size == 16 * int(test.lengths.sum()) and gt.any()
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        SyntheticConfig.preset("huge")
    with pytest.raises(ValueError, match="no_rise_fraction"):
        SyntheticConfig(no_rise_fraction=2.0)


@pytest.mark.parametrize(
    "dataset,stride", [("ucf", 8), pytest.param("xd", 6, marks=pytest.mark.slow)]
)
def test_default_preset_is_neither_trivial_nor_impossible(dataset, stride):
    """Feature-norm scorer vs a supervised linear oracle on the default test set.

    The oracle is a logistic regression on the true segment labels of every
    ``stride``-th training video (crop-mean features), evaluated on the full test set.
    """
    cfg = SyntheticConfig.preset("default")
    test = open_source(dataset, "test", synthetic=cfg, crops="mean")
    X, _ = test.read_many(np.arange(len(test)))
    X = X[:, 0]
    gt = frame_ground_truth(test)
    norm_auc = frame_metrics(np.linalg.norm(X, axis=1), test.lengths, gt)["auc"]
    train = open_source(dataset, "train", synthetic=cfg, crops="mean")
    sub = np.arange(0, len(train), stride)
    Xt, _ = train.read_many(sub)
    Xt = Xt[:, 0]
    yt = np.concatenate([train.true_segment_labels(i) for i in sub])
    mu, sd = Xt.mean(0), Xt.std(0)
    lr = LogisticRegression(max_iter=300).fit((Xt - mu) / sd, yt)
    oracle_auc = frame_metrics(lr.decision_function((X - mu) / sd), test.lengths, gt)["auc"]
    print(f"{dataset}: norm AUC {norm_auc:.4f}, oracle AUC {oracle_auc:.4f}")
    assert 0.55 < norm_auc < 0.75
    assert oracle_auc > 0.85
    assert oracle_auc - norm_auc > 0.15
