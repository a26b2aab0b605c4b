"""Markdown results table (for the README) from a ``python -m experiments.bench`` JSON.

    python -m experiments.bench_report bench.json > results.md

Prints the machine description (CPU model, cores, memory, JAX version, device
count), the date and load of the run, then tables: targets, training
throughput per backend and K, scaling in total segments, pseudo-labelling
stages, evaluation, and peak memory of every measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _num(x, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _gib(n) -> str:
    if n is None:
        return "n/a"
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.0f} MiB"
    return f"{n / 2**10:.0f} KiB"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def machine_line(report: dict) -> str:
    m = report["machine"]
    mem = m.get("memory_bytes")
    return (f"{m['cpu_model']}, {m['cores']} cores, {_gib(mem)} RAM, {m['platform']}; "
            f"jax {m['jax']} ({m['backend']}, {m['num_devices']} device(s))")


def _efficiency(report: dict) -> list[str]:
    """Step-shape ceilings and what each implementation reaches of them and of the peak (K = 13)."""
    ceils, eff = report.get("step_shape_ceiling") or {}, report.get("efficiency_K13") or {}
    if not ceils:
        return []
    peak = report["matmul_peak"]["used_flops_per_s"]
    lines = ["**Where the FLOP/s go at K = 13** (model GFLOP/s = matmul FLOPs of forward + backward per second; "
             "the step-shape ceiling is the FLOP/s of the step's dominant matmuls alone: K = 13 participants "
             "vmapped, forward `[batch, D] @ [D, width]` and its weight gradient, scanned, width = the first "
             "layers' outputs)", ""]
    rows = []
    for net, c in ceils.items():
        e = eff.get(net, {})
        g = lambda key: "n/a" if e.get(key) is None else f"{e[key] / 1e9:.1f}"  # noqa: E731
        rows.append([net, f"[{c['batch']}, {c['dim']}] @ [{c['dim']}, {c['width']}]",
                     f"{c['flops_per_s'] / 1e9:.1f} ({100 * c['flops_per_s'] / peak:.0f}%)",
                     g("clapjax_vmap_flops_per_s"),
                     "n/a" if e.get("clapjax_fraction_of_ceiling") is None
                     else f"{100 * e['clapjax_fraction_of_ceiling']:.0f}%",
                     g("clapjax_reference_options_flops_per_s"), g("pytorch_flops_per_s"),
                     "n/a" if e.get("pytorch_fraction_of_peak") is None
                     else f"{100 * e['pytorch_fraction_of_peak']:.0f}%"])
    lines += _table(["network", "first layers", "ceiling GFLOP/s (of peak)", "clapjax vmap GFLOP/s",
                     "of ceiling", "clapjax, released-code options", "PyTorch loop GFLOP/s", "PyTorch of peak"],
                    rows) + [""]
    return lines


def _pytorch(report: dict) -> list[str]:
    pt = report.get("pytorch")
    if not pt:
        return []
    if "skipped" in pt:
        return [f"**PyTorch peer**: skipped ({pt['skipped']}).", ""]
    th = pt["threads"]
    lines = [f"**clapjax against the released code's loop in PyTorch** ({pt['segments']:,} segments split evenly "
             f"over K, batch {pt['batch']}, dropout on, {pt['train_options']}; PyTorch "
             f"{th.get('pytorch_torch', '?')} with {th.get('pytorch_intra_op_threads', '?')} intra-op threads, "
             f"XLA with {th['xla_intra_op_threads']}; the four rounds of a K interleaved)", ""]
    by = {(r["network"], r["implementation"], r["K"]): r for r in pt["results"]}
    rows = []
    for net, per_k in pt["ratio_clapjax_over_pytorch"].items():
        for k, ratio in per_k.items():
            j, p = by[net, "clapjax_vmap", int(k)], by[net, "pytorch_loop", int(k)]
            rows.append([net, k, _num(j["segments_per_s"]), _num(p["segments_per_s"]),
                         f"{ratio['median']:.2f}× ({ratio['min']:.2f}–{ratio['max']:.2f})",
                         f"{j['model_flops_per_s'] / 1e9:.1f} / {p['model_flops_per_s'] / 1e9:.1f}"])
    lines += _table(["network", "K", "clapjax vmap segments/s", "PyTorch loop segments/s",
                     "clapjax / PyTorch (median, min–max of round pairs)", "model GFLOP/s clapjax / PyTorch"],
                    rows) + [""]
    tp = pt.get("pytorch_matmul_peak")
    if tp:
        lines += [f"PyTorch's own float32 matmul peak (`torch.mm`, same shapes and threads): "
                  f"{tp['best_flops_per_s'] / 1e9:.1f} GFLOP/s, "
                  f"{100 * tp['best_flops_per_s'] / report['matmul_peak']['used_flops_per_s']:.0f}% of XLA's "
                  f"{report['matmul_peak']['used_flops_per_s'] / 1e9:.1f}.", ""]
    return lines


def _many(report: dict) -> list[str]:
    mp = report.get("many")
    if not mp:
        return []
    ks = mp["ks"]
    lines = [f"**Many participants** (clean random splits of UCF-Crime train, {mp['segments']:,} segments × "
             f"{mp['dim']}, {mp['network']} network, vmap, batch {mp['batch']}; rounds interleaved)", ""]
    rows = []
    for i, k in enumerate(ks):
        sp = mp["segments_per_participant"][str(k)]
        rows.append([str(k), f"{sp['min']:,}–{sp['max']:,} (median {sp['median']:,.0f})",
                     " + ".join(map(str, mp["groups"][str(k)])), _num(mp["computed_rows"][i]),
                     _num(mp["steady_round_s"][i]), _num(mp["segments_per_s"][i]),
                     _gib(mp["memory_first_round"][i]["peak_rss_bytes"])])
    lines += _table(["K", "segments per participant", "participants per call", "computed rows", "round s",
                     "segments/s", "first-round peak RSS"], rows)
    lines += ["", f"Round time K = {ks[1]} / K = {ks[0]}: {mp['ratio']:.3f} (per round pair: median "
              f"{mp['paired']['median']:.3f}, {mp['paired']['min']:.3f}–{mp['paired']['max']:.3f}); steady rounds' "
              f"peak RSS {_gib(mp['memory']['peak_rss_bytes'])} (features {_gib(mp['memory']['feature_bytes'])})"
              + ("" if not mp.get("device_memory") else
                 f"; device peak {_gib(mp['device_memory'].get('peak_bytes_in_use'))}") + ".", ""]
    return lines


def _device(report: dict) -> str:
    d = report.get("device")
    if not d:
        return "cpu, float32"
    return f"{d['platform']} (`--device {d['requested']}`), `--matmul-precision {d['matmul_precision']}`"


def render(report: dict) -> str:
    """The markdown text of a bench report."""
    lines = [f"### Benchmark results ({report['size']} size, {report['date_utc'][:10]})", ""]
    load = report["load_average"]
    lines += [f"Machine: {machine_line(report)}.",
              f"Run: {report['date_utc']}, {report['total_s'] / 60:.1f} min; 1-minute load average "
              f"{load['start'][0]:.1f} at start, {load['end'][0]:.1f} at end (the benchmark's own threads count; "
              "absolute times on a shared machine are noisy, ratios come from one process and one run).",
              f"Device: {_device(report)}; matmul peak (best `jnp.dot` rate over "
              f"{len(report['matmul_peak']['shapes'])} shapes, measured {len(report['matmul_peak']['measurements'])} "
              f"times in the run): {report['matmul_peak']['used_flops_per_s'] / 1e9:.1f} GFLOP/s.", ""]

    lines += ["**Targets**", ""]
    if report["size"] != "full":
        lines += [f"The {report['size']} size is a smoke check: the targets are defined at the full size, and "
                  "these values do not measure them.", ""]
    rows = [[name, t["description"], _num(t["threshold"]), _num(t["measured"], 3),
             "n/a" if t["met"] is None else ("**met**" if t["met"] else "**not met**")]
            for name, t in report["targets"].items()]
    lines += _table(["target", "description", "threshold", "measured", "met"], rows) + [""]
    fk = report["targets"].get("flat_in_K", {})
    if fk.get("computed_rows_ratio"):
        lines += [f"flat_in_K in parts: at K = 50 the participants' masked last batches make the steps compute "
                  f"{fk['computed_rows_ratio']:.3f}× the rows of K = 5; time per computed row is "
                  f"{fk['time_per_computed_row_ratio']:.3f}× that of K = 5.", ""]

    tr = report.get("training")
    if tr:
        res = tr["results"]
        f = report["training_features"]
        lines += [f"**Training throughput** ({tr['network']} network, {f['rows']:,} segments × {f['crops']} crop × "
                  f"{f['dim']} split evenly over K participants, batch {tr['batch']}, dropout on; median steady "
                  "round, compile time apart)", ""]
        rows = [[r["backend"], str(r["K"]), _num(r["segments_per_s"]), f"{r['model_flops_per_s'] / 1e9:.1f}",
                 f"{100 * r['fraction_of_peak']:.1f}%", _num(r["steady_round_s"]), _num(r["compile_s"]),
                 _gib(r["memory"]["peak_rss_bytes"])]
                for r in sorted(res, key=lambda r: (r["K"], r["backend"]))]
        lines += _table(["backend", "K", "segments/s", "model GFLOP/s", "of peak", "round s", "compile s",
                         "peak RSS"], rows) + [""]
    lines += _efficiency(report)

    va = report.get("variants")
    if va:
        lines += [f"**Step variants** (vmap, K = {va['K']}, {va['segments']:,} segments, batch {va['batch']}; "
                  "both networks, each dropout PRNG and without dropout, steady rounds interleaved)", ""]
        rows = [[r["network"], r["prng_impl"] if r["dropout"] else "— (no dropout)", _num(r["segments_per_s"]),
                 f"{r['model_flops_per_s'] / 1e9:.1f}", f"{100 * r['fraction_of_peak']:.1f}%",
                 _num(r["steady_round_s"]), _num(r["compile_s"])]
                for r in va["results"]]
        lines += _table(["network", "dropout PRNG", "segments/s", "model GFLOP/s", "of peak", "round s",
                         "compile s"], rows) + [""]

    vg = report["targets"].get("vmap_ge_loop", {})
    if vg.get("paired_per_K"):
        lines += ["vmap / loop per interleaved pair of steady rounds (median, min–max; the spread is this run's "
                  "noise): " + "; ".join(f"K = {k}: {v['median']:.3f} ({v['min']:.3f}–{v['max']:.3f})"
                                          for k, v in vg["paired_per_K"].items()) + ".", ""]

    lines += _pytorch(report)
    sc = report.get("scaling")
    if sc:
        lines += [f"**Scaling** (vmap, K = {sc['K']}; linear ratio = t(xm) / (m·t(x1)), 1 = linear)", ""]
        rows = [[f"x{m}", _num(n), _num(t), _num(sps), _num(r, 3)]
                for m, n, t, sps, r in zip(sc["multipliers"], sc["segments"], sc["steady_round_s"],
                                           sc["segments_per_s"], sc["linear_ratio"])]
        lines += _table(["segments", "total", "round s", "segments/s", "linear ratio"], rows)
        if "k_flat" in sc:
            k = sc["k_flat"]
            lines += ["", f"Round time at K = {k['K_large']} / K = {k['K_small']} (same {k['segments']:,} segments, "
                      f"vmap, rounds interleaved with the sizes above): {k['ratio']:.3f} (per round: median "
                      f"{k['paired']['median']:.3f}, {k['paired']['min']:.3f}–{k['paired']['max']:.3f})."]
            if k.get("fixed_round_s"):
                ks = (k["K_small"], k["K_large"])
                lines += ["", f"The same two K on {k['half_segments']:,} segments split each round into a fixed part "
                          "(2·t(half) − t(all): broadcast, aggregation, per-participant set-up) and a per-segment "
                          "part: " + "; ".join(
                              f"K = {kk}: fixed {fx:.3f} s, {1e6 * ps:.1f} µs per segment"
                              for kk, fx, ps in zip(ks, k["fixed_round_s"], k["per_segment_s"]))
                          + f" (per-segment ratio {k['per_segment_ratio']:.3f})."]
        lines.append("")

    lines += _many(report)
    rg = report.get("ragged")
    if rg:
        sizes = rg["segments_per_participant"]
        lines += [f"**Ragged participants** (vmap padding; {rg['segments']:,} segments over K = {rg['K']} in the "
                  f"proportions of UCF event 13, {min(sizes):,} to {max(sizes):,} per participant)", ""]
        rows = [[name, "—" if r["groups"] is None else " + ".join(map(str, r["groups"])),
                 f"{r['computed_steps_over_real']:.2f}×", _num(r["segments_per_s"]), _num(r["steady_round_s"])]
                for name, r in rg["results"].items()]
        lines += _table(["backend", "participants per call", "computed / real steps", "segments/s", "round s"],
                        rows) + [""]

    pl = report.get("pseudolabels")
    if pl:
        stride = report["config"]["size"]["pl_stride"]
        scope = f"quick: every {stride}th UCF train video" if pl["quick"] else "the full UCF train set shape"
        lines += [f"**Pseudo-labelling** ({scope}: {pl['num_videos']:,} videos, {pl['num_segments']:,} segments × "
                  f"{pl['feature_dim']}, {_gib(pl['feature_bytes'])} memory-mapped; {pl['variant']} options)", ""]
        rows = [["statistics (σ, H, magnitudes)", _num(pl["statistics_s"]), _num(pl["statistics_compile_s"])],
                ["VPL (video GMM)", _num(pl["vpl_s"], 3), _num(pl["vpl_first_s"] - pl["vpl_s"], 3)],
                ["SPL (null model + labels)", _num(pl["spl_s"], 3), _num(pl["spl_first_s"] - pl["spl_s"], 3)],
                ["PLR (one update)", _num(pl["plr_s"], 3), _num(pl["plr_first_s"] - pl["plr_s"], 3)]]
        lines += _table(["stage", "steady s", "compile s"], rows)
        lines += ["", f"Peak RSS {_gib(pl['memory']['peak_rss_bytes'])} (baseline "
                  f"{_gib(pl['memory']['baseline_rss_bytes'])}; includes resident pages of the memory map).", ""]

    ev = report.get("evaluation")
    if ev:
        lines += [f"**Evaluation** (UCF test shape: {ev['videos']} videos, {ev['segments']:,} segments × "
                  f"{ev['crops']} crop × {ev['dim']}, {ev['frames']:,} frames)", ""]
        rows = [["scoring (`score_segments`)", _num(ev["score_s"], 3), f"{_num(ev['segments_per_s'])} segments/s"],
                ["AUC + 2 APs (`frame_metrics`)", _num(ev["metrics_s"], 3), f"{_num(ev['frames_per_s'])} frames/s"]]
        lines += _table(["step", "s", "throughput"], rows) + [""]

    mc = report.get("memory", {}).get("checks")
    if mc:
        lines += ["**Round memory** (fresh process per size, K = 13 vmap in-memory rounds; steady peak after "
                  "the compiling first round, minus the RSS at start-up)", ""]
        rows = [[_gib(c["feature_bytes"]), _gib(c["baseline_rss_bytes"]), _gib(c["first_round_peak_rss_bytes"]),
                 _gib(c["peak_rss_bytes"]), f"{c['peak_over_features']:.2f}×",
                 "n/a" if not c.get("xla_round_buffers") else
                 _gib(c["xla_round_buffers"]["temp_bytes"] + c["xla_round_buffers"]["output_bytes"])]
                for c in mc]
        lines += _table(["features", "start-up RSS", "first-round peak", "steady peak", "(peak − start-up) / features",
                         "XLA round buffers"], rows) + [""]

    mem_rows = []
    if tr:
        seen = set()
        for r in tr["results"]:
            if r["K"] not in seen:
                seen.add(r["K"])
                mem_rows.append([f"training K={r['K']} (all backends)", r["memory"]])
    if sc:
        mem_rows.append(["scaling", sc["memory"]])
    if pl:
        mem_rows.append(["pseudo-labelling", pl["memory"]])
    if ev:
        mem_rows.append(["evaluation", ev["memory"]])
    if mem_rows:
        lines += ["**Memory** (VmRSS sampled during each measurement)", ""]
        lines += _table(["measurement", "baseline RSS", "peak RSS", "feature data"],
                        [[n, _gib(m["baseline_rss_bytes"]), _gib(m["peak_rss_bytes"]), _gib(m["feature_bytes"])]
                         for n, m in mem_rows]) + [""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", help="output of python -m experiments.bench")
    args = p.parse_args(argv)
    path = Path(args.json)
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"{path}: cannot read a bench JSON ({e})")
    if report.get("benchmark") != "clapjax" or "targets" not in report:
        sys.exit(f"{path}: not a python -m experiments.bench report (missing 'benchmark'/'targets')")
    print(render(report))


if __name__ == "__main__":
    main()
