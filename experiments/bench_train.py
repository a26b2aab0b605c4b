"""Training-throughput benchmark of the federated engine (JSON to stdout).

For each network (paper, reference), backend (vmap, loop, sharded) and number
of participants K, a fixed total of segments is split evenly over K
participants and full rounds are timed: the first round (compilation included)
separately, then the median of the steady rounds, which are interleaved across
backends (in an order rotating every round) so that they share the same
(possibly noisy) machine load. Throughput is reported as
segments/s and as model FLOP/s (matmul FLOPs of forward + backward, see
``clapjax.model.train_flops_per_row``) divided by this machine's float32
matmul peak, measured in the same run with a large ``jnp.dot``.

    python -m experiments.bench_train --out bench_train.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from clapjax import model as model_lib
from clapjax.engine import Engine, TrainOptions, federated_data
from clapjax.model import ModelOptions


def matmul_peak(n: int = 4096, repeats: int = 5) -> float:
    """Median float32 FLOP/s of an ``n×n @ n×n`` jitted ``jnp.dot``."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2.0 * n**3 / statistics.median(times)


def aligned_features(rows: int, crops: int, dim: int, seed: int = 0) -> np.ndarray:
    """Random float32 features in a 64-byte aligned buffer (zero-copy device_put on CPU)."""
    n = rows * crops * dim * 4
    buf = np.empty(n + 64, np.uint8)
    off = (-buf.ctypes.data) % 64
    out = buf[off : off + n].view(np.float32).reshape(rows, crops, dim)
    rng = np.random.default_rng(seed)
    for start in range(0, rows, 8192):
        out[start : start + 8192] = rng.standard_normal(out[start : start + 8192].shape, np.float32)
    return out


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Resets this process's ``VmHWM`` (Linux ``clear_refs`` 5); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_check(rows: int, dim: int, crops: int, k: int, batch: int, network: str = "paper") -> dict:
    """Peak resident memory of in-memory training rounds relative to the features.

    Run in a fresh process (``--memory-check``): the baseline is the resident
    set after JAX start-up, before the features exist. The first round
    compiles; its peak (compiler memory included) is reported apart from the
    steady rounds' peak (``VmHWM`` reset after the first round), which is what
    the target ``peak <= baseline + 1.25 x features`` is checked on. XLA's own
    account of the round's buffers (``memory_analysis``) is reported too.
    """
    jax.block_until_ready(jnp.zeros(1) + 1)
    baseline = _status_kb("VmRSS") * 1024
    features = aligned_features(rows, crops, dim)
    labels = np.zeros(rows, np.float32)
    parts = np.array_split(np.arange(rows), k)
    engine = Engine(federated_data(features, labels, parts), ModelOptions.preset(network),
                    TrainOptions(batch_size=batch, plr_start_round=None))
    state = engine.init()
    state, _ = engine.run_round(state)
    jax.block_until_ready(state)
    first_peak = _status_kb("VmHWM") * 1024
    reset = _reset_peak_rss()
    for _ in range(2):
        state, _ = engine.run_round(state)
    jax.block_until_ready(state)
    steady_peak = _status_kb("VmHWM") * 1024
    xla = _round_memory_analysis(engine, state)
    ratio = (steady_peak - baseline) / features.nbytes
    return {"feature_bytes": features.nbytes, "rows": rows, "dim": dim, "crops": crops, "K": k,
            "network": network, "batch": batch, "baseline_rss_bytes": baseline,
            "first_round_peak_rss_bytes": first_peak, "peak_rss_bytes": steady_peak,
            "steady_peak_measured": reset, "peak_over_features": ratio,
            "model_parameters": model_lib.parameter_count(state.server.params), "xla_round_buffers": xla,
            "target": 1.25, "met": ratio <= 1.25}


def compiled_vmap_round(engine, state):
    """The compiled one-call vmapped local training of round 0 (all participants)."""
    from clapjax.engine import data as data_lib

    plan = data_lib.make_plan(engine.data.participants, engine.opts.batch_size, engine.opts.local_epochs,
                              engine.opts.shuffle, engine.opts.seed, 0, engine.num_steps, engine.num_padded)
    rngs = engine._round_keys(state.rng, jnp.int32(0))
    return engine.executor._train_all.lower(state.server.params, rngs, state.labels, state.client_controls,
                                            state.server.control, engine._features(), *plan).compile()


def _round_memory_analysis(engine, state) -> dict | None:
    """XLA's byte counts of the compiled vmap round (temporaries, outputs), or None."""
    if engine.executor.backend != "vmap":
        return None
    try:
        ma = compiled_vmap_round(engine, state).memory_analysis()
    except Exception:  # noqa: BLE001 - not every runtime offers memory_analysis
        return None
    if ma is None:
        return None
    return {"temp_bytes": int(ma.temp_size_in_bytes), "output_bytes": int(ma.output_size_in_bytes),
            "argument_bytes": int(ma.argument_size_in_bytes)}


def computed_rows(parts: list[np.ndarray], batch: int) -> int:
    """Rows the steps compute: each participant's last partial batch is masked, not dropped."""
    return int(sum(-(-p.size // batch) for p in parts) * batch)


def _ready(state):
    """Blocks until a round's result exists (an engine's server parameters, or
    any other pytree, e.g. the PyTorch peer's state dict, computed eagerly)."""
    server = getattr(state, "server", None)
    return jax.block_until_ready(state if server is None else server.params)


def interleaved_rounds(engines: list, rounds: int) -> list[list[float]]:
    """Wall times of every engine's first round (compilation included), then of
    ``rounds`` steady rounds interleaved across the engines, so that they share
    the same (possibly noisy) machine load. The order rotates every round
    (A, B, C, then B, C, A, …): no engine always runs right after the same
    other one (other thread pools, colder caches). An engine is anything with
    ``init()`` and ``run_round(state) -> (state, metrics)``: a clapjax
    :class:`Engine` or ``experiments.bench_torch.TorchPeer``.

    Returns:
      ``[len(engines)]`` lists of ``1 + rounds`` seconds, the first round first.
    """
    states, times = [], []
    for engine in engines:
        t = time.perf_counter()
        state, _ = engine.run_round(engine.init())
        _ready(state)
        states.append(state)
        times.append([time.perf_counter() - t])
    order = list(range(len(engines)))
    for r in range(rounds):
        for i in order[r % len(order):] + order[: r % len(order)]:
            t = time.perf_counter()
            states[i], _ = engines[i].run_round(states[i])
            _ready(states[i])
            times[i].append(time.perf_counter() - t)
    return times


def bench_group(features, labels, k, network, backends, dropout, batch, prng_impl, rounds):
    """Times every backend on the same data (``interleaved_rounds``)."""
    rows = features.shape[0]
    parts = np.array_split(np.arange(rows), k)
    data = federated_data(features, labels, parts)
    mo = ModelOptions.preset(network)
    if not dropout:
        mo = ModelOptions(attention=mo.attention, dropout_rate=0.0)
    flops = rows * features.shape[1] * model_lib.train_flops_per_row(mo, features.shape[2])
    engines = [Engine(data, mo, TrainOptions(rounds=rounds + 1, batch_size=batch, backend=backend,
                                             plr_start_round=None, prng_impl=prng_impl, chunk_steps=64))
               for backend in backends]
    times = dict(zip(backends, interleaved_rounds(engines, rounds)))
    engines = dict(zip(backends, engines))
    out = []
    for backend in backends:
        ts = times[backend]
        steady = statistics.median(ts[1:])
        out.append({
            "network": network, "backend": backend, "K": k, "dropout": dropout, "prng_impl": prng_impl,
            "first_round_s": ts[0], "compile_s": max(ts[0] - steady, 0.0), "steady_round_s": steady,
            "steady_rounds_s": ts[1:], "segments_per_s": rows / steady, "model_flops_per_s": flops / steady,
            "devices": engines[backend].executor.num_devices, "padded_K": engines[backend].num_padded,
            "computed_rows": computed_rows(parts, batch),
        })
        print(json.dumps({kk: out[-1][kk] for kk in ("network", "backend", "K", "prng_impl", "dropout",
                                                   "segments_per_s", "steady_rounds_s")}),
              flush=True, file=sys.stderr)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=65536)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--crops", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 13, 25, 50])
    p.add_argument("--backends", nargs="+", default=["vmap", "loop", "sharded"])
    p.add_argument("--networks", nargs="+", default=["paper", "reference"])
    p.add_argument("--rounds", type=int, default=3, help="steady rounds per configuration (median)")
    p.add_argument("--prng", nargs="+", default=["rbg"], help="PRNG impls to compare at --prng-k")
    p.add_argument("--prng-k", type=int, default=13)
    p.add_argument("--no-dropout-at", type=int, default=13, help="also run K without dropout (0: skip)")
    p.add_argument("--memory-check", action="store_true",
                   help="only measure peak RSS of in-memory rounds relative to the feature array")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.memory_check:
        text = json.dumps(memory_check(args.rows, args.dim, args.crops, 13, args.batch, args.networks[0]), indent=1)
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
        return

    features = aligned_features(args.rows, args.crops, args.dim)
    labels = (np.random.default_rng(1).random(args.rows) < 0.2).astype(np.float32)
    peak_before = matmul_peak()
    results = []
    for network in args.networks:
        for k in args.ks:
            results += bench_group(features, labels, k, network, args.backends, True, args.batch, "rbg", args.rounds)
        # PRNG comparison and the no-dropout ceiling at one K, interleaved with rbg.
        extra = [impl for impl in args.prng if impl != "rbg"]
        for impl in extra:
            results += bench_group(features, labels, args.prng_k, network, ["vmap"], True, args.batch, impl,
                                   args.rounds)
        if args.no_dropout_at:
            results += bench_group(features, labels, args.no_dropout_at, network, ["vmap"], False, args.batch,
                                   "rbg", args.rounds)
    peak_after = matmul_peak()
    peak = max(peak_before, peak_after)
    for r in results:
        r["fraction_of_peak"] = r["model_flops_per_s"] / peak
    by = {(r["network"], r["backend"], r["K"]): r for r in results if r["dropout"] and r["prng_impl"] == "rbg"}
    vmap_ge_loop = {f"{n}/K={k}": by[(n, "vmap", k)]["segments_per_s"] >= by[(n, "loop", k)]["segments_per_s"]
                    for n in args.networks for k in args.ks if (n, "vmap", k) in by and (n, "loop", k) in by}
    k13 = {n: by[(n, "vmap", 13)]["fraction_of_peak"] for n in args.networks if (n, "vmap", 13) in by}
    report = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
                    "note": "shared machine: other processes ran concurrently; timings are noisy"},
        "config": vars(args),
        "matmul_peak_flops": {"before": peak_before, "after": peak_after, "used": peak},
        "results": results,
        "targets": {"vmap_ge_loop": vmap_ge_loop, "vmap_fraction_of_peak_K13": k13,
                    "vmap_ge_loop_all": all(vmap_ge_loop.values()) if vmap_ge_loop else None,
                    "k13_ge_65pct_all": all(v >= 0.65 for v in k13.values()) if k13 else None},
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
