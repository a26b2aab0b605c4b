"""Faults at the named points: a killed run resumes to exactly the numbers of an
uninterrupted one, and nothing it wrote is left unusable.

The kills are real (``SIGKILL`` of a child process running ``experiments.run``
with one library function patched to die half-way through its write); the
resumes run in this process.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from clapjax.report import rundir
from experiments import run

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--preset", "tiny", "--split", "random", "--participants", "2",
        "--videos-per-participant", "2", "--rounds", "3", "--quiet"]
KEYS = ("round", "auc", "ap_sklearn", "ap_trapezoid", "train_loss", "label_quality",
        "plr_applied", "labels_changed")


def _strip(records):
    return [{k: r[k] for k in KEYS} for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    wd = tmp_path_factory.mktemp("reference") / "run"
    run.main(ARGS + ["--workdir", str(wd)])
    return _strip(rundir.RunDir(wd).read_metrics())


def _child(workdir: Path, patch: str, extra=()) -> subprocess.CompletedProcess:
    """Runs experiments.run in a child process after executing ``patch`` there."""
    code = KILL + textwrap.dedent(patch) + textwrap.dedent(f"""
        from experiments import run
        run.main({[*ARGS, *extra, "--workdir", str(workdir)]!r})
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


class Stopped(Exception):
    """Stands for a crash of the run (raised from an after-round hook)."""


KILL = "import os, signal\ndef die():\n    os.kill(os.getpid(), signal.SIGKILL)\n"


def test_kill_during_the_metrics_append(tmp_path, reference):
    wd = tmp_path / "run"
    res = _child(wd, """
        from clapjax.report import rundir
        original = rundir.RunDir.append_metrics
        def append(self, record):
            if record["round"] == 2:  # half of the line reaches the disk, then the process dies
                line = rundir.json.dumps(rundir.to_jsonable(record))
                with open(self.metrics_path, "a") as fh:
                    fh.write(line[: len(line) // 2]); fh.flush(); os.fsync(fh.fileno())
                die()
            original(self, record)
        rundir.RunDir.append_metrics = append
    """)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert not (wd / "metrics.jsonl").read_text().endswith("\n")  # the partial line is there
    run.main(ARGS + ["--workdir", str(wd)])
    assert _strip(rundir.RunDir(wd).read_metrics()) == reference
    lines = (wd / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["round"] for l in lines] == [1, 2, 3]  # repaired, not appended onto
    # Resuming again (and again) keeps working: the file stays valid.
    assert run.main(ARGS + ["--workdir", str(wd)])["final"]["round"] == 3


def test_kill_during_the_pseudo_label_save(tmp_path, reference):
    wd = tmp_path / "run"
    res = _child(wd, """
        from clapjax import pipeline
        def save(target, pl):  # a partial zip reaches the disk, then the process dies
            target.write(b"PK\\x03\\x04" + b"\\0" * 100); target.flush(); os.fsync(target.fileno())
            die()
        pipeline.save_pseudo_labels = save
    """)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert not (wd / "pseudo_labels.npz").exists()  # only the temporary file was written
    assert (wd / "pseudo_labels.npz.tmp").exists()
    run.main(ARGS + ["--workdir", str(wd)])
    assert _strip(rundir.RunDir(wd).read_metrics()) == reference
    assert not (wd / "pseudo_labels.npz.tmp").exists()


def test_corrupt_pseudo_label_cache_is_recomputed(tmp_path, reference, capsys):
    wd = tmp_path / "run"

    def stop(r, rec):
        if r == 1:
            raise Stopped

    with pytest.raises(Stopped):
        run.main(ARGS + ["--workdir", str(wd)], hooks=run.RunHooks(after_round=stop))
    (wd / "pseudo_labels.npz").write_bytes(b"PK\x03\x04 truncated")  # e.g. a disk error
    capsys.readouterr()
    run.main(ARGS + ["--workdir", str(wd)])
    err = capsys.readouterr().err
    assert "pseudo_labels.npz: unreadable" in err and "recomputing" in err
    assert _strip(rundir.RunDir(wd).read_metrics()) == reference


def test_kill_during_a_checkpoint_write(tmp_path, reference):
    wd = tmp_path / "run"
    res = _child(wd, """
        from orbax.checkpoint._src.handlers import base_pytree_checkpoint_handler as h
        original = h.BasePyTreeCheckpointHandler.finalize
        calls = []
        def finalize(self, directory):  # round 2's arrays are written, not yet committed
            calls.append(directory)
            if len(calls) == 2:
                die()
            return original(self, directory)
        h.BasePyTreeCheckpointHandler.finalize = finalize
    """)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert len(rundir.RunDir(wd).read_metrics()) == 1
    run.main(ARGS + ["--workdir", str(wd)])
    assert _strip(rundir.RunDir(wd).read_metrics()) == reference


def test_corrupt_latest_checkpoint_falls_back(tmp_path, reference, capsys):
    wd = tmp_path / "run"

    def stop(r, rec):
        if r == 2:
            raise Stopped

    with pytest.raises(Stopped):
        run.main(ARGS + ["--workdir", str(wd)], hooks=run.RunHooks(after_round=stop))
    files = [p for p in (wd / "checkpoints" / "2").rglob("*") if p.is_file()]
    assert files
    for p in files:  # every file of the newest checkpoint damaged
        p.write_bytes(b"\0garbage")
    capsys.readouterr()
    run.main(ARGS + ["--workdir", str(wd)])
    err = capsys.readouterr().err
    assert "unreadable checkpoint(s) skipped" in err and str(wd / "checkpoints" / "2") in err
    assert "resuming from round 1" in err
    assert _strip(rundir.RunDir(wd).read_metrics()) == reference


def test_two_runs_on_one_workdir(tmp_path, capsys):
    wd = tmp_path / "run"
    marker = tmp_path / "holding"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from experiments import run
        def hold(r, rec):
            Path({str(marker)!r}).write_text("x")
            time.sleep(600)
        run.main({[*ARGS, "--workdir", str(wd)]!r}, hooks=run.RunHooks(after_round=hold))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    first = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        before = (wd / "metrics.jsonl").read_text()
        assert run.cli(ARGS + ["--workdir", str(wd)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: workdir {wd}: in use by another run")
        assert f"pid {first.pid} on " in err and " since " in err
        assert (wd / "metrics.jsonl").read_text() == before  # the second run wrote nothing
    finally:
        first.kill()  # SIGKILL: the OS releases the lock
        first.wait()
    summary = run.main(ARGS + ["--workdir", str(wd)])
    assert summary["complete"] is True
    assert [r["round"] for r in rundir.RunDir(wd).read_metrics()] == [1, 2, 3]
