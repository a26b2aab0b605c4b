"""Benchmark: statistics + VPL + SPL on the UCF-shaped training set.

Writes a random, temporally smooth float32 feature file ``[S, D]`` (crop-mean
features, real UCF train lengths from the dataset table) once, memory-maps it,
and times each pseudo-labelling stage with compile time apart from steady
time. Prints JSON (and writes ``--out``).

    python -m experiments.bench_pseudolabels            # full: 779,780 × 2048 (~6.4 GB)
    python -m experiments.bench_pseudolabels --quick    # every 16th video

Peak memory is the process's ``ru_maxrss`` (includes file pages of the
memory map that are resident); ``/proc/self/status`` splits the final RSS
into anonymous and file-backed parts.
"""

from __future__ import annotations

import os

# LAPACK (host eigendecompositions, also used by XLA's CPU eigh) is much
# slower multi-threaded on a busy 2-core machine; the Gram matmuls stay
# parallel in XLA. Override by setting the variable before running.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import resource
import shutil
import subprocess
import statistics as pystats
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from clapjax import null_model, packed, spl, tables
from clapjax import statistics as clap_stats
from clapjax import vpl
from clapjax.options import PseudoLabelOptions


def _proc_status() -> dict:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def write_features(path: Path, lengths: np.ndarray, dim: int, seed: int = 0, chunk_rows: int = 4096) -> float:
    """Writes a ``.npy`` of smooth random features with plain file writes.

    Plain writes (not a writable memmap) keep the generator's RSS small.
    Each video is a piecewise-linear random walk at 1/8 resolution plus
    small noise, made non-negative like I3D features. Returns seconds.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    total = int(lengths.sum())
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (total, dim)}
    video_scale = rng.uniform(0.5, 1.5, size=len(lengths)).astype(np.float32)
    video_of_row = np.repeat(np.arange(len(lengths)), lengths)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        level = np.zeros(dim, np.float32)
        for lo in range(0, total, chunk_rows):
            hi = min(total, lo + chunk_rows)
            n = hi - lo
            coarse = rng.standard_normal((n // 8 + 2, dim), dtype=np.float32) * 0.3
            coarse = np.cumsum(coarse, axis=0) * 0.2 + level
            level = coarse[-1] * 0.5
            t = np.arange(n, dtype=np.float32) / 8.0
            k = t.astype(np.int64)
            frac = (t - k)[:, None]
            chunk = coarse[k] * (1 - frac) + coarse[k + 1] * frac
            chunk += rng.standard_normal((n, dim), dtype=np.float32) * 0.05
            np.abs(chunk, out=chunk)
            chunk *= video_scale[video_of_row[lo:hi]][:, None]
            f.write(np.ascontiguousarray(chunk, np.float32).tobytes())
    return time.perf_counter() - start


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return pystats.median(times)


def _lengths(args: argparse.Namespace) -> np.ndarray:
    lengths = np.asarray(tables.load_table("ucf", "train").n_segments, np.int64)
    return lengths[:: args.quick_stride] if args.quick else lengths


def run(args: argparse.Namespace) -> dict:
    lengths = _lengths(args)
    dim = args.dim
    opts = PseudoLabelOptions.preset(args.variant)
    own_dir = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="clapjax_bench_")) if own_dir else Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"ucf_train_{'quick' if args.quick else 'full'}_{dim}.npy"
    result: dict = {
        "benchmark": "pseudolabels",
        "variant": args.variant,
        "quick": bool(args.quick),
        "num_videos": int(len(lengths)),
        "num_segments": int(lengths.sum()),
        "feature_dim": dim,
        "chunk_mb": args.chunk_mb,
        "jax_backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "load_average_at_start": list(os.getloadavg()),
    }
    expected = 128 + int(lengths.sum()) * dim * 4
    if path.exists() and abs(path.stat().st_size - expected) < 4096:
        result["write_features_s"] = 0.0
    else:
        # A child process writes the file so its buffers do not count in our peak RSS.
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "experiments.bench_pseudolabels", "--write-only", str(path), "--dim", str(dim)]
            + (["--quick", "--quick-stride", str(args.quick_stride)] if args.quick else []),
            check=True,
        )
        result["write_features_s"] = round(time.perf_counter() - t0, 2)
    try:
        features = np.load(path, mmap_mode="r")
        feature_bytes = features.size * 4
        result["feature_bytes"] = int(feature_bytes)
        layout = packed.layout_from_lengths(lengths)
        chunk_bytes = int(args.chunk_mb * 2**20)
        rss_before = _proc_status()

        t0 = time.perf_counter()
        shapes = clap_stats.warmup_statistics(features.shape, layout, opts, chunk_bytes=chunk_bytes)
        result["statistics_compile_s"] = round(time.perf_counter() - t0, 2)
        result["statistics_kernel_shapes"] = shapes

        t0, c0 = time.perf_counter(), _cpu_seconds()
        stats = clap_stats.compute_statistics(features, layout, opts, chunk_bytes=chunk_bytes)
        result["statistics_s"] = round(time.perf_counter() - t0, 2)
        # CPU seconds are less sensitive than wall time to other processes' load.
        result["statistics_cpu_s"] = round(_cpu_seconds() - c0, 2)

        t0 = time.perf_counter()
        labels = vpl.video_pseudo_labels(stats.stats, opts)
        result["vpl_first_s"] = round(time.perf_counter() - t0, 3)
        result["vpl_s"] = round(_median_time(lambda: vpl.video_pseudo_labels(stats.stats, opts), args.repeats), 3)
        result["videos_pseudo_anomalous"] = int(labels.sum())

        z = jnp.asarray(stats.magnitude)
        video_labels = jnp.asarray(labels)
        null_fn = jax.jit(null_model.participant_null)
        gen_fn = jax.jit(spl.generate_labels, static_argnames=("opts",))
        ref_fn = jax.jit(spl.refine_labels, static_argnames=("opts",))

        def spl_stage():
            summary = null_fn(z, layout, video_labels)
            mixture = null_model.server_mixture([summary], opts)
            return gen_fn(z, layout, video_labels, mixture, opts=opts)

        t0 = time.perf_counter()
        seg_labels = jax.block_until_ready(spl_stage())
        result["spl_first_s"] = round(time.perf_counter() - t0, 3)
        result["spl_s"] = round(_median_time(spl_stage, args.repeats), 3)
        result["segments_pseudo_anomalous"] = int(np.asarray(seg_labels).sum())

        scores = jnp.asarray(np.random.default_rng(1).random(z.shape[0], dtype=np.float32))
        t0 = time.perf_counter()
        jax.block_until_ready(ref_fn(scores, seg_labels, layout, video_labels, opts=opts))
        result["plr_first_s"] = round(time.perf_counter() - t0, 3)
        result["plr_s"] = round(
            _median_time(lambda: ref_fn(scores, seg_labels, layout, video_labels, opts=opts), args.repeats), 3
        )

        result["total_steady_s"] = round(result["statistics_s"] + result["vpl_s"] + result["spl_s"], 2)
        result["total_with_compile_s"] = round(
            result["statistics_compile_s"] + result["statistics_s"] + result["vpl_first_s"] + result["spl_first_s"], 2
        )
        peak = _peak_rss_bytes()
        status = _proc_status()
        result["peak_rss_bytes"] = peak
        result["peak_rss_over_feature_bytes"] = round(peak / feature_bytes, 3)
        result["rss_before_statistics_bytes"] = rss_before.get("VmRSS")
        result["final_rss_anon_bytes"] = status.get("RssAnon")
        result["final_rss_file_bytes"] = status.get("RssFile")
        result["load_average_at_end"] = list(os.getloadavg())
        result["target_time_s"] = 180
        result["target_peak_rss_ratio"] = 1.5
        del features
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            if own_dir:
                shutil.rmtree(data_dir, ignore_errors=True)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="where the feature file is written (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the feature file for later runs")
    parser.add_argument("--quick", action="store_true", help="every --quick-stride-th video only")
    parser.add_argument("--quick-stride", type=int, default=16)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--variant", default="paper", choices=("paper", "reference"))
    parser.add_argument("--chunk-mb", type=float, default=64.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--write-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_only:
        write_features(Path(args.write_only), _lengths(args), args.dim)
        return
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
