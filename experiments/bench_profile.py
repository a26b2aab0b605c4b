"""Where a K = 13 training step's time goes on the CPU, measured in CPU seconds.

CPU time of a single-threaded process on one core barely depends on what else
the machine runs (it counts only the cycles this process got), so these ratios
are usable on a loaded, shared machine where wall times are not::

    python -m experiments.bench_profile --out profile.json

Run as a command it pins itself to one core and makes XLA single-threaded
(``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``) before JAX starts.
Reported (JSON to stdout):

* ``hlo``: XLA's cost analysis of the compiled vmap round per network (its
  scanned step): matmul FLOPs and bytes accessed per step.
* ``matmul_gflop_per_cpu_s``: plain float32 matmuls of the step's shapes,
  ``jnp.dot`` against ``torch.mm`` (PyTorch's own BLAS), per CPU second.
* ``dots``: GFLOP per CPU second of the step's first-layer matmul shapes, K
  participants batched (as vmap runs them) and one participant alone:
  forward ``[B, D] @ [D, H]`` and weight gradient ``[D, B] @ [B, H]``.
* ``update``: CPU milliseconds of one SGD update over K stacked ``[D, H]``
  weights (read weights and gradients, write weights), and the bytes per CPU
  second that makes.
* ``rounds``: GFLOP per CPU second of whole training rounds (vmap, K = 13),
  interleaved: both networks, with and without dropout and L2, and the
  PyTorch peer (one thread) when PyTorch is installed.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[-1:])

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from clapjax import model as model_lib  # noqa: E402
from clapjax.engine import Engine, TrainOptions, federated_data  # noqa: E402
from clapjax.model import ModelOptions  # noqa: E402
from experiments import bench_torch, bench_train  # noqa: E402


def cpu_seconds(f, *args, repeats: int = 10) -> float:
    """Median CPU seconds of ``f(*args)`` (result ready) after one warm-up call."""
    jax.block_until_ready(f(*args))
    out = []
    for _ in range(repeats):
        t = time.process_time()
        jax.block_until_ready(f(*args))
        out.append(time.process_time() - t)
    return statistics.median(out)


def hlo_costs(network: str, k: int, dim: int, batch: int) -> dict:
    """Matmul FLOPs and bytes accessed of one scanned step of the compiled vmap round."""
    rows = batch * k * 4
    feats = bench_train.aligned_features(rows, 1, dim)
    engine = Engine(federated_data(feats, np.zeros(rows, np.float32), np.array_split(np.arange(rows), k)),
                    ModelOptions.preset(network), TrainOptions(batch_size=batch, plr_start_round=None))
    cost = bench_train.compiled_vmap_round(engine, engine.init()).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {"flops_per_step": float(cost["flops"]), "bytes_accessed_per_step": float(cost["bytes accessed"]),
            "parameter_bytes_K": k * 4 * model_lib.parameter_count(engine.init().server.params)}


def dots(k: int, dim: int, batch: int, width: int) -> dict:
    x = jax.random.normal(jax.random.key(0), (k, batch, dim))
    w = jax.random.normal(jax.random.key(1), (k, dim, width))
    g = jax.random.normal(jax.random.key(2), (k, batch, width))
    fl = 2.0 * batch * dim * width
    fwd_k = jax.jit(lambda x, w: jnp.einsum("kbd,kdh->kbh", x, w))
    wgr_k = jax.jit(lambda x, g: jnp.einsum("kbd,kbh->kdh", x, g))
    fwd_1 = jax.jit(lambda x, w: x[0] @ w[0])
    wgr_1 = jax.jit(lambda x, g: x[0].T @ g[0])
    return {"K": k, "batch": batch, "dim": dim, "width": width,
            "forward_batched_gflop_per_cpu_s": k * fl / cpu_seconds(fwd_k, x, w) / 1e9,
            "weight_gradient_batched_gflop_per_cpu_s": k * fl / cpu_seconds(wgr_k, x, g) / 1e9,
            "forward_one_gflop_per_cpu_s": fl / cpu_seconds(fwd_1, x, w) / 1e9,
            "weight_gradient_one_gflop_per_cpu_s": fl / cpu_seconds(wgr_1, x, g) / 1e9}


def matmuls(shapes: list[tuple[int, int, int]]) -> dict:
    """GFLOP per CPU second of ``jnp.dot`` (XLA) and, when installed, ``torch.mm`` (PyTorch's BLAS)."""
    out = {}
    for m, k, n in shapes:
        a = jax.random.normal(jax.random.key(0), (m, k))
        b = jax.random.normal(jax.random.key(1), (k, n))
        row = {"jax": 2.0 * m * k * n / cpu_seconds(jax.jit(jnp.dot), a, b) / 1e9}
        if bench_torch.unavailable_reason() is None:
            import torch

            torch.set_num_threads(1)
            ta, tb = torch.from_numpy(np.array(a)), torch.from_numpy(np.array(b))  # writable copies
            row["torch"] = 2.0 * m * k * n / cpu_seconds(torch.mm, ta, tb) / 1e9
        out[f"{m}x{k}x{n}"] = row
    return out


def update(k: int, dim: int, width: int) -> dict:
    w = jax.random.normal(jax.random.key(1), (k, dim, width))
    g = jax.random.normal(jax.random.key(2), (k, dim, width))
    f = jax.jit(lambda w, g: w + (-0.01) * (w * 2e-4 + g))
    t = cpu_seconds(f, w, g)
    return {"K": k, "shape": [dim, width], "cpu_ms": 1e3 * t, "bytes_per_cpu_s": 3 * w.nbytes / t}


def rounds(k: int, rows: int, dim: int, batch: int, repeats: int, torch_peer: bool) -> list[dict]:
    feats = bench_train.aligned_features(rows, 1, dim)
    labels = (np.random.default_rng(1).random(rows) < 0.2).astype(np.float32)
    parts = np.array_split(np.arange(rows), k)
    data = federated_data(feats, labels, parts)
    runs = []
    for network in ("paper", "reference"):
        base = ModelOptions.preset(network)
        for name, mo, kw in (("default", base, {}), ("no L2", base, {"l2": 0.0}),
                             ("no dropout", dataclasses.replace(base, dropout_rate=0.0), {}),
                             ("released-code options", base, "reference")):
            opts = (TrainOptions.preset("reference", batch_size=batch) if kw == "reference"
                    else TrainOptions(batch_size=batch, plr_start_round=None, **kw))
            engine = Engine(data, mo, opts)
            runs.append((network, f"clapjax vmap, {name}", engine, mo))
        if torch_peer:
            import torch

            torch.set_num_threads(1)
            start = jax.device_get(runs[-1][2].init().server.params)
            runs.append((network, "PyTorch loop, released-code options",
                         bench_torch.TorchPeer(feats, labels, parts, base, batch_size=batch, init_params=start), base))
    states = []
    for _, _, runner, _ in runs:
        state, _ = runner.run_round(runner.init())
        bench_train._ready(state)
        states.append(state)
    cpu = [[] for _ in runs]
    for r in range(repeats):
        for i in list(range(len(runs)))[r % len(runs):] + list(range(len(runs)))[: r % len(runs)]:
            t = time.process_time()
            states[i], _ = runs[i][2].run_round(states[i])
            bench_train._ready(states[i])
            cpu[i].append(time.process_time() - t)
    out = []
    for (network, name, _, mo), ts in zip(runs, cpu):
        t = statistics.median(ts)
        out.append({"network": network, "run": name, "cpu_s_per_round": t, "cpu_s_rounds": ts,
                    "gflop_per_cpu_s": rows * model_lib.train_flops_per_row(mo, dim) / t / 1e9,
                    "segments_per_cpu_s": rows / t})
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=13)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rows", type=int, default=8192, help="segments per profiled round")
    p.add_argument("--repeats", type=int, default=3, help="steady rounds per configuration (median)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    report = {"threads": {"cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                          "xla_flags": os.environ.get("XLA_FLAGS", "")},
              "hlo": {n: hlo_costs(n, args.k, args.dim, args.batch) for n in ("paper", "reference")},
              "matmul_gflop_per_cpu_s": matmuls([(args.batch, args.dim, 512), (args.dim, args.batch, 512),
                                                 (1024, 1024, 1024)]),
              "dots": dots(args.k, args.dim, args.batch, 512),
              "update": update(args.k, args.dim, 512),
              "rounds": rounds(args.k, args.rows, args.dim, args.batch, args.repeats,
                               bench_torch.unavailable_reason() is None)}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
