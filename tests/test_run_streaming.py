"""experiments.run on feature files: streaming equals in memory, the preflight, --crops."""

import json

import numpy as np
import pytest

from clapjax import pipeline, resources
from experiments import preflight, run
from experiments.bench_fullsize import write_features
from experiments.config import RunConfig, validate

# Two participants of 2 anomalous + 2 normal videos; PLR from round 0 so that
# the streamed PLR scoring pass is compared too.
SMALL = ["--split", "random", "--participants", "2", "--videos-per-participant", "2", "--rounds", "2",
         "--train.plr-start-round", "0", "--quiet"]


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory):
    """The used training videos and every test video as <video>_i3d.npy
    (m, 2, 8) float32 at their real lengths (the test ground truth needs them)."""
    out = tmp_path_factory.mktemp("features")
    split = validate(RunConfig(split="random", participants=2, videos_per_participant=2)).split
    write_features(out, crops=2, feature_dim=8, preset="tiny", max_segments=None, rank=4,
                   videos={"train": np.concatenate(split.participants)})
    return out


def _numbers(wd):
    metrics = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    keep = ("auc", "ap_sklearn", "ap_trapezoid", "train_loss", "train_loss_per_participant", "labels_changed")
    return [{k: m[k] for k in keep} for m in metrics], np.load(wd / "test_scores.npy"), np.load(wd / "pseudo_labels.npz")


def test_streaming_equals_in_memory_bitwise(features_dir, tmp_path):
    runs = {}
    for flag in ("True", "False"):
        wd = tmp_path / flag
        run.main(["--features-dir", str(features_dir), *SMALL, "--train.streaming", flag, "--workdir", str(wd)])
        runs[flag] = _numbers(wd)
        access = json.loads((wd / "config.json").read_text())["resources"]["access"]
        assert access == ("stream" if flag == "True" else "memory")
    (m_s, s_s, p_s), (m_m, s_m, p_m) = runs["True"], runs["False"]
    # Same reads (bit for bit), same batches, same compiled step functions:
    # no tolerance is needed.
    assert m_s == m_m
    assert any(m["labels_changed"] for m in m_s)  # PLR ran on streamed scores
    assert s_s.tobytes() == s_m.tobytes()
    assert all(p_s[k].tobytes() == p_m[k].tobytes() for k in p_s.files)


def test_budget_picks_the_access_path(features_dir):
    config = RunConfig(features_dir=features_dir, split="random", participants=2, videos_per_participant=2)
    resolved = validate(config)
    train, test = run.open_sources(resolved)
    fp = resources.estimate(preflight.workload(resolved, train, test))
    used = pipeline._source_positions(train, np.concatenate(resolved.split.participants))
    assert fp.train_bytes == int(np.asarray(train.lengths)[used].sum()) * 2 * 8 * 4
    assert fp.stream_peak < fp.memory_peak
    for budget, access in ((fp.memory_peak, "memory"), (fp.memory_peak - 1, "stream"), (fp.stream_peak, "stream")):
        r = validate(RunConfig(features_dir=features_dir, split="random", participants=2,
                               videos_per_participant=2, memory_budget=str(budget)))
        assert preflight.check(r, train, test).access == access
    r = validate(RunConfig(features_dir=features_dir, split="random", participants=2, videos_per_participant=2,
                           memory_budget=str(fp.stream_peak - 1)))
    with pytest.raises(resources.ResourceError, match="even streaming"):
        preflight.check(r, train, test)


def test_preflight_refuses_before_writing_anything(features_dir, tmp_path, capsys):
    wd = tmp_path / "refused"
    code = run.cli(["--features-dir", str(features_dir), *SMALL, "--memory-budget", "64MiB", "--workdir", str(wd)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: memory: even streaming from disk the run needs ~") and err.count("\n") == 1
    assert "--memory-budget" in err
    assert not wd.exists()
    code = run.cli(["--features-dir", str(features_dir), *SMALL, "--memory-budget", "1GiB",
                    "--train.streaming", "False", "--workdir", str(wd)])
    err = capsys.readouterr().err
    assert code == 2 and "error: memory: holding the features in memory needs ~" in err
    assert run.cli(["--features-dir", str(features_dir), *SMALL, "--memory-budget", "lots"]) == 2
    assert "error: --memory-budget: 'lots' is not a size" in capsys.readouterr().err


def test_crops_mean_is_recorded_and_averages_crops(features_dir, tmp_path):
    wd = tmp_path / "mean"
    summary = run.main(["--features-dir", str(features_dir), "--split", "random", "--participants", "2",
                        "--videos-per-participant", "2", "--rounds", "1", "--variant", "reference", "--quiet",
                        "--crops", "mean", "--workdir", str(wd)])
    config = json.loads((wd / "config.json").read_text())
    assert config["run"]["crops"] == "mean"
    keep = validate(RunConfig(features_dir=features_dir, split="random", participants=2, videos_per_participant=2))
    train, test = run.open_sources(keep)
    assert train.crops == 2
    fp = resources.estimate(preflight.workload(keep, train, test))
    assert summary["resources"]["train_bytes"] * 2 == fp.train_bytes  # one crop of two


def test_parse_and_format_bytes():
    assert resources.parse_bytes("12GiB") == 12 * 2**30
    assert resources.parse_bytes("1.5 GB") == 1_500_000_000
    assert resources.parse_bytes("512mib") == 512 * 2**20
    assert resources.parse_bytes(2e9) == 2_000_000_000
    for bad in ("", "12 parsecs", "-1GB", "GB"):
        with pytest.raises(ValueError):
            resources.parse_bytes(bad)
    assert resources.format_bytes(59.5 * 2**30) == "59.5 GiB"
    assert resources.default_memory_budget() > 0


def test_disk_refusal_and_forced_paths():
    w = resources.Workload(train_segments=779_780, test_segments=69_634, crops=10, feature_dim=2048,
                           participants=5, rounds=10, local_epochs=1, plr_rounds=9, eval_models=1,
                           largest_participant=200_000, longest_video=61_032, batch_size=128, chunk_steps=64,
                           stream_chunk_bytes=256 << 20, score_rows=3276, statistics_rows=1024, params=2_131_041)
    fp = resources.estimate(w)
    # The real UCF 10-crop table: 59.5 GiB of training features, 5.3 GiB test.
    assert resources.format_bytes(fp.train_bytes) == "59.5 GiB"
    assert resources.format_bytes(fp.test_bytes) == "5.3 GiB"
    assert fp.stream_peak < 6 * 2**30 < fp.memory_peak
    assert fp.read_per_round == int(fp.train_bytes * (1 + 0.9) + fp.test_bytes)
    p = resources.plan(fp, 12 * 2**30, 10**12)
    assert p.access == "stream" and "streaming (memory budget 12.0 GiB)" in p.describe()
    with pytest.raises(resources.ResourceError, match="^disk: the run directory needs"):
        resources.plan(fp, 12 * 2**30, fp.disk - 1)
    with pytest.raises(resources.ResourceError, match="holding the features in memory"):
        resources.plan(fp, 12 * 2**30, 10**12, force="memory")
    assert resources.plan(fp, 100 * 2**30, 10**12).access == "memory"
    assert resources.plan(fp, 100 * 2**30, 10**12, force="stream").forced
