"""experiments.run end to end on the tiny preset, option validation, workdir refusal."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clapjax.report import rundir
from experiments import run
from experiments.config import ConfigError, validate

ROOT = Path(__file__).resolve().parents[1]
# Two participants with 2 anomalous + 2 normal videos each: seconds per run.
TINY = ["--preset", "tiny", "--split", "random", "--participants", "2",
        "--videos-per-participant", "2", "--rounds", "1"]


def test_help_runs_as_a_module():
    res = subprocess.run([sys.executable, "-m", "experiments.run", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for flag in ("--split", "--participants", "--setting", "--variant", "--aggregator",
                 "--features-dir", "--weak-labels", "--pl.beta", "--train.lr", "--model.dropout-rate",
                 "--nonfinite", "--debug"):
        assert flag in res.stdout
    # Unset optional flags say what unset means, never "(default: None)".
    assert "(default: None)" not in res.stdout and "{None}" not in res.stdout
    assert "(default: 5 random, 13 event, 11 scene)" in res.stdout


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "xd", "--split", "event"], "Valid for xd: --split random --participants 5/10/25/50"),
    (["--participants", "7"], "--generate-split"),
    (["--split", "scene", "--participants", "3", "--generate-split"], "use --participants 11"),
    (["--setting", "local", "--aggregator", "scaffold"], "needs --setting collaborative"),
    (["--participants", "2", "--weak-labels", "3"], "between 0 and K=2"),
    (["--participants", "2", "--weak-participants", "5"], "not a participant index"),
    (["--pl.beta", "1.5"], "beta"),
    (["--features-dir", "does/not/exist"], "no such directory"),
    (["--quiet", "--json"], "exclude each other"),
    (["--rounds", "0"], "--rounds must be >= 1"),
])
def test_invalid_combinations_fail_at_once(argv, message, tmp_path):
    wd = tmp_path / "wd"
    with pytest.raises(ConfigError) as info:
        run.main(argv + ["--workdir", str(wd)])
    assert message in str(info.value)
    assert not wd.exists()


def test_cli_reports_errors_with_status_2(tmp_path, capsys):
    assert run.cli(["--dataset", "xd", "--split", "scene", "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no official scene split") and "ucf: random 2/5/10/25/50" in err
    with pytest.raises(SystemExit):  # tyro rejects values outside the choices
        run.parse(["--split", "diagonal"])


def test_defaults_and_workdir_name():
    r = validate(run.parse(["--split=event", "--participants=13"]))
    assert r.workdir == Path("runs/ucf-event-13-collaborative-paper-seed0")
    # CLAP's run-command budget (clapjax.methods.clap.BUDGET) on top of the engine's preset.
    assert (r.train.rounds, r.train.lr, r.train.lr_milestones) == (11, 0.2, (7,)) and r.pseudo_labels.beta == 0.2
    # auto backend: event 13 is unbalanced (K·max/total = 2.4), but vmap's step-count
    # groups cut the padded work to 1.09x -> vmap; with one group it would be loop.
    assert r.train.backend == "vmap" and r.config.backend == "auto" and r.train.vmap_groups == 4
    one = validate(run.parse(["--split=event", "--participants=13", "--train.vmap-groups", "1"]))
    assert one.train.backend == "loop" and one.train.vmap_groups == 1
    assert validate(run.parse([])).train.backend == "vmap"
    assert validate(run.parse(["--split", "event", "--backend", "vmap"])).train.backend == "vmap"
    ref = validate(run.parse(["--split", "scene", "--variant", "reference", "--pl.beta", "0.1",
                              "--train.plr-start-round", "none"]))
    assert ref.num_participants == 11 and ref.pseudo_labels.beta == 0.1
    assert ref.pseudo_labels.entropy == "diag_reference" and ref.train.plr_start_round is None
    assert ref.model.attention is False
    gen = validate(run.parse(["--generate-split", "--participants", "7", "--seed", "3"]))
    assert gen.num_participants == 7 and gen.workdir.name == "ucf-random-generated-7-collaborative-paper-seed3"


def test_split_file_and_centralized(tmp_path):
    from clapjax import splits

    path = tmp_path / "mine.json"
    path.write_text(json.dumps(splits.load("ucf", "random", 5).to_json()))
    r = validate(run.parse(["--split-file", str(path), "--setting", "centralized"]))
    assert r.num_participants == 5 and r.split.num_participants == 1 and r.split_label == "file_mine"
    with pytest.raises(ConfigError, match="has 5 participants"):
        validate(run.parse(["--split-file", str(path), "--participants", "3"]))


def test_refuses_a_different_config_on_an_existing_workdir(tmp_path):
    wd = tmp_path / "wd"
    first = validate(run.parse(TINY + ["--workdir", str(wd)]))
    with rundir.prepare(wd, {"format": rundir.FORMAT_VERSION, **first.record()}) as rd:
        rd.append_metrics({"round": 1, "auc": 0.5})  # work that a new configuration would lose
    with pytest.raises(rundir.RunDirError, match=r"run.variant: 'paper' -> 'reference'"):
        run.main(TINY + ["--workdir", str(wd), "--variant", "reference"])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(rundir.RunDirError, match="not a clapjax run directory"):
        run.main(TINY + ["--workdir", str(foreign), "--overwrite"])
    assert (foreign / "notes.txt").read_text() == "mine"


def _check_run_dir(wd: Path, summary: dict, k: int, rounds: int):
    config = json.loads((wd / "config.json").read_text())
    assert config["run"]["participants"] == k
    assert config["environment"]["packages"]["jax"] and "commit" in config["environment"]["git"]
    assert config["resolved"]["split"]["participants"]
    metrics = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == list(range(1, rounds + 1))
    for m in metrics:
        assert 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["ap_sklearn"] <= 1.0 and 0.0 <= m["ap_trapezoid"] <= 1.0
        assert np.isfinite(m["train_loss"]) and m["time_s"] > 0
        assert set(m["label_quality"]["segments"]) == {"precision", "recall", "iou"}
    on_disk = json.loads((wd / "summary.json").read_text())
    assert on_disk["complete"] is True and on_disk["best"]["selected_on"] == "test set"
    assert summary["final"]["auc"] == metrics[-1]["auc"]
    assert on_disk["synthetic"] is True and on_disk["comparable_to_paper"] is False
    refs = on_disk["references"]
    assert 0.0 <= refs["feature_norm"]["auc"] <= 1.0 and 0.0 <= refs["oracle"]["auc"] <= 1.0
    assert refs["oracle"]["train_segments"] > 0
    assert json.loads((wd / "references.json").read_text())["feature_norm"] == refs["feature_norm"]
    pl = json.loads((wd / "pseudo_labels.json").read_text())
    assert pl["spl"] is not None and 0.0 <= pl["vpl"]["accuracy"] <= 1.0
    assert (wd / "checkpoints" / str(rounds)).is_dir()
    return metrics, pl


FAST = [("collaborative", "paper"), ("local", "reference"), ("centralized", "paper")]
SLOW = [("collaborative", "reference"), ("local", "paper"), ("centralized", "reference")]


@pytest.mark.parametrize("setting, variant", FAST + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW])
def test_end_to_end_every_setting_and_variant(setting, variant, tmp_path, capsys):
    wd = tmp_path / "run"
    extra = ["--setting", setting, "--variant", variant, "--workdir", str(wd)]
    if variant == "paper":
        extra += ["--train.plr-start-round", "0"]  # exercise PLR within one round
    if setting == "collaborative":
        extra += ["--weak-labels", "1", "--json"]
    else:
        extra += ["--quiet"]
    summary = run.main(TINY + extra)
    metrics, pl = _check_run_dir(wd, summary, k=2, rounds=1)
    out = capsys.readouterr().out
    if setting == "collaborative":
        events = [json.loads(line) for line in out.splitlines()]
        assert {"stage", "round", "summary"} <= {e["event"] for e in events}
        assert pl["video_labels_used"]["per_participant"][0] == 1.0  # weak participant 0
        assert summary["pseudo_labels"]["weak_participants"] == ["p0"]  # by name
    else:
        assert out.count("\n") == 1 and out.startswith("final AUC")
        on_disk = json.loads((wd / "summary.json").read_text())
        floor, ceiling = (f"{on_disk['references'][k]['auc']:.4f}" for k in ("feature_norm", "oracle"))
        assert (f"feature-norm scorer AUC {floor} (floor), supervised oracle AUC {ceiling} (ceiling)"
                in out)
    rec = metrics[0]
    if setting == "local":
        assert len(rec["auc_per_participant"]) == 2
        assert rec["auc"] == pytest.approx(np.mean(rec["auc_per_participant"]))
        assert np.load(wd / "test_scores.npy").shape[0] == 2
    elif setting == "centralized":
        assert len(rec["train_loss_per_participant"]) == 1
    if variant == "paper":
        assert rec["plr_applied"] is True
    else:
        assert rec["plr_applied"] is False


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    wd = tmp_path / "run"
    summary = run.main(TINY + ["--workdir", str(wd), "--quiet", "--plots", "--variant", "reference"])
    names = {Path(p).name for p in summary["plots"]}
    assert {"participants.png", "auc.png", "label_quality.png", "scores.png"} <= names
    for name in names:
        assert (wd / "plots" / name).read_bytes()[:4] == b"\x89PNG"
