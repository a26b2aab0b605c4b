"""experiments.bench_methods runs and emits its JSON (no timing assertions)."""

import json

import pytest

from experiments import bench_methods


@pytest.mark.slow  # compiles two engines on a slice of the default preset (~1 min on 2 loaded cores)
def test_bench_methods_emits_json(tmp_path):
    out = tmp_path / "m.json"
    assert bench_methods.main(["--rows", "600", "--rounds", "1", "--methods", "c2fpl", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["K"] == 13 and report["config"]["segments"] >= 13
    assert [(r["method"], r["backend"]) for r in report["results"]] == [("c2fpl", "vmap"), ("c2fpl", "loop")]
    for r in report["results"]:
        assert r["segments_per_s"] > 0 and len(r["steady_rounds_s"]) == 1 and r["real_steps"] > 0
    assert report["vmap_over_loop"]["c2fpl"]["vmap_speedup_median_of_medians"] > 0
