"""experiments.run on real-feature files: only the files a run uses, checks before
training, custom datasets from the command line."""

import json
import warnings

import numpy as np
import pytest

from clapjax import tables
from experiments import run
from experiments.config import ConfigError, validate
from real_data import REAL, needs_real
from test_data_custom import VIDEOS, _annotations, _extracted

UCF_TEST = tables.load_table("ucf", "test")
UCF_TRAIN = tables.load_table("ucf", "train")
# Two anomalous and two normal short UCF test videos (10, 16, 14, 14 segments).
TEST_ROWS = [69, 66, 234, 182]
SMALL = ["--split", "random", "--participants", "2", "--generate-split",
         "--videos-per-participant", "1", "--rounds", "1", "--quiet"]


def _ucf_files(tmp_path, dim_test=8, dim_train=8):
    """Feature files of exactly the videos a SMALL run uses; nothing else."""
    feats = tmp_path / "feats"
    (feats / "train").mkdir(parents=True)
    (feats / "test").mkdir()
    (tmp_path / "test.txt").write_text("\n".join(UCF_TEST.names[i] for i in TEST_ROWS) + "\n")
    args = SMALL + ["--features-dir", str(feats), "--test-list", str(tmp_path / "test.txt")]
    split = validate(run.parse(args)).split
    used = sorted({int(i) for p in split.participants for i in p})
    rng = np.random.default_rng(0)
    for i in used:
        m = int(UCF_TRAIN.n_segments[i])
        np.save(feats / "train" / f"{UCF_TRAIN.names[i]}.npy", rng.standard_normal((m, dim_train)).astype(np.float32))
    for i in TEST_ROWS:
        m = int(UCF_TEST.n_segments[i])
        np.save(feats / "test" / f"{UCF_TEST.names[i]}_i3d.npy", rng.standard_normal((m, dim_test)).astype(np.float32))
    return args, used


def test_a_run_needs_only_the_files_of_its_videos(tmp_path):
    args, used = _ucf_files(tmp_path)
    assert len(used) == 4  # of 1608 training videos
    wd = tmp_path / "wd"
    summary = run.main(args + ["--workdir", str(wd)])
    assert summary["complete"] and summary["synthetic"] is False
    assert 0.0 <= summary["final"]["auc"] <= 1.0
    # Real features: the feature-norm floor, no oracle (no true training segment labels).
    assert 0.0 <= summary["references"]["feature_norm"]["auc"] <= 1.0 and summary["references"]["oracle"] is None


def test_train_test_dimension_mismatch_refused_before_training(tmp_path, capsys):
    args, _ = _ucf_files(tmp_path, dim_test=6)
    wd = tmp_path / "wd"
    assert run.cli(args + ["--workdir", str(wd)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: feature dimension")
    assert "D=8" in err[0] and "D=6" in err[0] and "_i3d.npy" in err[0]
    assert not (wd / "metrics.jsonl").exists() and not (wd / "checkpoints" / "1").exists()


def test_user_ground_truth_refused_before_training(tmp_path, capsys):
    args, _ = _ucf_files(tmp_path)
    frames = 16 * int(UCF_TEST.n_segments[TEST_ROWS].sum())
    np.save(tmp_path / "gt.npy", np.zeros(frames, np.uint8))
    wd = tmp_path / "wd"
    assert run.cli(args + ["--workdir", str(wd), "--ground-truth", str(tmp_path / "gt.npy")]) == 2
    err = capsys.readouterr().err
    assert "for 2 of 4 videos" in err and "'RoadAccidents021_x264'" in err and "ground truth all 0" in err
    assert not (wd / "metrics.jsonl").exists()


def test_custom_dataset_from_the_command_line(tmp_path, capsys):
    feats = _extracted(tmp_path / "feats")
    ann = _annotations(tmp_path / "ann.txt")
    wd = tmp_path / "wd"
    args = ["--dataset", "custom", "--features-dir", str(feats), "--annotations", str(ann),
            "--transductive", "--participants", "2", "--rounds", "1", "--workdir", str(wd)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # data notes go through the run's reporter
        summary = run.main(args + ["--json"])
    assert summary["complete"] and summary["dataset"] == "custom"
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(e["event"] == "warning" and "cam2_0001" in e["message"] for e in events)
    # Unannotated training videos: CLAP runs, label quality is unknown (not invented).
    assert summary["pseudo_labels"]["vpl_accuracy"] is None
    config = json.loads((wd / "config.json").read_text())
    described = config["resolved"]["dataset"]
    assert described["feature_dim"] == 16 and described["crops"] == 2
    assert described["test"]["names"] == ["cam1_0001", "cam1_0002", "cam2_0001", "cam2_0002"]
    assert sorted(sum(config["resolved"]["split"]["participant_videos"], [])) == sorted(VIDEOS)
    assert config["run"]["annotations"] == [str(ann)]
    # Weak supervision needs training labels, which these videos lack.
    with pytest.raises(ConfigError, match="weak supervision.*true video labels"):
        validate(run.parse(args + ["--weak-labels", "1"]))


@pytest.mark.parametrize("argv, message", [
    (["--annotations", "x.txt"], "--annotations applies to --dataset custom"),
    (["--transductive"], "--transductive applies to --dataset custom"),
    (["--dataset", "custom"], "needs --features-dir"),
    (["--train-array", "a.npy"], "no such file"),
    (["--dataset", "custom", "--features-dir", "."], "needs --annotations"),
])
def test_data_flag_combinations(argv, message, tmp_path):
    if "x.txt" in argv:
        (tmp_path / "x.txt").write_text("v Normal -1 -1\n")
        argv = [a if a != "x.txt" else str(tmp_path / "x.txt") for a in argv]
    with pytest.raises(ConfigError, match=message):
        validate(run.parse(argv))


def test_custom_data_errors_exit_2_with_one_line(tmp_path, capsys):
    feats = _extracted(tmp_path / "feats")
    (tmp_path / "ann.txt").write_text("cam1_0001 Theft 10 20\n")
    (tmp_path / "test.txt").write_text("cam1_0001\ncam3_0001\n")
    code = run.cli(["--dataset", "custom", "--features-dir", str(feats), "--annotations",
                    str(tmp_path / "ann.txt"), "--test-list", str(tmp_path / "test.txt"),
                    "--workdir", str(tmp_path / "wd")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: test video 'cam3_0001'") and "cam3_0001.npy" in err[0]


@needs_real
def test_real_c3d_custom_run(tmp_path):
    """Train on the 24 extended C3D videos, test on Sultani's 10 with the UCF annotations."""
    ucf = REAL / "ucf_crime"
    ann = REAL / "annotations"
    wd = tmp_path / "wd"
    summary = run.main([
        "--dataset", "custom", "--features-dir", str(ucf / "c3d_extended" / "32seg"),
        "--test-features-dir", str(ucf / "c3d_sultani_txt"),
        "--annotations", str(ann / "ucf_crime_test_annotation_with_frame_counts.txt"),
        str(ann / "extended_roadaccidents_temporal_annotation.txt"),
        "--participants", "3", "--rounds", "1", "--quiet", "--workdir", str(wd)])
    assert summary["complete"] and 0.0 <= summary["final"]["auc"] <= 1.0
    assert summary["pseudo_labels"]["vpl_accuracy"] is not None  # the 24 are annotated
    config = json.loads((wd / "config.json").read_text())
    assert config["resolved"]["dataset"]["test"]["compressed_videos"] == 10
    assert config["resolved"]["dataset"]["feature_dim"] == 4096


def test_feature_lists_and_concatenated_arrays_from_the_command_line(tmp_path):
    """--train-list/--test-list as RTFM .list files, and CLAP's path,start,end lists
    with one concatenated array per part: the sources a run opens read the same rows."""
    args, used = _ucf_files(tmp_path)
    feats = tmp_path / "feats"
    ref_train, ref_test = run.open_sources(validate(run.parse(args)))
    # RTFM-style lists with the authors' absolute paths (looked up under --features-dir).
    (tmp_path / "train.list").write_text("".join(f"/home/a/UCF/{UCF_TRAIN.names[i]}.npy\n" for i in used))
    (tmp_path / "test.list").write_text("".join(f"/home/a/UCF/{UCF_TEST.names[i]}_i3d.npy\n" for i in TEST_ROWS))
    listed = SMALL + ["--features-dir", str(feats), "--train-list", str(tmp_path / "train.list"),
                      "--test-list", str(tmp_path / "test.list")]
    train, test = run.open_sources(validate(run.parse(listed)))
    for a, b in ((train, ref_train), (test, ref_test)):
        assert a.names == b.names
        for i in range(len(a.names)):
            np.testing.assert_array_equal(a.read(i), b.read(i))
    # One concatenated array per part + the released code's path,start,end lists.
    for part, src, in (("train", ref_train), ("test", ref_test)):
        rows, lines, start = [], [], 0
        for i, name in enumerate(src.names):
            x = src.read(i)[:, 0]
            rows.append(x)
            lines.append(f"/data/{name}.npy,{start},{start + len(x)}")
            start += len(x)
        np.save(tmp_path / f"concat_{part}.npy", np.concatenate(rows))
        (tmp_path / f"{part}_ranges.txt").write_text("\n".join(lines) + "\n")
    concat = SMALL + ["--train-array", str(tmp_path / "concat_train.npy"),
                      "--train-list", str(tmp_path / "train_ranges.txt"),
                      "--test-array", str(tmp_path / "concat_test.npy"),
                      "--test-list", str(tmp_path / "test_ranges.txt")]
    resolved = validate(run.parse(concat))
    assert not resolved.synthetic
    train, test = run.open_sources(resolved)
    for a, b in ((train, ref_train), (test, ref_test)):
        assert a.names == b.names
        for i in range(len(a.names)):
            np.testing.assert_array_equal(a.read(i), b.read(i))
    with pytest.raises(ConfigError, match="--train-array needs --train-list"):
        validate(run.parse(SMALL + ["--train-array", str(tmp_path / "concat_train.npy"),
                                    "--features-dir", str(feats)]))
