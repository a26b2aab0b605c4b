"""Run directory: creation, resume, refusal, overwrite, metrics robustness."""

import json
import os
import subprocess
import sys
import textwrap
import time

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


def test_metrics_repair_and_leftovers_of_a_killed_start(tmp_path):
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "config.json.tmp").write_text('{"partial')  # killed while writing config.json
    with rundir.prepare(wd, _record()) as rd:
        assert not rd.resumed and not (wd / "config.json.tmp").exists()
        rd.append_metrics({"round": 1, "auc": 0.5})
        with open(rd.metrics_path, "a") as fh:
            fh.write('{"round": 2, "a')  # killed mid-append
    with rundir.prepare(wd, _record()) as rd:
        assert rd.resumed and rd.repair_metrics() == [{"round": 1, "auc": 0.5}]
        rd.append_metrics({"round": 2, "auc": 0.6})  # not appended onto the partial line
        assert [r["round"] for r in rd.read_metrics()] == [1, 2]
        assert rd.metrics_path.read_text().count("\n") == 2


def test_lock_names_its_holder_and_dies_with_it(tmp_path):
    wd = tmp_path / "run"
    ready = tmp_path / "ready"
    code = textwrap.dedent(f"""
        import time, pathlib
        from clapjax.report import rundir
        rd = rundir.prepare({str(wd)!r}, {{"run": {{"a": 1}}}})
        pathlib.Path({str(ready)!r}).write_text("x")
        time.sleep(600)
    """)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    holder = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        with pytest.raises(rundir.RunDirLocked, match=rf"in use by another run \(pid {holder.pid} on "):
            rundir.prepare(wd, {"run": {"a": 1}})
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs; the OS drops the lock
        holder.wait()
    with rundir.prepare(wd, {"run": {"a": 1}}) as rd:
        assert rd.resumed and rd.lock.held
    assert not (wd / rundir.HOLDER_FILE).exists()


def test_fingerprint_describes_what_changed(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, np.zeros((4, 3), np.float32))
    np.save(b, np.ones((5, 3), np.float32))
    before = rundir.data_fingerprint([("a.npy", a), ("b.npy", b)])
    assert before["files"] == 2 and before["entries"][0]["shape"] == [4, 3]
    assert rundir.data_fingerprint([("a.npy", a), ("b.npy", b)])["digest"] == before["digest"]
    np.save(b, np.ones((6, 3), np.float32))
    c = tmp_path / "c.npy"
    np.save(c, np.zeros(2))
    after = rundir.data_fingerprint([("b.npy", b), ("c.npy", c)])
    text = rundir.describe_fingerprint_change(before["entries"], after["entries"])
    assert "1 changed (e.g. b.npy: shape [5, 3] -> [6, 3]" in text
    assert "1 added (e.g. c.npy)" in text and "1 removed (e.g. a.npy)" in text
    # Same shape and size, one value in a sampled row: the content hash (and mtime) tell.
    x = np.zeros((4, 3), np.float32)
    x[0, 0] = 1
    np.save(a, x)
    again = rundir.data_fingerprint([("a.npy", a)])
    assert "a.npy: content changed" in rundir.describe_fingerprint_change(before["entries"][:1], again["entries"])


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "x.json"
    rundir.write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with rundir.atomic_write(path, "w") as fh:
            fh.write('{"v": 2')
            raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"v": 1} and not (tmp_path / "x.json.tmp").exists()
