"""Per-round training throughput of every method (CLAP, C2FPL, GCL), vmap vs loop.

    python -m experiments.bench_methods --out methods.json          # K = 13, 65,536 segments
    python -m experiments.bench_methods --rows 8192 --rounds 2      # smoke check

Data: the default synthetic preset (UCF-Crime structure, D = 128, 1 crop)
on the official event-13 split (K = 13), each participant cut to its first
videos so that the participants keep their event-13 proportions of ``--rows``
segments in total. Every method trains with its ``paper`` preset (its own
``TrainOptions`` overrides, batch 128): CLAP with PLR after every round
(``plr_start_round=0``, so that the first round compiles it too; labels start
from windows of the true anomalous videos, since only the time matters here), C2FPL without refinement, GCL in its cooperative
phase (``pretrain_rounds=0``: both networks every step). For every method and
backend: the first round (compilation included), then ``--rounds`` steady
rounds interleaved across all six engines (``bench_train.interleaved_rounds``:
they share the machine's load), their median, segments per second and the
vmap / loop speed ratio per method (> 1: vmap faster).

JSON goes to stdout (and ``--out``); a summary goes to stderr. Timings on a
shared machine are noisy: compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

METHOD_NAMES = ("clap", "c2fpl", "gcl")
BACKENDS = ("vmap", "loop")


def training_set(rows: int, k: int = 13):
    """The default preset's event-13 participants, cut to ``rows`` segments in proportion."""
    from clapjax import data, pipeline, splits

    split = splits.load("ucf", "event", k)
    source = data.open_source("ucf", "train", synthetic=data.SyntheticConfig.preset("default"))
    lengths = np.asarray(source.lengths, np.int64)
    counts = np.array([lengths[p].sum() for p in split.participants], np.float64)
    budget = np.maximum(1, np.round(rows * counts / counts.sum())).astype(np.int64)
    parts = []
    for p, b in zip(split.participants, budget):
        keep = np.cumsum(lengths[p]) <= b  # whole videos within the budget, at least the first one
        keep[0] = True
        parts.append(np.asarray(p)[keep])
    split = dataclasses.replace(split, participants=tuple(parts), source=f"{split.source} cut to ~{rows} segments")
    return pipeline.load_training_set(source, split)


def engines_for(ts, name: str, backend: str, rounds: int, batch: int):
    """The engine of method ``name`` (paper preset) on ``ts``."""
    from clapjax import pipeline, spl
    from clapjax.engine import TrainOptions
    from clapjax.methods import METHODS
    from clapjax.options import PseudoLabelOptions

    spec = METHODS[name]
    options = spec.method_options("paper")
    if name == "gcl":
        options = options.replace(pretrain_rounds=0)
    train = TrainOptions.preset("paper", **spec.train_overrides("paper")).replace(
        rounds=rounds + 1, batch_size=batch, backend=backend)
    if train.plr_start_round is not None:
        train = train.replace(plr_start_round=0)
    pl_opts = PseudoLabelOptions.preset("paper")
    pl = None
    if spec.pseudo_label is not None:
        # Labels only need the right shapes: the true videos' windows of the segment magnitudes.
        from clapjax import statistics as stats_lib

        z = np.asarray(stats_lib.segment_magnitude(ts.features, pl_opts))
        seg = np.concatenate([
            np.asarray(spl.generate_from_scores(-z[ra:rb], ts.participant_layout(k),
                                                ts.true_video_labels[va:vb], pl_opts))
            for k, ((va, vb), (ra, rb)) in enumerate(zip(ts.video_ranges, ts.row_ranges))])
        pl = pipeline.PseudoLabels(z, np.zeros((ts.layout.num_videos, 2), np.float32), ts.true_video_labels,
                                   ts.true_video_labels, *(np.zeros(ts.num_participants) for _ in range(3)),
                                   seg, ("",) * ts.num_participants)
    method = spec.build(spec.model_options("paper"), pl_opts if train.plr_start_round is not None else None,
                        options)
    return pipeline.make_engine(ts, pl, method, train)


def run(rows: int, rounds: int, batch: int, methods=METHOD_NAMES, backends=BACKENDS, log=None) -> dict:
    """Measures every (method, backend); returns the JSON report."""
    import jax

    from clapjax.engine import data as data_lib
    from experiments import bench_train

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    ts = training_set(rows)
    total = int(ts.features.shape[0])
    log(f"bench_methods: {total} segments (D={ts.features.shape[2]}, crops={ts.features.shape[1]}) "
        f"over K={ts.num_participants} participants; {rounds} steady rounds")
    keys = [(m, b) for m in methods for b in backends]
    engines = [engines_for(ts, m, b, rounds, batch) for m, b in keys]
    times = bench_train.interleaved_rounds(engines, rounds)
    results = []
    for (m, b), engine, ts_ in zip(keys, engines, times):
        steady = statistics.median(ts_[1:])
        computed = data_lib.group_work(
            engine.plan(0).step_valid.sum(axis=1), engine.groups if b == "vmap" else
            [np.array([i]) for i in range(engine.num_padded)])
        results.append({
            "method": m, "backend": b, "first_round_s": ts_[0], "steady_rounds_s": ts_[1:],
            "steady_round_s": steady, "segments_per_s": total / steady,
            "real_steps": int(engine.plan(0).step_valid.sum()), "computed_steps": int(computed),
            "networks": list(engine.method.networks or ("scorer",)),
            "parameters": int(sum(np.prod(x.shape) for x in jax.tree.leaves(engine.init().server.params))),
            "refinement_rounds": engine.opts.plr_start_round is not None,
        })
        log(f"{m:6s} {b:5s}: first round {ts_[0]:.1f} s, steady {steady:.2f} s, {total / steady:.0f} seg/s")
    by = {(r["method"], r["backend"]): r for r in results}
    ratios = {}
    for m in methods:
        if (m, "vmap") in by and (m, "loop") in by:
            paired = [lo / vm for vm, lo in zip(by[(m, "vmap")]["steady_rounds_s"], by[(m, "loop")]["steady_rounds_s"])]
            ratios[m] = {"vmap_speedup_median_of_medians": by[(m, "loop")]["steady_round_s"]
                         / by[(m, "vmap")]["steady_round_s"], "vmap_speedup_paired": paired}
            log(f"{m:6s}: vmap / loop speed {ratios[m]['vmap_speedup_median_of_medians']:.2f}x")
    import os
    import platform

    return {"benchmark": "clapjax methods", "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "machine": {"platform": platform.platform(), "cores": os.cpu_count(), "jax": jax.__version__,
                        "load_average": os.getloadavg()},
            "config": {"rows_requested": rows, "segments": total, "K": ts.num_participants, "rounds": rounds,
                       "batch": batch, "preset": "default", "split": "ucf event 13 (cut)",
                       "methods": list(methods), "backends": list(backends)},
            "results": results, "vmap_over_loop": ratios, "total_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.bench_methods", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=65536, help="training segments over the 13 participants")
    p.add_argument("--rounds", type=int, default=3, help="steady rounds (median) after the first")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--methods", nargs="+", choices=METHOD_NAMES, default=list(METHOD_NAMES))
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.rows < 13 or args.rounds < 1:
        p.error("--rows must be >= 13 and --rounds >= 1")
    report = run(args.rows, args.rounds, args.batch, tuple(args.methods), tuple(args.backends))
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
