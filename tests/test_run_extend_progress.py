"""Extending a run's rounds, answering a finished run from its directory, run
identity (paths, symlinks), elapsed time across resumes, and the three output modes."""

import io
import json
import os

import pytest

from clapjax import pipeline
from clapjax.report import progress, rundir
from experiments import run
from feature_files import write_ucf_features

TINY = ["--preset", "tiny", "--split", "random", "--participants", "2", "--videos-per-participant", "2"]
KEYS = ("round", "auc", "ap_sklearn", "ap_trapezoid", "train_loss", "label_quality",
        "plr_applied", "labels_changed")


class Stopped(Exception):
    pass


def _strip(wd):
    return [{k: r[k] for k in KEYS} for r in rundir.RunDir(wd).read_metrics()]


def test_extending_rounds_equals_a_longer_run(tmp_path, capsys, monkeypatch):
    longer = tmp_path / "four"
    run.main(TINY + ["--rounds", "4", "--workdir", str(longer), "--quiet"])
    reference = _strip(longer)

    # A finished 2-round run extended to 4 rounds continues from its checkpoint.
    wd = tmp_path / "two"
    run.main(TINY + ["--rounds", "2", "--workdir", str(wd), "--quiet"])
    capsys.readouterr()
    summary = run.main(TINY + ["--rounds", "4", "--workdir", str(wd)])
    out = capsys.readouterr().out
    assert "extending the run from 2 to 4 rounds" in out and "resuming after round 2" in out
    assert _strip(wd) == reference
    assert summary["complete"] is True and summary["rounds"] == 4
    config = json.loads((wd / "config.json").read_text())
    assert config["run"]["rounds"] == 4 and config["resolved"]["train"]["rounds"] == 4
    (entry,) = config["rounds_history"]
    assert entry["from_rounds"] == 2 and entry["to_rounds"] == 4 and entry["continued_from_checkpoint"] == 2
    # Per-participant values carry the participants' names.
    assert list(summary["pseudo_labels"]["vpl_accuracy_per_participant"]) == ["p0", "p1"]

    # Fewer rounds than completed: refused, and nothing changes.
    with pytest.raises(rundir.RunDirError, match="holds 4 completed rounds"):
        run.main(TINY + ["--rounds", "3", "--workdir", str(wd)])
    assert json.loads((wd / "config.json").read_text()) == config

    # An interrupted run extended: the same numbers again; elapsed continues across the resume.
    cut = tmp_path / "cut"

    def stop(r, rec):
        if r == 1:
            raise Stopped

    with pytest.raises(Stopped):
        run.main(TINY + ["--rounds", "2", "--workdir", str(cut), "--quiet"],
                 hooks=run.RunHooks(after_round=stop))
    first = rundir.RunDir(cut).read_metrics()[0]["elapsed_s"]
    run.main(TINY + ["--rounds", "4", "--workdir", str(cut), "--quiet"])
    assert _strip(cut) == reference
    elapsed = [r["elapsed_s"] for r in rundir.RunDir(cut).read_metrics()]
    assert elapsed[0] == first and all(b > a for a, b in zip(elapsed, elapsed[1:]))

    # A finished run answers from its directory: no feature is read again.
    def no_reading(*args, **kwargs):
        raise AssertionError("a finished run must not read its training features")

    monkeypatch.setattr(pipeline, "load_training_set", no_reading)
    capsys.readouterr()
    again = run.main(TINY + ["--rounds", "4", "--workdir", str(wd)])
    assert again["final"] == summary["final"]
    assert "finished: 4 rounds" in capsys.readouterr().out


def test_relative_absolute_and_symlinked_feature_folders_are_one_run(tmp_path, monkeypatch, capsys):
    data = write_ucf_features(tmp_path / "data")
    links = tmp_path / "links"  # train/ and test/ are symlinks to the real folders
    links.mkdir()
    for part in ("train", "test"):
        os.symlink(data / part, links / part)
    monkeypatch.chdir(tmp_path)
    argv = ["--split", "random", "--participants", "2", "--videos-per-participant", "1",
            "--rounds", "1", "--workdir", "wd"]
    first = run.main(argv + ["--features-dir", "links"])
    assert first["complete"] is True
    config = json.loads((tmp_path / "wd" / "config.json").read_text())
    assert config["run"]["features_dir"] == str((tmp_path / "links").resolve())
    assert config["data"]["files"] > 290 and len(config["data"]["digest"]) == 64
    capsys.readouterr()
    again = run.main(argv + ["--features-dir", str(tmp_path / "links")])  # absolute spelling
    assert again["final"] == first["final"] and "finished" in capsys.readouterr().out


def _events(text):
    return [json.loads(line) for line in text.splitlines()]


def test_output_modes_and_degenerate_pseudo_labels(tmp_path, capsys):
    argv = TINY + ["--rounds", "1", "--pl.gmm-max-iter", "1"]  # a GMM that cannot converge
    run.main(argv + ["--workdir", str(tmp_path / "normal")])
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "[bold" not in out + err  # no escape codes or markup off a terminal
    assert out.splitlines()[-2].startswith("round 1/1  AUC") and "elapsed" in out.splitlines()[-2]
    assert out.splitlines()[-1].startswith("final AUC")
    assert "warning: pseudo-labels: participant p0: GMM did not converge" in err
    assert "video statistics 2/2 done" in err and "round" not in err  # progress only on stderr

    run.main(argv + ["--workdir", str(tmp_path / "json"), "--json"])
    out, err = capsys.readouterr()
    events = _events(out)  # every stdout line is JSON
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "summary" and "round" in kinds and "stage" in kinds
    assert any(e["event"] == "warning" and "GMM did not converge" in e["message"] for e in events)
    assert err == ""

    run.main(argv + ["--workdir", str(tmp_path / "quiet"), "--quiet"])
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and out.startswith("final AUC")
    assert err.count("\n") == 2 and "GMM did not converge" in err  # the warnings only


def test_live_progress_on_a_terminal_stays_on_stderr():
    out, err = io.StringIO(), io.StringIO()
    rep = progress.Reporter("normal", out, err, live=True, clock=progress.RunClock(prior_s=100.0))
    with rep.stage("video statistics", total=3) as st:
        for k in range(3):
            st.update(k + 1)
        rep.warn("something odd")
    with rep.round_progress(1, 10, expected_s=30.0) as live:
        live.phase("local training")
        live.phase("evaluating")
    rep.round({"round": 1, "auc": 0.5, "ap_sklearn": 0.1, "train_loss": 0.7}, 10,
              rep.clock.elapsed(), 270.0)
    assert "\x1b" not in out.getvalue()  # the live display never touches stdout
    assert out.getvalue().startswith("round  1/10  AUC 0.5000") and "elapsed 1:40" in out.getvalue()
    text = err.getvalue()
    assert "\x1b" in text  # rich drew (and removed) the live display on stderr
    assert "video statistics 3/3 done in" in text and "warning: something odd" in text
    assert rep._progress is None


def test_run_clock_counts_earlier_sessions():
    clock = progress.RunClock(prior_s=60.0)
    assert clock.elapsed() >= 60.0
    assert clock.eta([30.0, 10.0, 12.0, 11.0], remaining=2) == pytest.approx(2 * 11.5)
    assert clock.eta([], remaining=3) is None and clock.eta([5.0], remaining=0) == 0.0
