"""Real-feature layouts read from small fixtures, memory mapping, validation errors."""

import warnings

import numpy as np
import pytest

from clapjax import tables
from clapjax.data import (
    ConcatenatedSource,
    DataError,
    FeatureSource,
    NpyFilesSource,
    check_participants,
    open_source,
    read_list_file,
)
from clapjax.data import sources as sources_mod
from clapjax.packed import unpack

UCF_TEST = tables.load_table("ucf", "test")
NAMES = list(UCF_TEST.names[:4])
LENGTHS = [5, 3, 7, 2]
C, D = 3, 6


def _features(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((m, C, D)).astype(np.float64) for m in LENGTHS]


def _write_whole(folder, feats, suffix=""):
    folder.mkdir(parents=True, exist_ok=True)
    for name, f in zip(NAMES, feats):
        np.save(folder / f"{name}{suffix}.npy", f)


def _write_crops(folder, feats):
    folder.mkdir(parents=True, exist_ok=True)
    for name, f in zip(NAMES, feats):
        for c in range(f.shape[1]):
            np.save(folder / f"{name}__{c}.npy", f[:, c, :])


@pytest.mark.parametrize("suffix", ["", "_i3d"])
def test_whole_video_files(tmp_path, suffix):
    feats = _features()
    _write_whole(tmp_path / "sub", feats, suffix)  # found recursively
    src = open_source("ucf", "test", tmp_path, videos=NAMES)
    assert isinstance(src, FeatureSource)
    assert src.names == tuple(NAMES) and list(src.lengths) == LENGTHS
    assert (src.crops, src.feature_dim) == (C, D)
    for i, f in enumerate(feats):
        out = src.read(i)
        assert out.dtype == np.float32 and out.shape == f.shape
        np.testing.assert_allclose(out, f.astype(np.float32))
    np.testing.assert_array_equal(src.table_index, [UCF_TEST.index_of(n) for n in NAMES])


def test_two_dim_files_and_crop_mean(tmp_path):
    feats = [f[:, 0, :] for f in _features()]
    _write_whole(tmp_path, feats)
    src = open_source("ucf", "test", tmp_path, videos=NAMES)
    assert src.crops == 1 and src.read(2).shape == (7, 1, D)
    feats3 = _features(1)
    _write_whole(tmp_path / "b", feats3)
    mean = open_source("ucf", "test", tmp_path / "b", videos=NAMES, crops="mean")
    assert mean.crops == 1
    np.testing.assert_allclose(mean.read(0)[:, 0], feats3[0].mean(1), rtol=1e-5, atol=1e-6)


def test_per_crop_files_and_read_many(tmp_path):
    feats = _features()
    _write_crops(tmp_path, feats)
    src = open_source("ucf", "test", tmp_path, videos=NAMES)
    assert src.crops == C
    order = [2, 0, 3]
    packed, layout = src.read_many(order)
    assert packed.shape == (7 + 5 + 2, C, D) and packed.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(layout.lengths), [7, 5, 2])
    for got, i in zip(unpack(packed, layout), order):
        np.testing.assert_allclose(got, feats[i].astype(np.float32))
    mean = open_source("ucf", "test", tmp_path, videos=NAMES, crops="mean")
    np.testing.assert_allclose(mean.read(1)[:, 0], feats[1].mean(1), rtol=1e-5, atol=1e-6)


def test_list_file(tmp_path):
    feats = _features()
    _write_crops(tmp_path / "feats", feats)
    lines = [f"/nonexistent/author/path/{n}__{c}.npy" for n in NAMES for c in range(C)]
    (tmp_path / "test.list").write_text("\n".join(lines) + "\n")
    listed = read_list_file(tmp_path / "test.list", tmp_path / "feats")
    assert list(listed) == NAMES and len(listed[NAMES[0]]) == C
    src = open_source("ucf", "test", tmp_path / "feats", list_file=tmp_path / "test.list", videos=NAMES)
    np.testing.assert_allclose(src.read(3), feats[3].astype(np.float32))
    # A table video that the list does not hold.
    (tmp_path / "short.list").write_text("\n".join(lines[:C]) + "\n")
    with pytest.raises(DataError, match=NAMES[1]):
        open_source("ucf", "test", tmp_path / "feats", list_file=tmp_path / "short.list", videos=NAMES)


def test_concatenated_memory_mapped(tmp_path, monkeypatch):
    feats = _features()
    arr = np.concatenate(feats).astype(np.float16)
    np.save(tmp_path / "all.npy", arr)
    ends = np.cumsum(LENGTHS)
    ranges = np.stack([ends - LENGTHS, ends], axis=1)
    np.save(tmp_path / "ranges.npy", ranges)
    modes = []
    real_load = np.load

    def spy_load(path, *args, **kwargs):
        modes.append((str(path), kwargs.get("mmap_mode"), kwargs.get("allow_pickle")))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(sources_mod.np, "load", spy_load)
    src = ConcatenatedSource(tmp_path / "all.npy", tmp_path / "ranges.npy", NAMES, "ucf", "test")
    out = src.read(2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, arr[5 + 3 : 5 + 3 + 7].astype(np.float32))
    feature_loads = [m for m in modes if m[0].endswith("all.npy")]
    assert feature_loads and all(mode == "r" and pickle is False for _, mode, pickle in feature_loads)
    assert isinstance(src._mmap(), np.memmap)
    # The returned block is a float32 copy, not a view that keeps the file open.
    assert not np.shares_memory(out, src._mmap())
    # Through open_source with table-wide ranges.
    table = tables.load_table("ucf", "test")
    full = np.zeros((len(table), 2), np.int64)
    full[:, 1] = 1
    rows = [table.index_of(n) for n in NAMES]
    full[rows] = ranges
    np.save(tmp_path / "full_ranges.npy", full)
    src2 = open_source("ucf", "test", concatenated=tmp_path / "all.npy",
                       ranges=tmp_path / "full_ranges.npy", videos=NAMES)
    np.testing.assert_allclose(src2.read(0), arr[:5].astype(np.float32))


def test_per_video_file_reading_is_memory_mapped(tmp_path, monkeypatch):
    _write_whole(tmp_path, _features())
    modes = []
    real_load = np.load
    monkeypatch.setattr(sources_mod.np, "load",
                        lambda p, *a, **k: modes.append(k.get("mmap_mode")) or real_load(p, *a, **k))
    src = open_source("ucf", "test", tmp_path, videos=NAMES)
    assert modes == []  # opening reads only headers
    src.read(1)
    assert modes == ["r"]


# ----------------------------------------------------------------- validation


def test_missing_file_names_video(tmp_path):
    feats = _features()
    _write_whole(tmp_path, feats)
    (tmp_path / f"{NAMES[2]}.npy").unlink()
    with pytest.raises(DataError, match=rf"{NAMES[2]}.*not found"):
        open_source("ucf", "test", tmp_path, videos=NAMES)


def test_missing_crop_file(tmp_path):
    _write_crops(tmp_path, _features())
    (tmp_path / f"{NAMES[1]}__1.npy").unlink()
    files = [[tmp_path / f"{n}__{c}.npy" for c in range(C)] for n in NAMES]
    with pytest.raises(DataError, match=rf"{NAMES[1]}.*{NAMES[1]}__1.npy.*not found"):
        NpyFilesSource(files, NAMES, "ucf", "test")


def test_wrong_dimension_and_crop_count(tmp_path):
    feats = _features()
    feats[1] = feats[1][:, :, :4]
    _write_whole(tmp_path / "d", feats)
    with pytest.raises(DataError, match=rf"{NAMES[1]}.*{NAMES[1]}.npy.*feature dimension 4.*expected {D}"):
        open_source("ucf", "test", tmp_path / "d", videos=NAMES)
    feats = _features()
    feats[3] = feats[3][:, :2]
    _write_whole(tmp_path / "c", feats)
    with pytest.raises(DataError, match=rf"{NAMES[3]}.*crop count 2.*expected {C}"):
        open_source("ucf", "test", tmp_path / "c", videos=NAMES)
    _write_whole(tmp_path / "e", _features())
    with pytest.raises(DataError, match="feature dimension 6.*expected 2048"):
        open_source("ucf", "test", tmp_path / "e", videos=NAMES, feature_dim=2048)
    with pytest.raises(DataError, match="crop count 3.*expected 10"):
        open_source("ucf", "test", tmp_path / "e", videos=NAMES, num_crops=10)


def test_zero_segment_video(tmp_path):
    feats = _features()
    feats[2] = feats[2][:0]
    _write_whole(tmp_path, feats)
    with pytest.raises(DataError, match=rf"{NAMES[2]}.*0 segments"):
        open_source("ucf", "test", tmp_path, videos=NAMES)
    arr = np.zeros((10, D), np.float32)
    np.save(tmp_path / "all.npy", arr)
    with pytest.raises(DataError, match=rf"{NAMES[1]}.*0 segments"):
        ConcatenatedSource(tmp_path / "all.npy", [[0, 4], [4, 4], [4, 8], [8, 10]], NAMES, "ucf", "test")
    with pytest.raises(DataError, match=rf"{NAMES[3]}.*outside the 10 rows"):
        ConcatenatedSource(tmp_path / "all.npy", [[0, 4], [4, 5], [5, 8], [8, 11]], NAMES, "ucf", "test")


def test_nonfinite_error_and_drop(tmp_path):
    train = tables.load_table("ucf", "train")
    names = list(train.names[:3])
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((m, 2, D)).astype(np.float32) for m in (4, 6, 3)]
    feats[1][2, 1, 3] = np.nan
    feats[1][4, 0, 0] = np.inf
    for n, f in zip(names, feats):
        np.save(tmp_path / f"{n}.npy", f)
    src = open_source("ucf", "train", tmp_path, videos=names)
    src.read(0)
    with pytest.raises(DataError, match=rf"{names[1]}.*{names[1]}.npy.*NaN or inf.*segment 2"):
        src.read(1)
    with pytest.warns(UserWarning, match=rf"{names[1]}.*dropped 2 of 6"):
        dropped = open_source("ucf", "train", tmp_path, videos=names, nonfinite="drop")
    assert list(dropped.lengths) == [4, 4, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        packed, layout = dropped.read_many([1])
    np.testing.assert_array_equal(packed, feats[1][[0, 1, 3, 5]])
    assert np.isfinite(packed).all()
    with pytest.raises(ValueError, match="only allowed for training"):
        open_source("ucf", "test", tmp_path, videos=NAMES, nonfinite="drop")


def test_nonfinite_names_crop_file(tmp_path):
    feats = _features()
    feats[0][1, 2, 0] = np.nan
    _write_crops(tmp_path, feats)
    src = open_source("ucf", "test", tmp_path, videos=NAMES)
    with pytest.raises(DataError, match=rf"{NAMES[0]}__2.npy.*segment 1"):
        src.read(0)


def test_pickle_refused(tmp_path):
    _write_whole(tmp_path, _features())
    np.save(tmp_path / f"{NAMES[0]}.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=rf"{NAMES[0]}.*pickle"):
        open_source("ucf", "test", tmp_path, videos=NAMES)


def test_bad_indices_names_and_participants(tmp_path):
    _write_whole(tmp_path, _features())
    src = open_source("ucf", "test", tmp_path, videos=NAMES)
    with pytest.raises(DataError, match="video index 4 does not exist"):
        src.read(4)
    with pytest.raises(DataError, match="video index -1 does not exist"):
        src.read_many([0, -1])
    with pytest.raises(DataError, match="'NoSuchVideo'"):
        open_source("ucf", "test", tmp_path, videos=["NoSuchVideo"])
    with pytest.raises(DataError, match="video index 290 does not exist"):
        open_source("ucf", "test", tmp_path, videos=[290])
    names = UCF_TEST.names
    with pytest.raises(DataError, match=rf"{names[3]}.*participant 0 and participant 2"):
        check_participants([[0, 3], [1], [3, 4]], names)
    with pytest.raises(DataError, match="'Nope'.*does not exist"):
        check_participants([[0], ["Nope"]], names)
    with pytest.raises(DataError, match="index 999 does not exist"):
        check_participants([[0], [999]], names)
    assert [list(p) for p in check_participants([[names[2], 0], [1]], names)] == [[2, 0], [1]]


def test_no_origin_or_two_origins(tmp_path):
    with pytest.raises(ValueError, match="exactly one feature origin"):
        open_source("ucf", "test")
    with pytest.raises(DataError, match="features directory not found"):
        open_source("ucf", "test", tmp_path / "missing", videos=NAMES)
