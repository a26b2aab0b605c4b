"""experiments.bench_profile at tiny sizes: every measurement is present and positive (no timing assertions)."""

import math

import pytest

from experiments import bench_profile


def _pos(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.mark.slow  # a profiling harness: CPU seconds of every part of a step
def test_profile_reports_every_measurement(tmp_path):
    out = tmp_path / "profile.json"
    r = bench_profile.main(["--k", "3", "--dim", "16", "--batch", "8", "--rows", "96", "--repeats", "1",
                            "--out", str(out)])
    assert out.exists()
    for net in ("paper", "reference"):
        h = r["hlo"][net]
        assert _pos(h["flops_per_step"]) and _pos(h["bytes_accessed_per_step"]) and h["parameter_bytes_K"] > 0
    # The paper network has the attention layers' parameters too.
    assert r["hlo"]["paper"]["parameter_bytes_K"] > r["hlo"]["reference"]["parameter_bytes_K"]
    assert all(_pos(v) for k, v in r["dots"].items() if k.endswith("cpu_s"))
    assert len(r["matmul_gflop_per_cpu_s"]) == 3
    assert all(_pos(v["jax"]) for v in r["matmul_gflop_per_cpu_s"].values())
    assert _pos(r["update"]["cpu_ms"]) and _pos(r["update"]["bytes_per_cpu_s"])
    names = {(x["network"], x["run"]) for x in r["rounds"]}
    assert ("paper", "clapjax vmap, default") in names and ("reference", "clapjax vmap, no dropout") in names
    for x in r["rounds"]:
        assert _pos(x["cpu_s_per_round"]) and len(x["cpu_s_rounds"]) == 1
        assert x["segments_per_cpu_s"] == 96 / x["cpu_s_per_round"]
