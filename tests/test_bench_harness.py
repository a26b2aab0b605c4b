"""The benchmark harness runs at tiny size and emits the documented JSON schema (no timing assertions)."""

import json
import math

import pytest

from experiments import bench, bench_report


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_memory(mem: dict) -> None:
    assert set(mem) == {"baseline_rss_bytes", "peak_rss_bytes", "feature_bytes"}
    assert all(isinstance(v, int) and v > 0 for v in mem.values()), mem
    assert mem["peak_rss_bytes"] >= mem["baseline_rss_bytes"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    messages = []
    args = bench.parser().parse_args(["--size", "tiny", "--out", str(out)])
    result = bench.run(args, log=messages.append)
    assert messages, "the harness logs a human summary"
    # Everything must survive a JSON round trip (no numpy scalars, no NaN).
    text = json.dumps(result, allow_nan=False)
    return json.loads(text)


def test_top_level_schema(report):
    for key in ("schema_version", "benchmark", "size", "date_utc", "machine", "load_average", "config",
                "matmul_peak", "training_features", "training", "variants", "scaling", "ragged", "memory", "pseudolabels",
                "evaluation", "step_shape_ceiling", "pytorch", "many", "device", "efficiency_K13",
                "targets", "total_s"):
        assert key in report, key
    assert report["schema_version"] == bench.SCHEMA_VERSION and report["benchmark"] == "clapjax"
    assert report["size"] == "tiny"
    m = report["machine"]
    assert isinstance(m["cpu_model"], str) and m["cpu_model"]
    assert _positive(m["cores"]) and _positive(m["num_devices"]) and isinstance(m["jax"], str)
    assert len(report["load_average"]["start"]) == 3 and len(report["load_average"]["end"]) == 3
    peak = report["matmul_peak"]
    assert _positive(peak["median_square_flops_per_s"]) and len(peak["measurements"]) == 3
    for m in peak["measurements"]:
        assert len(m["per_shape_flops_per_s"]) == len(peak["shapes"])
        assert all(_positive(v) for v in m["per_shape_flops_per_s"].values())
    assert peak["used_flops_per_s"] == max(m["best_flops_per_s"] for m in peak["measurements"])
    assert _positive(report["total_s"])


def test_training_schema(report):
    size = bench.SIZES["tiny"]
    results = report["training"]["results"]
    assert {(r["backend"], r["K"]) for r in results} == {(b, k) for b in bench.BACKENDS for k in size.ks}
    for r in results:
        for key in ("first_round_s", "steady_round_s", "segments_per_s", "model_flops_per_s", "fraction_of_peak"):
            assert _positive(r[key]), (key, r)
        assert r["compile_s"] >= 0 and len(r["steady_rounds_s"]) == size.rounds
        assert r["total_segments"] == size.rows and r["dropout"] is True
        assert size.rows <= r["computed_rows"] < size.rows + r["K"] * 128 and r["computed_rows"] % 128 == 0
        _check_memory(r["memory"])
        # Throughput is derived from the steady round time, not measured independently.
        assert r["segments_per_s"] == pytest.approx(size.rows / r["steady_round_s"])


def test_variants_schema(report):
    va = report["variants"]
    assert va["K"] == 13 and va["segments"] == bench.SIZES["tiny"].rows
    got = [(r["network"], r["prng_impl"], r["dropout"]) for r in va["results"]]
    assert got == list(bench.VARIANTS)
    for r in va["results"]:
        for key in ("first_round_s", "steady_round_s", "segments_per_s", "model_flops_per_s", "fraction_of_peak"):
            assert _positive(r[key]), (key, r)
        assert r["fraction_of_peak"] == pytest.approx(r["model_flops_per_s"] / report["matmul_peak"]["used_flops_per_s"])
    t = report["targets"]["step_shape_ceiling_K13"]
    assert set(t["per_network"]) == {"paper", "reference"}
    assert t["measured"] == min(t["per_network"].values())
    va = {r["network"]: r for r in report["variants"]["results"] if r["dropout"] and r["prng_impl"] == "rbg"}
    for net, frac in t["per_network"].items():
        assert frac == pytest.approx(va[net]["model_flops_per_s"] / report["step_shape_ceiling"][net]["flops_per_s"])
    # The paper network at its FLOP cost: the ratio of the two networks' model FLOP/s.
    cost = report["targets"]["paper_at_flop_cost"]
    assert cost["reference_flops_over_paper_flops"] == pytest.approx(0.5, abs=0.01)
    assert cost["measured"] == pytest.approx(va["paper"]["model_flops_per_s"] / va["reference"]["model_flops_per_s"])
    paired = report["targets"]["vmap_ge_loop"]["paired_per_K"]
    assert set(paired) == {str(k) for k in bench.SIZES["tiny"].ks}
    for v in paired.values():
        assert v["min"] <= v["median"] <= v["max"]


def test_scaling_pseudolabels_evaluation_schema(report):
    sc = report["scaling"]
    assert sc["multipliers"] == [1, 2, 4] and sc["segments"] == [256, 512, 1024]
    assert all(_positive(x) for x in sc["steady_round_s"] + sc["linear_ratio"] + sc["segments_per_s"])
    assert sc["linear_ratio"][0] == pytest.approx(1.0)
    _check_memory(sc["memory"])
    pl = report["pseudolabels"]
    for key in ("statistics_s", "statistics_compile_s", "vpl_s", "spl_first_s", "plr_first_s"):
        assert _positive(pl[key]), key
    assert pl["num_segments"] > 0 and pl["feature_dim"] == bench.SIZES["tiny"].pl_dim
    _check_memory(pl["memory"])
    ev = report["evaluation"]
    assert ev["frames"] == 16 * ev["segments"]
    assert all(_positive(ev[k]) for k in ("score_s", "segments_per_s", "metrics_s", "frames_per_s"))
    assert set(ev["metrics"]) == {"auc", "ap_sklearn", "ap_trapezoid"}
    assert all(0.0 <= v <= 1.0 for v in ev["metrics"].values())
    _check_memory(ev["memory"])


def test_targets_schema(report):
    t = report["targets"]
    assert set(t) == {"vmap_ge_loop", "vs_pytorch_K13", "paper_at_flop_cost", "step_shape_ceiling_K13",
                      "linear_in_segments", "flat_in_K", "flat_in_K_many", "round_memory"}
    for name, target in t.items():
        assert {"description", "threshold", "measured", "met"} <= set(target), name
        assert _positive(target["threshold"])
        if target["measured"] is None:
            assert target["met"] is None
        else:
            assert _positive(target["measured"]) and isinstance(target["met"], bool)
    # Tiny size has K = 13 only (no K = 5, 50), so flat_in_K is not measured.
    assert t["flat_in_K"]["measured"] is None
    assert set(t["vmap_ge_loop"]["per_K"]) == {"13"}
    assert t["flat_in_K_many"]["measured"] == report["many"]["ratio"]
    assert t["vmap_ge_loop"]["met"] == all(v >= 1.0 for v in t["vmap_ge_loop"]["per_K"].values())


def test_ragged_schema(report):
    rg = report["ragged"]
    assert rg["K"] == 13 and sum(rg["segments_per_participant"]) == rg["segments"] == bench.SIZES["tiny"].rows
    assert set(rg["results"]) == {"vmap_one_call", "vmap_grouped", "loop"}
    one, grouped = rg["results"]["vmap_one_call"], rg["results"]["vmap_grouped"]
    assert one["groups"] == [13] and sum(grouped["groups"]) == 13
    # Grouping never computes more steps than one padded call; the loop computes only real ones.
    assert 1.0 <= grouped["computed_steps_over_real"] <= one["computed_steps_over_real"]
    assert rg["results"]["loop"]["computed_steps_over_real"] == 1.0
    assert all(_positive(r["segments_per_s"]) for r in rg["results"].values())


def test_memory_checks_and_step_shape_ceiling(report):
    checks = report["memory"]["checks"]
    assert [c["rows"] for c in checks] == list(bench.SIZES["tiny"].memory_rows)
    for c in checks:
        assert c["feature_bytes"] == c["rows"] * c["crops"] * c["dim"] * 4 and c["K"] == 13
        assert c["peak_rss_bytes"] >= c["baseline_rss_bytes"] > 0 and c["first_round_peak_rss_bytes"] > 0
        assert c["peak_over_features"] == pytest.approx(
            (c["peak_rss_bytes"] - c["baseline_rss_bytes"]) / c["feature_bytes"])
        assert c["model_parameters"] > 0
    rm = report["targets"]["round_memory"]
    assert rm["measured"] == checks[-1]["peak_over_features"] and rm["met"] == (rm["measured"] <= 1.25)
    ceils = report["step_shape_ceiling"]
    assert set(ceils) == {"paper", "reference"}
    assert ceils["paper"]["width"] == 2 * ceils["reference"]["width"] == 1024
    for net, ceil in ceils.items():
        assert ceil["K"] == 13 and _positive(ceil["flops_per_s"])
        assert ceil["fraction_of_peak"] == pytest.approx(ceil["flops_per_s"] / report["matmul_peak"]["used_flops_per_s"])
        eff = report["efficiency_K13"][net]
        assert eff["clapjax_fraction_of_ceiling"] == pytest.approx(eff["clapjax_vmap_flops_per_s"] / ceil["flops_per_s"])


def test_report_renders_markdown(report):
    text = bench_report.render(report)
    assert report["machine"]["cpu_model"] in text and report["date_utc"][:10] in text
    assert "| backend | K | segments/s |" in text
    for name in report["targets"]:
        assert name in text
    # One table row per training result.
    assert sum(line.startswith("| vmap |") for line in text.splitlines()) == len(bench.SIZES["tiny"].ks)
    # A smoke-check size says that its values do not measure the targets; the full size does not.
    assert "The tiny size is a smoke check" in text
    assert "smoke check" not in bench_report.render({**report, "size": "full"})
    assert any("tiny size: a smoke check" in line for line in bench.summary_lines(report))


def test_report_rejects_other_json(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"benchmark": "pseudolabels"}))
    with pytest.raises(SystemExit, match="not a python -m experiments.bench report"):
        bench_report.main([str(path)])


@pytest.mark.slow  # runs the scaling group at two participant counts
def test_flat_in_k_is_measured_interleaved_in_the_scaling_group():
    import dataclasses

    import numpy as np

    size = dataclasses.replace(bench.SIZES["tiny"], rows=400, dim=16, ks=(5, 50), rounds=2)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(400, 1, 16)).astype(np.float32)
    labels = (rng.random(400) < 0.2).astype(np.float32)
    sc = bench.scaling_group(feats, labels, size, "paper", 16, log=lambda m: None)
    k = sc["k_flat"]
    assert (k["K_small"], k["K_large"], k["segments"]) == (5, 50, 400)
    assert [len(r) for r in k["steady_rounds_s"]] == [2, 2]
    assert k["ratio"] == pytest.approx(k["steady_round_s"][1] / k["steady_round_s"][0])
    assert k["paired"]["min"] <= k["paired"]["median"] <= k["paired"]["max"]
    # 5 x 80 rows = 5 x 5 batches of 16; 50 x 8 rows = 50 masked batches of 16.
    assert k["computed_rows"] == [400, 800]
    t = bench.targets([], sc, "paper", 16)["flat_in_K"]
    assert t["measured"] == k["ratio"] and t["computed_rows_ratio"] == 2.0
    assert t["time_per_computed_row_ratio"] == pytest.approx(k["ratio"] / 2.0)
    assert t["from_training_groups"] is None
    # Half the segments at both K: a round = fixed cost + per-segment cost, recombined exactly.
    assert k["half_segments"] == 200 and len(k["half_steady_round_s"]) == 2
    for full, half, fixed, per in zip(k["steady_round_s"], k["half_steady_round_s"], k["fixed_round_s"],
                                      k["per_segment_s"]):
        assert fixed + 400 * per == pytest.approx(full) and fixed + 200 * per == pytest.approx(half)
    assert t["fixed_round_s"] == k["fixed_round_s"]
    assert t["per_segment_ratio"] == k["per_segment_ratio"] == pytest.approx(k["per_segment_s"][1] / k["per_segment_s"][0])


def test_device_and_precision_recorded(report):
    d = report["device"]
    assert d["requested"] == "cpu" and d["platform"] == "cpu" and d["matmul_precision"] == "float32"
    assert report["matmul_peak"]["matmul_precision"] == "float32" and report["matmul_peak"]["platform"] == "cpu"
    th = d["threads"]
    assert th["xla_intra_op_threads"] >= 1 and th["schedulable_cores"] >= 1


def test_pytorch_peer_schema(report):
    pt = report["pytorch"]
    if "skipped" in pt:
        assert "pip install" in pt["skipped"]
        assert report["targets"]["vs_pytorch_K13"]["met"] is None
        pytest.skip(f"PyTorch peer not measured: {pt['skipped']}")
    ks = bench.SIZES["tiny"].peer_ks
    got = {(r["network"], r["implementation"], r["K"]) for r in pt["results"]}
    assert got == {(n, i, k) for n in bench.PEER_NETWORKS for i in ("clapjax_vmap", "pytorch_loop") for k in ks}
    for r in pt["results"]:
        for key in ("first_round_s", "steady_round_s", "segments_per_s", "model_flops_per_s", "fraction_of_peak"):
            assert _positive(r[key]), (key, r)
        assert len(r["steady_rounds_s"]) == bench.SIZES["tiny"].rounds
        assert r["segments_per_s"] == pytest.approx(pt["segments"] / r["steady_round_s"])
    # Same threads for both frameworks.
    assert pt["threads"]["pytorch_intra_op_threads"] == pt["threads"]["xla_intra_op_threads"]
    assert _positive(pt["pytorch_matmul_peak"]["best_flops_per_s"])
    by = {(r["network"], r["implementation"], r["K"]): r for r in pt["results"]}
    for net, per_k in pt["ratio_clapjax_over_pytorch"].items():
        assert set(per_k) == {str(k) for k in ks}
        for k, v in per_k.items():
            j, p = by[net, "clapjax_vmap", int(k)], by[net, "pytorch_loop", int(k)]
            pairs = [b / a for a, b in zip(j["steady_rounds_s"], p["steady_rounds_s"])]
            assert v["median"] == pytest.approx(sorted(pairs)[len(pairs) // 2] if len(pairs) % 2 else
                                                (sorted(pairs)[len(pairs) // 2 - 1] + sorted(pairs)[len(pairs) // 2]) / 2)
            assert v["min"] <= v["median"] <= v["max"]
    t = report["targets"]["vs_pytorch_K13"]
    assert t["measured"] == min(v["13"]["median"] for v in pt["ratio_clapjax_over_pytorch"].values())
    _check_memory(pt["memory"])
    text = bench_report.render(report)
    assert "clapjax against the released code's loop in PyTorch" in text


def test_many_participants_schema(report):
    mp = report["many"]
    size = bench.SIZES["tiny"]
    assert mp["ks"] == list(size.many_ks) and mp["dim"] == size.many_dim
    assert len(mp["steady_rounds_s"]) == 2 and all(len(ts) == size.rounds for ts in mp["steady_rounds_s"])
    assert mp["ratio"] == pytest.approx(mp["steady_round_s"][1] / mp["steady_round_s"][0])
    for k in size.many_ks:
        assert sum(mp["groups"][str(k)]) == k
        sp = mp["segments_per_participant"][str(k)]
        assert 1 <= sp["min"] <= sp["median"] <= sp["max"] <= mp["segments"]
    assert all(c >= mp["segments"] and c % mp["batch"] == 0 for c in mp["computed_rows"])
    assert len(mp["memory_first_round"]) == 2
    for m in mp["memory_first_round"] + [mp["memory"]]:
        _check_memory(m)
    assert mp["device_memory"] is None or isinstance(mp["device_memory"], dict)
    assert "Many participants" in bench_report.render(report)


def test_device_platform_check_with_a_fake_platform():
    assert bench.device_platform("gpu", default_backend=lambda: "gpu") == "gpu"
    assert bench.device_platform("auto", default_backend=lambda: "tpu") == "tpu"
    assert bench.device_platform("cpu", default_backend=lambda: "cpu") == "cpu"
    with pytest.raises(bench.DeviceError, match=r"--device gpu: JAX runs on 'cpu' here.*jax\[cuda12\]"):
        bench.device_platform("gpu", default_backend=lambda: "cpu")
    with pytest.raises(bench.DeviceError, match="--device cpu"):
        bench.device_platform("cpu", default_backend=lambda: "gpu")
    with pytest.raises(bench.DeviceError, match="unknown"):
        bench.device_platform("npu", default_backend=lambda: "cpu")


def test_command_rejects_an_absent_accelerator(capsys):
    import jax

    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as e:
        bench.main(["--device", "gpu", "--size", "tiny"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device gpu:") and len(err.strip().splitlines()) == 1


def test_pytorch_group_skips_with_a_reason_without_torch(monkeypatch):
    import numpy as np

    from experiments import bench_torch

    monkeypatch.setattr(bench_torch, "unavailable_reason", lambda: "PyTorch is not installed (test); pip install")
    logs = []
    out = bench.pytorch_group(np.zeros((8, 1, 4), np.float32), np.zeros(8, np.float32), bench.SIZES["tiny"], 4,
                              logs.append)
    assert out == {"skipped": "PyTorch is not installed (test); pip install"}
    assert "skipped" in logs[0]
    t = bench.targets([], None, "paper", 128, peer=out)["vs_pytorch_K13"]
    assert t["measured"] is None and t["met"] is None and t["skipped"] == out["skipped"]
