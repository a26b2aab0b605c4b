"""Benchmark of I3D feature extraction: network clips/s against the matmul peak, decoding vs network.

    python -m experiments.bench_extract --out bench_extract.json          # ~10 min on 2 cores
    python -m experiments.bench_extract --quick                           # ~3 min

JSON goes to stdout (and ``--out``); a short summary to stderr. Every number
comes from this one process and run:

* ``peak``: float32 matmul peak, best of repeats of jitted square ``n×n @ n×n``
  dots (n = 2048 and, unless ``--quick``, 4096), measured at the start, between
  groups and at the end; ``used`` is the best of all, in wall time and in CPU
  time (process CPU seconds, all threads).
* ``network``: the jitted I3D (``conv`` per backend, :func:`clapjax.video.feature_fn`)
  on fixed ``[batch, 16, 224, 224, 3]`` batches of real crops (1 crop: centre
  crops; 10 crops: the ten crops of consecutive clips), after a compiling call:
  best and median over ``repeats`` calls of wall and CPU seconds; ``clip_crops_per_s``
  (network inputs per second; the 10-crop rate of whole clips is a tenth of it),
  ``flops_per_s`` = :func:`clapjax.video.flops_per_clip` (55.6 GFLOP) x clip-crops/s,
  and ``fraction_of_peak`` (wall: against the wall-time peak; cpu: FLOP per CPU
  second against the matmul's FLOP per CPU second).
* ``baseline_xla``: the same network with the stock 3-D ``lax.conv_general_dilated``
  and ``reduce_window`` pools (what XLA:CPU does without the CPU path), 1 crop.
* ``decode``: decoding (PyAV or frame images) + resizing one 16-frame clip, and
  cutting its 1 or 10 crops, single thread, wall and CPU seconds per clip.
* ``pipeline``: :func:`clapjax.video.extract_videos` end to end (decoding thread
  overlapped with the network) on the benchmark videos, 1 and 10 crops:
  clip-crops/s, ``first_batch_s`` (start-up), ``decode_wait_s`` (after it, the
  network idle waiting for decoded clips), ``network_wait_s``, ``over_network``
  (``_cpu``) = the same number of network calls timed alone (median) / the
  pipeline's wall (CPU) seconds (1: decoding costs nothing), ``cores_busy``.
* ``shares``: decoding vs network CPU seconds per clip-crop.
* ``targets``: network >= 50 % of the peak (wall and CPU bases), decoding never
  the bottleneck (after start-up the network sits idle waiting for decoded
  clips under 10 % of the time).

The machine state is recorded (``load_average`` at start and end): on a shared
machine wall-clock rates fall with other processes' load while CPU-time rates
(and the CPU-time fraction of peak) are affected much less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from clapjax.video import (
    ExtractOptions,
    VideoReader,
    crop_clip,
    default_conv,
    extract_videos,
    feature_fn,
    find_videos,
    flops_per_clip,
    load_i3d_params,
)

SCHEMA_VERSION = 1
_REPO = Path(__file__).resolve().parent.parent
DEFAULT_VIDEOS = (
    _REPO.parent / "shared" / "real" / "ucf_crime" / "videos" / "RoadAccidents017_x264.mp4",
)
FALLBACK_VIDEOS = (_REPO / "tests" / "data" / "video" / "RoadAccidents017_f64-103.mp4",)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _timed_calls(f: Callable, args: tuple, repeats: int) -> dict:
    """Wall and CPU seconds of ``repeats`` calls after one warm-up (compiling) call."""
    w, c = _clock()
    jax.block_until_ready(f(*args))
    w1, c1 = _clock()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = _clock()
        jax.block_until_ready(f(*args))
        w2, c2 = _clock()
        walls.append(w2 - w)
        cpus.append(c2 - c)
    return {"first_call_s": w1 - w, "wall_s": walls, "cpu_s": cpus,
            "best_wall_s": min(walls), "median_wall_s": statistics.median(walls),
            "best_cpu_s": min(cpus), "median_cpu_s": statistics.median(cpus)}


def matmul_peak(sizes: tuple[int, ...], repeats: int) -> dict:
    """Best float32 FLOP/s (wall) and FLOP per CPU second of jitted square dots."""
    out: dict[str, Any] = {"per_size": {}}
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        t = _timed_calls(jax.jit(jnp.dot), (a, b), repeats)
        flops = 2.0 * n**3
        out["per_size"][str(n)] = {"flops_per_s": flops / t["best_wall_s"],
                                   "flops_per_cpu_s": flops / t["best_cpu_s"]}
    out["flops_per_s"] = max(v["flops_per_s"] for v in out["per_size"].values())
    out["flops_per_cpu_s"] = max(v["flops_per_cpu_s"] for v in out["per_size"].values())
    return out


def load_clips(paths: list[Path], max_clips: int) -> tuple[list[np.ndarray], dict]:
    """Decoded 16-frame clips (short side 256) and the decode timing per clip."""
    clips: list[np.ndarray] = []
    w, c = _clock()
    for v in find_videos(paths):
        for clip in VideoReader(v).open().clips():
            clips.append(clip)
            if len(clips) >= max_clips:
                break
        if len(clips) >= max_clips:
            break
    w2, c2 = _clock()
    n = len(clips)
    timing = {"clips": n, "wall_s_per_clip": (w2 - w) / n, "cpu_s_per_clip": (c2 - c) / n}
    for crops in (1, 10):
        w, c = _clock()
        for clip in clips:
            crop_clip(clip, crops)
        w2, c2 = _clock()
        timing[f"crop{crops}_wall_s_per_clip"] = (w2 - w) / n
        timing[f"crop{crops}_cpu_s_per_clip"] = (c2 - c) / n
    return clips, timing


def network_batch(clips: list[np.ndarray], crops: int, batch: int) -> np.ndarray:
    """One ``[batch, 16, 224, 224, 3]`` uint8 batch of real crops in extraction order."""
    items = [c for clip in clips for c in crop_clip(clip, crops)]
    while len(items) < batch:
        items = items + items
    return np.stack(items[:batch])


def network_group(features: Callable, params: Any, x: np.ndarray, repeats: int, peak: dict) -> dict:
    t = _timed_calls(features, (params, x), repeats)
    n = x.shape[0]
    flops = flops_per_clip() * n
    return {
        "batch": n, **t,
        "clip_crops_per_s": n / t["best_wall_s"],
        "clip_crops_per_cpu_s": n / t["best_cpu_s"],
        "flops_per_s": flops / t["best_wall_s"],
        "flops_per_cpu_s": flops / t["best_cpu_s"],
        "fraction_of_peak": {"wall": flops / t["best_wall_s"] / peak["flops_per_s"],
                             "cpu": flops / t["best_cpu_s"] / peak["flops_per_cpu_s"]},
    }


def pipeline_group(paths: list[Path], crops: int, batch: int, features: Callable, params: Any,
                   record: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        w, c = _clock()
        s = extract_videos(paths, tmp, ExtractOptions(crops=crops, batch_size=batch, progress=False),
                           params=params, weights_record=record, features=features)
        w2, c2 = _clock()
    return {"videos": len(s.written), "clip_crops": s.clips, "batches": -(-s.clips // batch),
            "wall_s": w2 - w, "cpu_s": c2 - c, "clip_crops_per_s": s.clips / (w2 - w), **s.timing}


def run(args: argparse.Namespace, log=print) -> dict:
    paths = [Path(p) for p in args.videos] if args.videos else [
        p for p in DEFAULT_VIDEOS if p.exists()] or list(FALLBACK_VIDEOS)
    sizes = (2048,) if args.quick else (2048, 4096)
    report: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "command": " ".join(["python -m experiments.bench_extract", *sys.argv[1:]]),
        "machine": {"cpu_count": os.cpu_count(), "backend": jax.default_backend(),
                    "devices": [str(d) for d in jax.devices()],
                    "load_average_start": list(os.getloadavg())},
        "videos": [str(p) for p in paths],
        "conv": args.conv or default_conv(),
        "batch_size": args.batch_size,
        "gflop_per_clip": flops_per_clip() / 1e9,
    }
    peaks = [matmul_peak(sizes, args.repeats + 2)]
    log(f"peak: {peaks[-1]['flops_per_s'] / 1e9:.0f} GFLOP/s wall, "
        f"{peaks[-1]['flops_per_cpu_s'] / 1e9:.0f} GFLOP per CPU s")
    params, record = load_i3d_params(args.weights)
    params = jax.device_put(params)
    clips, decode = load_clips(paths, max_clips=max(10, args.batch_size))
    report["decode"] = decode
    log(f"decode: {decode['wall_s_per_clip'] * 1e3:.0f} ms per 16-frame clip "
        f"({decode['cpu_s_per_clip'] * 1e3:.0f} ms CPU)")
    features = feature_fn(args.conv)
    batches = {crops: network_batch(clips, crops, args.batch_size) for crops in (1, 10)}
    network: dict[str, Any] = {}
    for crops in (1, 10):
        network[f"crops{crops}"] = network_group(features, params, batches[crops], args.repeats, peaks[0])
        peaks.append(matmul_peak(sizes, args.repeats + 2))
    if not args.quick and (args.conv or default_conv()) != "xla":
        base = feature_fn("xla")
        network["baseline_xla_crops1"] = network_group(base, params, batches[1], max(1, args.repeats // 2),
                                                       peaks[0])
        peaks.append(matmul_peak(sizes, args.repeats + 2))
    pipeline = {}
    for crops in (1, 10):
        pipe_paths = paths if crops == 1 else list(FALLBACK_VIDEOS)
        pipeline[f"crops{crops}"] = dict(pipeline_group(pipe_paths, crops, args.batch_size, features,
                                                        params, record), videos_used=[str(p) for p in pipe_paths])
    peaks.append(matmul_peak(sizes, args.repeats + 2))
    used = {"flops_per_s": max(p["flops_per_s"] for p in peaks),
            "flops_per_cpu_s": max(p["flops_per_cpu_s"] for p in peaks)}
    report["peak"] = {"measurements": peaks, "used": used}
    # Fractions against the best peak of the whole run.
    for g in network.values():
        g["fraction_of_peak"] = {"wall": g["flops_per_s"] / used["flops_per_s"],
                                 "cpu": g["flops_per_cpu_s"] / used["flops_per_cpu_s"]}
    report["network"] = network
    for crops, p in pipeline.items():
        net = network[crops]
        # The same number of network calls (the last batch is padded) timed alone.
        p["over_network"] = p["batches"] * net["median_wall_s"] / p["wall_s"]
        p["over_network_cpu"] = p["batches"] * net["median_cpu_s"] / p["cpu_s"]
        p["decode_wait_share"] = p["decode_wait_s"] / p["wall_s"]
        p["cores_busy"] = p["cpu_s"] / p["wall_s"]
    report["pipeline"] = pipeline
    report["shares"] = {}
    for crops in (1, 10):
        dec = (decode["cpu_s_per_clip"] + decode[f"crop{crops}_cpu_s_per_clip"]) / crops
        net = 1.0 / network[f"crops{crops}"]["clip_crops_per_cpu_s"]
        report["shares"][f"crops{crops}"] = {"decode_cpu_s_per_clip_crop": dec,
                                             "network_cpu_s_per_clip_crop": net,
                                             "decode": dec / (dec + net), "network": net / (dec + net)}
    n1 = network["crops1"]
    report["targets"] = {
        "network_half_of_peak": {
            "description": "network FLOP/s >= 50 % of the float32 matmul peak of the same run (1 crop)",
            "threshold": 0.5, "wall": n1["fraction_of_peak"]["wall"], "cpu": n1["fraction_of_peak"]["cpu"],
            "met_wall": n1["fraction_of_peak"]["wall"] >= 0.5, "met_cpu": n1["fraction_of_peak"]["cpu"] >= 0.5},
        "decoding_hidden": {
            "description": "after the first batch, the network sits idle waiting for decoded clips "
                           "under 10 % of the pipeline's wall time",
            "threshold": 0.1, "crops1": pipeline["crops1"]["decode_wait_share"],
            "crops10": pipeline["crops10"]["decode_wait_share"],
            "met": max(pipeline["crops1"]["decode_wait_share"],
                       pipeline["crops10"]["decode_wait_share"]) <= 0.1},
    }
    report["machine"]["load_average_end"] = list(os.getloadavg())
    return report


def summary_lines(r: dict) -> list[str]:
    lines = [f"peak {r['peak']['used']['flops_per_s'] / 1e9:.0f} GFLOP/s wall, "
             f"{r['peak']['used']['flops_per_cpu_s'] / 1e9:.0f} GFLOP per CPU s; "
             f"load {r['machine']['load_average_start'][0]:.1f} -> {r['machine']['load_average_end'][0]:.1f}"]
    for name, g in r["network"].items():
        lines.append(f"network {name}: {g['clip_crops_per_s']:.2f} clip-crops/s "
                     f"({g['clip_crops_per_cpu_s']:.2f} per CPU s), {g['flops_per_s'] / 1e9:.0f} GFLOP/s; "
                     f"fraction of peak wall {g['fraction_of_peak']['wall']:.2f}, cpu {g['fraction_of_peak']['cpu']:.2f}")
    for name, p in r["pipeline"].items():
        lines.append(f"pipeline {name}: {p['clip_crops_per_s']:.2f} clip-crops/s, network alone / pipeline "
                     f"{p['over_network']:.2f} wall, {p['over_network_cpu']:.2f} CPU; waiting on decoding "
                     f"{p['decode_wait_share']:.1%} (after {p['first_batch_s']:.1f} s start-up)")
    for name, s in r["shares"].items():
        lines.append(f"CPU share {name}: decode {s['decode']:.1%}, network {s['network']:.1%}")
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.bench_extract", description=__doc__.split("\n")[0])
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--quick", action="store_true", help="fewer repeats, n=2048 peak only, no stock-XLA baseline")
    p.add_argument("--videos", nargs="+", help="videos to decode and extract (default: one shared UCF-Crime video)")
    p.add_argument("--batch-size", type=int, default=ExtractOptions().batch_size)
    p.add_argument("--conv", choices=["xla", "fold"], default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--weights", default=None)
    return p


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    report = run(args, log=lambda s: print(s, file=sys.stderr, flush=True))
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    for line in summary_lines(report):
        print(line, file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
