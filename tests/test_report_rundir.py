"""Run directory: creation, resume, refusal, overwrite, metrics robustness."""

import json

import numpy as np
import pytest

from clapjax.report import rundir


def _record(**run):
    return {"run": {"split": "event", "participants": 13, **run}, "resolved": {"beta": 0.2},
            "environment": {"python": "x"}}


def test_create_resume_refuse_overwrite(tmp_path):
    wd = tmp_path / "run"
    rd = rundir.prepare(wd, _record())
    assert not rd.resumed and (wd / "config.json").exists()
    rd.append_metrics({"round": 1, "auc": 0.5})
    # Same config (environment may differ): resume.
    rec = _record()
    rec["environment"] = {"python": "y"}
    again = rundir.prepare(wd, rec)
    assert again.resumed and again.read_metrics() == [{"round": 1, "auc": 0.5}]
    # Different config: refused with the differing field named.
    with pytest.raises(rundir.RunDirError, match=r"run.participants: 13 -> 5"):
        rundir.prepare(wd, _record(participants=5))
    # Overwrite wipes it.
    fresh = rundir.prepare(wd, _record(participants=5), overwrite=True)
    assert not fresh.resumed and fresh.read_metrics() == []
    assert json.loads((wd / "config.json").read_text())["run"]["participants"] == 5


def test_refuses_foreign_directory_even_with_overwrite(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(rundir.RunDirError, match="not a clapjax run directory"):
        rundir.prepare(tmp_path, _record(), overwrite=True)
    assert (tmp_path / "precious.txt").exists()


def test_metrics_partial_last_line_and_order(tmp_path):
    rd = rundir.prepare(tmp_path / "r", _record())
    rd.append_metrics({"round": 1, "auc": np.float32(0.25), "x": float("nan")})
    rd.append_metrics({"round": 2, "auc": 0.5})
    with open(rd.metrics_path, "a") as fh:
        fh.write('{"round": 3, "au')  # killed mid-write
    recs = rd.read_metrics()
    assert [r["round"] for r in recs] == [1, 2] and recs[0]["x"] is None
    assert rd.truncate_metrics(1) == recs[:1]
    assert rd.read_metrics() == recs[:1]
    rd.append_metrics({"round": 3})
    with pytest.raises(rundir.RunDirError, match="expected round 2"):
        rd.read_metrics()


def test_best_and_final_flags_test_selection():
    metrics = [{"round": 1, "auc": 0.6}, {"round": 2, "auc": 0.8}, {"round": 3, "auc": 0.7}]
    s = rundir.best_and_final(metrics)
    assert s["final"]["round"] == 3 and s["best"]["round"] == 2
    assert s["best"]["selected_on"] == "test set"
    assert rundir.best_and_final([])["best"] is None


def test_environment_records_versions():
    env = rundir.environment()
    assert env["packages"]["numpy"] == np.__version__
    assert set(env["git"]) == {"commit", "dirty"}
