"""Every command-line failure: exit status 2 and ONE line ``error: <where>: <problem> (<hint>)``.

A catalogue of bad flags, bad option values, bad data files, bad run
directories and disk errors, each run through ``experiments.run.cli`` as a
user would. Each case names what the line must mention (the option, the
video or the file) and whether a run directory may be left behind (only
when the problem is found while reading feature values; such a directory
holds no work and is reused by the next run).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from clapjax import tables
from clapjax.report import rundir
from experiments import run
from experiments.config import validate
from feature_files import video_file, write_ucf_features

TRAIN = tables.load_table("ucf", "train")
TEST = tables.load_table("ucf", "test")
TINY = ["--preset", "tiny", "--split", "random", "--participants", "2",
        "--videos-per-participant", "2", "--rounds", "2"]
REAL = ["--split", "random", "--participants", "2", "--videos-per-participant", "2", "--rounds", "2"]


@dataclass
class Ctx:
    tmp: Path
    finished: Path  # a finished synthetic run (copied before use)
    real_run: tuple[Path, Path]  # (features, finished run on them) (copied before use)

    @property
    def wd(self) -> Path:
        return self.tmp / "wd"

    def feats(self) -> Path:
        return write_ucf_features(self.tmp / "feats")

    def done(self) -> Path:
        shutil.copytree(self.finished, self.wd)
        return self.wd

    def used_train_video(self, j: int = 0) -> str:
        """Name of a training video the REAL split reads."""
        split = validate(run.parse(REAL + ["--features-dir", str(self.tmp)])).split
        return TRAIN.names[int(np.concatenate(split.participants)[j])]


def train_file(folder: Path, ctx: Ctx) -> Path:
    return folder / "train" / f"{ctx.used_train_video()}.npy"


@dataclass
class Case:
    name: str
    build: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]
    leaves_workdir: bool = False


CASES: list[Case] = []


def case(name, *expect, leaves_workdir=False):
    def register(fn):
        CASES.append(Case(name, fn, tuple(expect), leaves_workdir))
        return fn
    return register


def flags(name, argv, *expect):
    CASES.append(Case(name, lambda ctx: TINY + argv, tuple(expect)))


# ------------------------------------------------------------------ flags and values
flags("choice", ["--split", "diagonal"], "--split", "diagonal")
flags("not-an-int", ["--rounds", "abc"], "--rounds")
flags("unknown-flag", ["--foo", "1"], "--foo")
flags("participants-0", ["--participants", "0"], "--participants")
flags("no-official-split", ["--participants", "7", "--videos-per-participant", "1"], "--generate-split")
flags("rounds-0", ["--rounds", "0"], "--rounds")
flags("local-epochs-negative", ["--local-epochs", "-1"], "--local-epochs")
flags("lr-nan", ["--train.lr", "nan"], "--train.lr", "finite")
flags("lr-inf", ["--train.lr", "inf"], "--train.lr", "finite")
flags("lr-negative", ["--train.lr", "-0.1"], "--train.lr")
flags("l2-nan", ["--train.l2", "nan"], "--train.l2")
flags("l2-negative", ["--train.l2", "-1"], "--train.l2")
flags("mu-inf", ["--train.mu", "inf"], "--train.mu")
flags("momentum-1", ["--train.momentum", "1"], "--train.momentum")
flags("server-lr-0", ["--train.server-lr", "0"], "--train.server-lr")
flags("adam-b1-1", ["--train.server-b1", "1.0"], "--train.server-b1", "[0, 1)")
flags("adam-b1-negative", ["--train.server-b1", "-0.1"], "--train.server-b1")
flags("adam-b2-big", ["--train.server-b2", "1.5"], "--train.server-b2")
flags("eps-negative", ["--train.server-eps", "-1e-3"], "--train.server-eps")
flags("seed-negative", ["--seed", "-1"], "--seed")
flags("seed-huge", ["--seed", str(2**40)], "--seed")
flags("batch-0", ["--train.batch-size", "0"], "--train.batch-size")
flags("vmap-groups-0", ["--train.vmap-groups", "0"], "--train.vmap-groups")
flags("plr-start-negative", ["--train.plr-start-round", "-1"], "--train.plr-start-round")
flags("optimizer-choice", ["--train.optimizer", "lamb"], "--train.optimizer")
flags("beta-0", ["--pl.beta", "0"], "--pl.beta")
flags("beta-above-1", ["--pl.beta", "1.5"], "--pl.beta")
flags("beta-nan", ["--pl.beta", "nan"], "--pl.beta")
flags("plr-beta-0", ["--pl.plr-beta", "0"], "--pl.plr-beta")
flags("alpha-1", ["--pl.alpha", "1"], "--pl.alpha")
flags("gmm-seed-negative", ["--pl.gmm-seed", "-3"], "--pl.gmm-seed")
flags("gmm-max-iter-0", ["--pl.gmm-max-iter", "0"], "--pl.gmm-max-iter")
flags("var-floor-nan", ["--pl.var-floor", "nan"], "--pl.var-floor")
flags("diag-zero-value-0", ["--pl.diag-zero-value", "0"], "--pl.diag-zero-value")
flags("iou-threshold-2", ["--pl.plr-iou-threshold", "2"], "--pl.plr-iou-threshold")
flags("dropout-1", ["--model.dropout-rate", "1"], "--model.dropout-rate")
flags("hidden-0", ["--model.hidden", "0", "5"], "--model.hidden")
flags("quiet-and-json", ["--json", "--quiet"], "--quiet and --json")
flags("local-with-scaffold", ["--setting", "local", "--aggregator", "scaffold"], "--aggregator scaffold")
flags("weak-labels-above-k", ["--weak-labels", "3"], "--weak-labels")
flags("weak-participant-index", ["--weak-participants", "5"], "--weak-participants")
flags("weak-both", ["--weak-labels", "1", "--weak-participants", "1"], "--weak-labels")
flags("videos-per-participant-0", ["--videos-per-participant", "0"], "--videos-per-participant")
flags("nonfinite-synthetic", ["--nonfinite", "drop"], "--nonfinite")
flags("nonfinite-choice", ["--nonfinite", "skip"], "--nonfinite")
flags("segment-labels-synthetic", ["--train-segment-labels", "."], "--train-segment-labels")


@case("features-dir-missing", "nope", "no such directory")
def _(ctx):
    return REAL + ["--features-dir", str(ctx.tmp / "nope")]


@case("features-dir-is-a-file", "afile")
def _(ctx):
    (ctx.tmp / "afile").write_text("x")
    return REAL + ["--features-dir", str(ctx.tmp / "afile")]


@case("preset-with-features", "--preset")
def _(ctx):
    return REAL + ["--features-dir", str(ctx.tmp), "--preset", "tiny"]


@case("segment-labels-dir-missing", "--train-segment-labels", "nolabels")
def _(ctx):
    return REAL + ["--features-dir", str(ctx.feats()), "--train-segment-labels", str(ctx.tmp / "nolabels")]


# ------------------------------------------------------------------ split files
def _split_file(ctx, participants, dataset="ucf", name="mine.json"):
    path = ctx.tmp / name
    path.write_text(json.dumps({"dataset": dataset, "participants": participants}))
    return path


@case("split-file-missing", "missing.json")
def _(ctx):
    return TINY[:2] + ["--split-file", str(ctx.tmp / "missing.json")]


@case("split-file-not-json", "mine.json", "JSON")
def _(ctx):
    (ctx.tmp / "mine.json").write_text("{participants: [[1, 2]")
    return TINY[:2] + ["--split-file", str(ctx.tmp / "mine.json")]


@case("split-file-huge-index", "mine.json", "1000000000000")
def _(ctx):
    return TINY[:2] + ["--split-file", str(_split_file(ctx, [[0, 1], [2, 10**12]]))]


@case("split-file-negative-index", "mine.json", "-1")
def _(ctx):
    return TINY[:2] + ["--split-file", str(_split_file(ctx, [[0, 1], [2, -1]]))]


@case("split-file-video-twice", "mine.json")
def _(ctx):
    return TINY[:2] + ["--split-file", str(_split_file(ctx, [[0, 1], [1, 2]]))]


@case("split-file-other-dataset", "mine.json", "xd")
def _(ctx):
    return TINY[:2] + ["--split-file", str(_split_file(ctx, [[0, 1], [2, 3]], dataset="xd"))]


@case("split-file-string-index", "mine.json")
def _(ctx):
    return TINY[:2] + ["--split-file", str(_split_file(ctx, [["a"], [2, 3]]))]


@case("split-file-and-generate", "--split-file")
def _(ctx):
    return TINY[:2] + ["--split-file", str(_split_file(ctx, [[0, 1], [2, 3]])), "--generate-split"]


@case("split-file-participants-mismatch", "mine.json")
def _(ctx):
    return TINY[:2] + ["--split-file", str(_split_file(ctx, [[0, 1], [2, 3]])), "--participants", "3"]


# ------------------------------------------------------------------ feature files
def _real(ctx, folder, *extra):
    return REAL + ["--features-dir", str(folder), *extra]


@case("features-dir-empty", "empty", "holds no feature files")
def _(ctx):
    (ctx.tmp / "empty").mkdir()
    return _real(ctx, ctx.tmp / "empty")


def data_case(name, mutate, *expect, leaves_workdir=False, extra=(), where="train"):
    """A case that damages one file of a fresh feature folder (``where``: the used
    training video or the first test video) and expects its name in the error."""
    def build(ctx):
        folder = ctx.feats()
        path = train_file(folder, ctx) if where == "train" else video_file(folder, "test", 0)
        mutate(path)
        return _real(ctx, folder, *extra)
    video = "<video>" if where == "train" else "<test video>"
    CASES.append(Case(name, build, (video, *expect), leaves_workdir))


def _save(array):
    return lambda p: np.save(p, array)


def _truncate(p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 20])


def _with(value, rows=slice(2, 3)):
    def mutate(p):
        x = np.load(p)
        x[rows] = value
        np.save(p, x)
    return mutate


data_case("npy-missing", lambda p: p.unlink(), "feature file not found")
data_case("npy-truncated", _truncate, "truncated")
data_case("npy-not-npy", lambda p: p.write_bytes(b"hello, not an array"), "not a valid .npy")
data_case("npy-empty-file", lambda p: p.write_bytes(b""), "not a valid .npy")
data_case("npy-pickle", _save(np.array([{"a": 1}], dtype=object)), "pickle")
data_case("npy-wrong-dimension", _save(np.zeros((8, 5), np.float32)), "feature dimension 5")
data_case("npy-wrong-crops", _save(np.zeros((8, 2, 4), np.float32)), "crop count 2")
data_case("npy-zero-segments", _save(np.zeros((0, 4), np.float32)), "0 segments")
data_case("npy-1d", _save(np.zeros(8, np.float32)), "shape (8,)")
data_case("npy-4d", _save(np.zeros((8, 1, 1, 4), np.float32)), "shape (8, 1, 1, 4)")
data_case("npy-complex", _save(np.zeros((8, 4), np.complex64)), "complex64")
data_case("npy-strings", _save(np.array([["a"] * 4] * 8)), "<U1")
data_case("npy-nan", _with(np.nan), "NaN", "--nonfinite drop", leaves_workdir=True)
data_case("npy-inf", _with(np.inf), "NaN or inf", leaves_workdir=True)
data_case("npy-all-nan-dropped", _with(np.nan, slice(None)), "every segment", leaves_workdir=False,
          extra=("--nonfinite", "drop"))
data_case("npy-huge", _with(1e20), "overflow", "1e+20", leaves_workdir=True)
data_case("npy-dangling-symlink", lambda p: (p.unlink(), p.symlink_to(p.parent / "gone.npy")),
          "feature file not found")
data_case("test-npy-missing", lambda p: p.unlink(), "feature file not found", where="test")
data_case("test-npy-truncated", _truncate, "truncated", where="test")
data_case("test-npy-short", lambda p: np.save(p, np.load(p)[:-1]), "frame ground truth", where="test")
data_case("test-npy-nan", _with(np.nan), "NaN", leaves_workdir=True, where="test")
data_case("test-npy-nan-with-drop", _with(np.nan), "NaN", leaves_workdir=True, where="test",
          extra=("--nonfinite", "drop"))


@case("test-npy-huge", "<test video>", "overflow", leaves_workdir=True)
def _(ctx):
    folder = ctx.feats()
    p = video_file(folder, "test", 0)
    x = np.load(p)
    x[:] = 1e20
    np.save(p, x)
    return _real(ctx, folder)


@case("npy-two-layouts", "<video>", "keep one")
def _(ctx):
    folder = ctx.feats()
    p = train_file(folder, ctx)
    shutil.copy(p, p.with_name(p.stem + "_i3d.npy"))
    return _real(ctx, folder)


@case("npy-same-name-twice", "<video>", "keep one")
def _(ctx):
    folder = ctx.feats()
    p = train_file(folder, ctx)
    (folder / "copy").mkdir()
    shutil.copy(p, folder / "copy" / p.name)
    return _real(ctx, folder)


def _labels_case(name, write, *expect):
    def build(ctx):
        folder = ctx.feats()
        labels = ctx.tmp / "labels"
        labels.mkdir()
        split = validate(run.parse(REAL + ["--features-dir", str(folder)])).split
        for j, t in enumerate(np.concatenate(split.participants)):
            write(labels / f"{TRAIN.names[int(t)]}.npy", j)
        return _real(ctx, folder, "--train-segment-labels", str(labels))
    CASES.append(Case(name, build, ("<video>", *expect)))


_labels_case("segment-labels-wrong-length", lambda p, j: np.save(p, np.zeros(5, np.uint8)), "5 labels")
_labels_case("segment-labels-not-binary", lambda p, j: np.save(p, np.full(8, 2, np.uint8)), "0 or 1")
_labels_case("segment-labels-missing-file",
             lambda p, j: None if j == 0 else np.save(p, np.zeros(8, np.uint8)), "not found")


# ------------------------------------------------------------------ run directories
@case("workdir-is-a-file", "wd", "not a directory", leaves_workdir=True)
def _(ctx):
    ctx.wd.write_text("x")
    return TINY + ["--workdir", str(ctx.wd)]


@case("workdir-foreign", "not a clapjax run directory", leaves_workdir=True)
def _(ctx):
    ctx.wd.mkdir()
    (ctx.wd / "thesis.tex").write_text("mine")
    return TINY + ["--workdir", str(ctx.wd)]


@case("workdir-below-a-file", "afile", "check the path")
def _(ctx):
    (ctx.tmp / "afile").write_text("x")
    return TINY + ["--workdir", str(ctx.tmp / "afile" / "run")]


@case("workdir-other-configuration", "run.variant: 'paper' -> 'reference'", "--overwrite", leaves_workdir=True)
def _(ctx):
    return TINY + ["--workdir", str(ctx.done()), "--variant", "reference"]


@case("workdir-fewer-rounds", "holds 2 completed rounds", "--rounds 2 or more", leaves_workdir=True)
def _(ctx):
    return [a if a != "2" or i != len(TINY) - 1 else "1" for i, a in enumerate(TINY)] + [
        "--workdir", str(ctx.done())]


@case("metrics-edited", "metrics.jsonl:1", "not valid JSON", leaves_workdir=True)
def _(ctx):
    wd = ctx.done()
    lines = (wd / "metrics.jsonl").read_text().splitlines()
    (wd / "metrics.jsonl").write_text("garbage\n" + "\n".join(lines[1:]) + "\n")
    return TINY + ["--workdir", str(wd)]


@case("metrics-out-of-order", "metrics.jsonl", "expected round 1", leaves_workdir=True)
def _(ctx):
    wd = ctx.done()
    lines = (wd / "metrics.jsonl").read_text().splitlines()
    (wd / "metrics.jsonl").write_text("\n".join(lines[::-1]) + "\n")
    return TINY + ["--workdir", str(wd)]


@case("config-unreadable", "config.json", "not valid JSON", "--overwrite", leaves_workdir=True)
def _(ctx):
    wd = ctx.done()
    (wd / "config.json").write_text("{ not json")
    return TINY + ["--workdir", str(wd)]


@case("features-changed-in-place", "input data changed", "1 changed", "--overwrite", leaves_workdir=True)
def _(ctx):
    folder, done = ctx.real_run
    feats = ctx.tmp / "feats"
    shutil.copytree(folder, feats, symlinks=True)
    shutil.copytree(done, ctx.wd)
    cfg = json.loads((ctx.wd / "config.json").read_text())
    # The copied run must point at the copied features: rewrite its path as if it had run there.
    cfg["run"]["features_dir"] = str(feats.resolve())
    (ctx.wd / "config.json").write_text(json.dumps(cfg))
    p = feats / "train" / f"{ctx.used_train_video()}.npy"
    np.save(p, np.load(p) + 1.0)
    return _real(ctx, feats)


# ------------------------------------------------------------------ disk and numerics
@case("disk-full", "metrics.jsonl", "No space left on device", "free disk space", leaves_workdir=True)
def _(ctx):
    def full(self, record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.metrics_path))
    ctx.patch(rundir.RunDir, "append_metrics", full)
    return TINY + ["--workdir", str(ctx.wd)]


@case("permission-denied", "config.json", "Permission denied", "permissions", leaves_workdir=True)
def _(ctx):
    def denied(path, data):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    ctx.patch(rundir, "write_json", denied)
    return TINY + ["--workdir", str(ctx.wd)]


@case("training-diverges", "non-finite training loss", "p0", "--train.lr", leaves_workdir=True)
def _(ctx):
    return TINY + ["--train.lr", "1e38", "--train.plr-start-round", "none"]


# ------------------------------------------------------------------ the test
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    wd = tmp_path_factory.mktemp("finished") / "run"
    run.main(TINY + ["--workdir", str(wd), "--quiet"])
    return wd


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("real")
    folder = write_ucf_features(base / "feats")
    wd = base / "run"
    run.main(REAL + ["--features-dir", str(folder), "--workdir", str(wd), "--quiet"])
    return folder, wd


def _expected(ctx: Ctx, text: str) -> str:
    if text == "<video>":
        return ctx.used_train_video()
    if text == "<test video>":
        return TEST.names[0]
    return text


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_every_failure_is_one_line_with_status_2(c, tmp_path, capsys, monkeypatch, finished, real_run):
    ctx = Ctx(tmp_path, finished, real_run)
    ctx.patch = lambda obj, name, value: monkeypatch.setattr(obj, name, value)
    argv = c.build(ctx)
    if "--workdir" not in argv:
        argv = argv + ["--workdir", str(ctx.wd)]
    if "--json" not in argv:
        argv = argv + ["--quiet"]
    capsys.readouterr()
    status = run.cli(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "---" not in lines[0] and "─" not in lines[0] and "Traceback" not in lines[0]
    for text in c.expect:
        assert _expected(ctx, text) in lines[0], (text, lines[0])
    if not c.leaves_workdir:
        assert not ctx.wd.exists(), f"{c.name}: created {sorted(p.name for p in ctx.wd.iterdir())}"


def test_catalogue_is_broad():
    assert len(CASES) >= 100 and len({c.name for c in CASES}) == len(CASES)


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert run.cli(TINY + ["--pl.beta", "0", "--debug", "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("error: --pl.beta")


def test_library_options_refuse_bad_values():
    from clapjax.engine.options import TrainOptions
    from clapjax.model import ModelOptions
    from clapjax.options import PseudoLabelOptions

    for bad in (dict(lr=float("nan")), dict(l2=float("inf")), dict(server_b1=1.0), dict(server_eps=-1e-8),
                dict(seed=-1), dict(seed=2**32), dict(momentum=1.0), dict(mu=float("nan"))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainOptions(**bad)
    for bad in (dict(beta=0.0), dict(plr_beta=0.0), dict(beta=float("nan")), dict(var_floor=float("nan")),
                dict(gmm_seed=-1), dict(plr_iou_threshold=1.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            PseudoLabelOptions(**bad)
    with pytest.raises(ValueError, match="dropout_rate"):
        ModelOptions(dropout_rate=float("nan"))
    assert TrainOptions(seed=2**32 - 2).seed == 2**32 - 2


def test_a_data_error_found_while_reading_leaves_a_reusable_directory(tmp_path, capsys):
    folder = write_ucf_features(tmp_path / "feats")
    split = validate(run.parse(REAL + ["--features-dir", str(folder)])).split
    path = folder / "train" / f"{TRAIN.names[int(np.concatenate(split.participants)[0])]}.npy"
    good = np.load(path)
    bad = good.copy()
    bad[1] = np.nan
    np.save(path, bad)
    argv = REAL + ["--features-dir", str(folder), "--workdir", str(tmp_path / "wd"), "--quiet"]
    assert run.cli(argv) == 2
    assert not rundir.RunDir(tmp_path / "wd").holds_work()
    np.save(path, good)  # fixed: the same command now runs (no --overwrite needed)
    assert run.cli(argv) == 0
    assert [r["round"] for r in rundir.RunDir(tmp_path / "wd").read_metrics()] == [1, 2]
    # --nonfinite drop is recorded in config.json and drops the bad segment
    np.save(path, bad)
    drop = REAL + ["--features-dir", str(folder), "--workdir", str(tmp_path / "drop"), "--quiet",
                   "--nonfinite", "drop"]
    capsys.readouterr()
    assert run.cli(drop) == 0
    assert "dropped 1 of 8 segments" in capsys.readouterr().err
    assert json.loads((tmp_path / "drop" / "config.json").read_text())["run"]["nonfinite"] == "drop"
