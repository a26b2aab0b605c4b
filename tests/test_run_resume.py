"""Resume: an interrupted run continues to the same numbers as an uninterrupted one."""

import json

import pytest

from experiments import run

ARGS = ["--preset", "tiny", "--split", "random", "--participants", "2",
        "--videos-per-participant", "2", "--rounds", "3", "--quiet"]
# PLR (paper preset) starts at round 2, so refined labels must survive the resume.
KEYS = ("round", "auc", "ap_sklearn", "ap_trapezoid", "train_loss", "label_quality",
        "plr_applied", "labels_changed")


class Killed(Exception):
    pass


def _metrics(wd):
    return [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]


def _strip(records):
    return [{k: r[k] for k in KEYS} for r in records]


def test_interrupted_run_resumes_to_identical_numbers(tmp_path, capsys):
    full = tmp_path / "full"
    run.main(ARGS + ["--workdir", str(full)])
    reference = _strip(_metrics(full))
    assert [r["plr_applied"] for r in reference] == [False, True, True]

    wd = tmp_path / "interrupted"

    def kill_after_two(round_number, record):
        if round_number == 2:
            raise Killed()

    with pytest.raises(Killed):
        run.main(ARGS + ["--workdir", str(wd)], hooks=run.RunHooks(after_round=kill_after_two))
    assert len(_metrics(wd)) == 2
    assert json.loads((wd / "summary.json").read_text())["complete"] is False

    capsys.readouterr()
    summary = run.main([a for a in ARGS if a != "--quiet"] + ["--workdir", str(wd)])
    assert "resuming after round 2" in capsys.readouterr().out
    assert _strip(_metrics(wd)) == reference
    assert summary["complete"] is True and summary["final"]["round"] == 3

    # A crash between checkpoint and log: round 3 is checkpointed but not logged.
    lines = (wd / "metrics.jsonl").read_text().splitlines(keepends=True)
    (wd / "metrics.jsonl").write_text("".join(lines[:2]))
    run.main(ARGS + ["--workdir", str(wd)])
    assert _strip(_metrics(wd)) == reference

    # A finished run re-run: nothing to train, same summary.
    again = run.main(ARGS + ["--workdir", str(wd)])
    assert again["final"] == summary["final"] and len(_metrics(wd)) == 3
