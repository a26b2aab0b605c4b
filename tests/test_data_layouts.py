"""Every public layout of real features, each on tiny files in exactly that layout.

Names and segment counts are the shipped tables' (short UCF-Crime/XD videos),
so that the crops-first detection has real segment counts to decide from.
"""

import numpy as np
import pytest

from clapjax import tables
from clapjax.data import (
    DataError,
    check_compatible,
    open_source,
    read_list_file,
    read_ranges_list,
)
from clapjax.data.sources import NpyFilesSource
from real_data import REAL, needs_real

UCF_TRAIN = tables.load_table("ucf", "train")
XD_TEST = tables.load_table("xd", "test")
# Short UCF training videos: 7, 8, 9 and 12 segments.
ROWS = [354, 391, 166, 370]
NAMES = [UCF_TRAIN.names[i] for i in ROWS]
LENGTHS = [int(UCF_TRAIN.n_segments[i]) for i in ROWS]
C, D = 10, 6  # the UCF release's 10 crops; a tiny feature dimension


def _feats(seed=0, names=NAMES, lengths=LENGTHS, crops=C, dim=D):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((m, crops, dim)).astype(np.float32) for n, m in zip(names, lengths)}


def _check(src, feats, names=NAMES):
    assert src.names == tuple(names)
    assert [int(m) for m in src.lengths] == [feats[n].shape[0] for n in names]
    assert (src.crops, src.feature_dim) == feats[names[0]].shape[1:]
    for i, n in enumerate(names):
        np.testing.assert_array_equal(src.read(i), feats[n])


def test_rtfm_per_video_i3d_files(tmp_path):
    feats = _feats()
    for n, f in feats.items():
        (tmp_path / "Abuse").mkdir(exist_ok=True)
        np.save(tmp_path / "Abuse" / f"{n}_i3d.npy", f)  # (m, crops, D), class subfolders
    src = open_source("ucf", "train", tmp_path, videos=NAMES)
    assert src.layout == "segments_first"
    _check(src, feats)


def test_crops_first_variant_detected_from_table_counts(tmp_path):
    feats = _feats()
    for n, f in feats.items():
        np.save(tmp_path / f"{n}_i3d.npy", f.transpose(1, 0, 2))  # (crops, m, D)
    src = open_source("ucf", "train", tmp_path, videos=NAMES)
    assert src.layout == "crops_first"
    _check(src, feats)
    # The same files with the layout given explicitly.
    _check(open_source("ucf", "train", tmp_path, videos=NAMES, layout="crops_first"), feats)
    # Mean over crops reads the transposed files too.
    mean = open_source("ucf", "train", tmp_path, videos=NAMES, crops="mean")
    np.testing.assert_allclose(mean.read(3)[:, 0], feats[NAMES[3]].mean(1), rtol=1e-5, atol=1e-6)


def test_crops_first_never_decided_from_one_ambiguous_file(tmp_path):
    # RoadAccidents021 has 10 segments: a 10-crop file (10, 10, D) says nothing.
    test = tables.load_table("ucf", "test")
    amb = "RoadAccidents021_x264"
    assert int(test.n_segments[test.index_of(amb)]) == C
    f = np.random.default_rng(1).standard_normal((C, C, D)).astype(np.float32)
    np.save(tmp_path / f"{amb}.npy", f)
    with pytest.raises(DataError, match=rf"{amb}.*{amb}.npy.*ambiguous.*layout="):
        open_source("ucf", "test", tmp_path, videos=[amb])
    # With a video that decides (Normal_Videos_881: 14 segments, crops first) it follows.
    other = "Normal_Videos_881_x264"
    g = np.random.default_rng(2).standard_normal((C, 14, D)).astype(np.float32)
    np.save(tmp_path / f"{other}.npy", g)
    src = open_source("ucf", "test", tmp_path, videos=[amb, other])
    assert src.layout == "crops_first"
    np.testing.assert_array_equal(src.read(0), f.transpose(1, 0, 2))
    np.testing.assert_array_equal(src.read(1), g.transpose(1, 0, 2))
    # The decision does not depend on which file comes first.
    assert open_source("ucf", "test", tmp_path, videos=[other, amb]).layout == "crops_first"


def test_mixed_layouts_refused(tmp_path):
    feats = _feats()
    for k, (n, f) in enumerate(feats.items()):
        np.save(tmp_path / f"{n}.npy", f if k != 2 else f.transpose(1, 0, 2))
    with pytest.raises(DataError, match=rf"mixed feature layouts.*{NAMES[0]}.*{NAMES[2]}"):
        open_source("ucf", "train", tmp_path, videos=NAMES)


def test_per_crop_files(tmp_path):
    feats = _feats()
    for n, f in feats.items():
        for c in range(C):
            np.save(tmp_path / f"{n}__{c}.npy", f[:, c])
    _check(open_source("ucf", "train", tmp_path, videos=NAMES), feats)


def test_rtfm_list_with_author_paths(tmp_path):
    feats = _feats()
    for n, f in feats.items():
        np.save(tmp_path / f"{n}_i3d.npy", f)
    lines = [f"/home/author/UCF_Train_ten_crop_i3d/{n}_i3d.npy" for n in NAMES]
    (tmp_path / "ucf-i3d.list").write_text("\n".join(lines) + "\n")
    assert list(read_list_file(tmp_path / "ucf-i3d.list", tmp_path)) == NAMES
    _check(open_source("ucf", "train", tmp_path, list_file=tmp_path / "ucf-i3d.list", videos=NAMES), feats)


def test_urdmu_list_with_relative_crop_paths(tmp_path):
    feats = _feats()
    folder = tmp_path / "dataset" / "Abuse"
    folder.mkdir(parents=True)
    lines = []
    for n, f in feats.items():
        for c in range(C):
            np.save(folder / f"{n}__{c}.npy", f[:, c])
            lines.append(f"dataset/Abuse/{n}__{c}.npy")
    (tmp_path / "UCF_Train.list").write_text("\n".join(lines) + "\n")
    # Relative to the list's folder when no features_dir is given.
    _check(open_source("ucf", "train", list_file=tmp_path / "UCF_Train.list", videos=NAMES), feats)


def test_xdviodet_list_of_crop_files(tmp_path):
    rows = [389, 759, 193]
    names = [XD_TEST.names[i] for i in rows]
    feats = _feats(names=names, lengths=[int(XD_TEST.n_segments[i]) for i in rows], crops=5)
    lines = []
    for n, f in feats.items():
        for c in range(5):
            np.save(tmp_path / f"{n}__{c}.npy", f[:, c])
            lines.append(f"/data/xd/i3d-features/RGBTest/{n}__{c}.npy")
    (tmp_path / "rgbtest.list").write_text("\n".join(lines) + "\n")
    src = open_source("xd", "test", tmp_path, list_file=tmp_path / "rgbtest.list", videos=names)
    _check(src, feats, names)


def test_clap_path_start_end_list_with_concatenated_array(tmp_path):
    feats = _feats()
    arr = np.concatenate([feats[n] for n in NAMES])
    np.save(tmp_path / "concat_UCF.npy", arr)
    ends = np.cumsum(LENGTHS)
    lines = [f"/home/author/UCF/{n}.npy,{e - m},{e}" for n, m, e in zip(NAMES, LENGTHS, ends)]
    (tmp_path / "UCF_Train_list.txt").write_text("\n".join(lines) + "\n")
    names, ranges = read_ranges_list(tmp_path / "UCF_Train_list.txt")
    assert names == NAMES and ranges.tolist() == [[e - m, e] for m, e in zip(LENGTHS, ends)]
    # The list may be in any order and longer than the videos used.
    order = [2, 0, 3, 1]
    (tmp_path / "shuffled.txt").write_text("\n".join(lines[k] for k in order) + "\n")
    src = open_source("ucf", "train", concatenated=tmp_path / "concat_UCF.npy",
                      ranges=tmp_path / "shuffled.txt", videos=NAMES[1:])
    _check(src, feats, NAMES[1:])
    # A row range that does not match the table's segment count is refused.
    bad = lines[:]
    bad[1] = f"/x/{NAMES[1]}.npy,{ends[0]},{ends[1] - 1}"
    (tmp_path / "bad.txt").write_text("\n".join(bad) + "\n")
    with pytest.raises(DataError, match=rf"{NAMES[1]}.*bad.txt.*hold {LENGTHS[1] - 1} segments"):
        open_source("ucf", "train", concatenated=tmp_path / "concat_UCF.npy",
                    ranges=tmp_path / "bad.txt", videos=NAMES)
    # Feature lists refuse path,start,end lines with a pointer to the right layout.
    with pytest.raises(DataError, match="UCF_Train_list.txt line 1.*concatenated"):
        read_list_file(tmp_path / "UCF_Train_list.txt")


def test_sultani_text_files_tiny(tmp_path):
    rng = np.random.default_rng(3)
    feats = {n: rng.random((32, 1, 12)).astype(np.float32) for n in NAMES[:2]}
    for n, f in feats.items():
        np.savetxt(tmp_path / f"{n}_C.txt", f[:, 0], fmt="%f")  # Sultani's writer: %f
    src = open_source("ucf", "train", tmp_path, videos=NAMES[:2])
    assert src.lengths.tolist() == [32, 32] and src.feature_dim == 12 and src.crops == 1
    for i, n in enumerate(NAMES[:2]):
        np.testing.assert_allclose(src.read(i), feats[n], atol=1e-6)
    # A ragged line is named with its file.
    lines = (tmp_path / f"{NAMES[0]}_C.txt").read_text().splitlines()
    lines[5] = " ".join(lines[5].split()[:-1])
    (tmp_path / f"{NAMES[0]}_C.txt").write_text("\n".join(lines) + "\n")
    src = open_source("ucf", "train", tmp_path, videos=NAMES[:2])  # headers: first line only
    with pytest.raises(DataError, match=rf"{NAMES[0]}.*{NAMES[0]}_C.txt.*not a numeric feature table"):
        src.read(0)


@needs_real
def test_sultani_text_files_real():
    folder = REAL / "ucf_crime" / "c3d_sultani_txt"
    names = sorted(p.stem for p in folder.glob("*.txt"))
    assert len(names) == 10
    src = NpyFilesSource([[folder / f"{n}.txt"] for n in names], names, "ucf", "test")
    assert src.lengths.tolist() == [32] * 10 and (src.crops, src.feature_dim) == (1, 4096)
    x = src.read(names.index("Explosion008_x264"))
    assert x.dtype == np.float32 and x.shape == (32, 1, 4096)
    # Sultani's rows are L2-normalised (the fact behind "magnitude carries nothing").
    np.testing.assert_allclose(np.linalg.norm(x[:, 0], axis=1), 1.0, atol=1e-5)


def test_train_test_mismatch_is_one_line_naming_both_files(tmp_path):
    tr, te = tmp_path / "train", tmp_path / "test"
    tr.mkdir(), te.mkdir()
    np.save(tr / f"{NAMES[0]}.npy", np.zeros((LENGTHS[0], 2, 8), np.float32))
    test = tables.load_table("ucf", "test")
    name = test.names[69]
    np.save(te / f"{name}.npy", np.zeros((10, 2, 6), np.float32))
    train_src = open_source("ucf", "train", tr, videos=NAMES[:1])
    test_src = open_source("ucf", "test", te, videos=[name])
    with pytest.raises(DataError) as info:
        check_compatible(train_src, test_src)
    msg = str(info.value)
    assert "\n" not in msg and "D=8" in msg and "D=6" in msg
    assert f"{NAMES[0]}.npy" in msg and f"{name}.npy" in msg
    np.save(te / f"{name}.npy", np.zeros((10, 3, 8), np.float32))
    with pytest.raises(DataError, match=rf"crop count.*2 crops.*{NAMES[0]}.npy.*3.*{name}.npy"):
        check_compatible(train_src, open_source("ucf", "test", te, videos=[name]))
    # Averaged crops are compatible.
    check_compatible(open_source("ucf", "train", tr, videos=NAMES[:1], crops="mean"),
                     open_source("ucf", "test", te, videos=[name], crops="mean"))
