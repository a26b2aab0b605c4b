"""Execution backends: the same per-participant functions run vmapped, looped or sharded.

* ``vmap``: participants along a vmapped leading axis inside one jitted
  computation. Ragged participants are split into a few groups of similar
  step counts (``TrainOptions.vmap_groups``, ``data.step_groups``), one call
  each, so little padding is computed; a group of one participant runs the
  unbatched computation (a batch axis of size 1 turns XLA:CPU's dots into
  slower batched ones). The numbers are the same as in one padded call.
* ``loop``: a Python loop over participants, each running jitted chunks of
  ``chunk_steps`` steps and then its remaining steps one by one, so no padding
  step is computed (the equivalence and benchmark baseline, FedJAX-style).
* ``sharded``: the vmapped computation with the participant axis sharded over
  a 1-D ``jax.sharding.Mesh`` of all local devices (``NamedSharding``); K is
  padded to a multiple of the device count with fully masked participants.

Streaming (``TrainOptions.streaming``) keeps the features on the host: the
round is a host loop over chunks of steps whose batches are gathered from the
(memory-mapped) array, with the next chunk prefetched in a background thread.
All paths apply the identical ``step`` function to identical data.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import warnings
from typing import Callable, Iterator, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from clapjax.engine import local
from clapjax.engine.data import BatchPlan, adaptive_step_groups
from clapjax.engine.local import ClientContext, ClientFns, ClientOutput
from clapjax.engine.method import Method, as_method
from clapjax.engine.options import TrainOptions

#: Python-side trace counters (a jitted function's body runs once per compile).
TRACE_COUNTS: collections.Counter = collections.Counter()

PARTICIPANT_AXIS = "participants"
T = TypeVar("T")


def _correction(opts: TrainOptions, server_control, control):
    if opts.aggregator != "scaffold":
        return ()
    return jax.tree.map(jnp.subtract, server_control, control)


def participant_round(
    fns: ClientFns, opts: TrainOptions, start_params, rng, labels, control, server_control,
    features, rows, positions, mask, valid,
) -> ClientOutput:
    """A whole local round of one participant with on-device gathering."""
    ctx = ClientContext(start_params, _correction(opts, server_control, control), labels)
    state = fns.init(start_params, rng)
    state = local.run_steps(fns, state, ctx, features, rows, positions, mask, valid)
    return fns.final(state, ctx, control, server_control)


def score_rows(params, features, rows: jax.Array, method: Method) -> jax.Array:
    """Eval scores of ``rows [n_chunks, chunk]`` of ``features`` -> ``[n_chunks * chunk]``."""
    def one(r):
        return method.score(params, jnp.take(features, r, axis=0, mode="clip"))
    return jax.lax.map(one, rows).reshape(-1)


def compile_key(opts: TrainOptions) -> TrainOptions:
    """``opts`` with the fields that never reach compiled code (or the
    executor's host loop) reset, so engines differing only in them share
    compiled functions."""
    return dataclasses.replace(
        opts, rounds=1, local_epochs=1, batch_size=1, shuffle=True, weighting="uniform", vmap_groups=1, vmap_max_overhead=1.5,
        setting="collaborative", plr_start_round=None, plr_start="round", seed=0, streaming=False, score_chunk=1,
        lr_milestones=(), lr_decay=0.1)


@functools.lru_cache(maxsize=32)
def cached_executor(method: Method, opts: TrainOptions, stacked_start: bool,
                    devices: tuple | None = None, phase=0) -> "Executor":
    """An :class:`Executor` shared by engines with identical configuration, so
    a fresh engine (e.g. resuming in the same process) reuses compiled code."""
    fns = local.client_fns(method, opts, phase)
    return Executor(fns, opts, method, stacked_start, devices)


def device_mesh(devices=None) -> Mesh:
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices, (PARTICIPANT_AXIS,))


class Executor:
    """Runs one round's local training and per-participant scoring on a backend.

    Args:
      fns: per-participant functions; opts: configuration; method: the
        training method (its ``score``; a ``ModelOptions`` means CLAP's scorer).
      stacked_start: True if the start parameters carry a ``[K]`` axis (local
        setting), False if all participants start from the server parameters.
      devices: devices for the sharded backend (default: all local devices).
    """

    def __init__(self, fns: ClientFns, opts: TrainOptions, method: Method,
                 stacked_start: bool, devices=None):
        self.fns, self.opts, self.method = fns, opts, as_method(method)
        self.stacked_start = stacked_start
        self.backend = opts.backend
        self.mesh = device_mesh(devices) if self.backend == "sharded" else None
        self._build()

    @property
    def num_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.devices.size

    # ------------------------------------------------------------------ build
    def _build(self):
        fns, opts, method = self.fns, self.opts, self.method
        sp = 0 if self.stacked_start else None

        def train_all(start_params, rngs, labels, controls, server_control, features, rows, positions, mask, valid):
            TRACE_COUNTS["train_all"] += 1
            f = lambda *a: participant_round(fns, opts, *a)  # noqa: E731
            return jax.vmap(f, in_axes=(sp, 0, 0, 0, None, None, 0, 0, 0, 0))(
                start_params, rngs, labels, controls, server_control, features, rows, positions, mask, valid)

        def chunk_all(state, start_params, labels, controls, server_control, x, positions, mask, valid):
            TRACE_COUNTS["chunk_all"] += 1
            def one(st, sp_, lab, ctl, xx, p, m, v):
                ctx = ClientContext(sp_, _correction(opts, server_control, ctl), lab)
                return local.run_steps(fns, st, ctx, None, None, p, m, v, x=xx)
            return jax.vmap(one, in_axes=(0, sp, 0, 0, 0, 0, 0, 0))(
                state, start_params, labels, controls, x, positions, mask, valid)

        def init_all(start_params, rngs):
            TRACE_COUNTS["init_all"] += 1
            return jax.vmap(fns.init, in_axes=(sp, 0))(start_params, rngs)

        def final_all(state, start_params, labels, controls, server_control):
            TRACE_COUNTS["final_all"] += 1
            def one(st, sp_, lab, ctl):
                ctx = ClientContext(sp_, (), lab)
                return fns.final(st, ctx, ctl, server_control)
            return jax.vmap(one, in_axes=(0, sp, 0, 0))(state, start_params, labels, controls)

        def score_all(params, features, rows):
            TRACE_COUNTS["score_all"] += 1
            return jax.vmap(lambda p, r: score_rows(p, features, r, method))(params, rows)

        def score_chunk_all(params, x):
            TRACE_COUNTS["score_chunk_all"] += 1
            return jax.vmap(lambda p, xx: method.score(p, xx))(params, x)

        if self.backend == "sharded":
            # shard_map: each device runs the vmapped participants it holds.
            kp, rp = PartitionSpec(PARTICIPANT_AXIS), PartitionSpec()
            sp_spec = kp if self.stacked_start else rp

            def sm(f, in_specs):
                return jax.jit(jax.shard_map(f, mesh=self.mesh, in_specs=in_specs, out_specs=kp, check_vma=False))

            self._train_all = sm(train_all, (sp_spec, kp, kp, kp, rp, rp, kp, kp, kp, kp))
            self._chunk_all = sm(chunk_all, (kp, sp_spec, kp, kp, rp, kp, kp, kp, kp))
            self._init_all = sm(init_all, (sp_spec, kp))
            self._final_all = sm(final_all, (kp, sp_spec, kp, kp, rp))
            self._score_all = sm(score_all, (kp, rp, kp))
            self._score_chunk_all = sm(score_chunk_all, (kp, kp))
            self._k_sharding = NamedSharding(self.mesh, kp)
            self._rep_sharding = NamedSharding(self.mesh, rp)
        else:
            self._train_all = jax.jit(train_all)
            self._chunk_all = jax.jit(chunk_all)
            self._init_all = jax.jit(init_all)
            self._final_all = jax.jit(final_all)
            self._score_all = jax.jit(score_all)
            self._score_chunk_all = jax.jit(score_chunk_all)

        def train_one(start_params, rng, labels, control, server_control, features, rows, positions, mask, valid):
            TRACE_COUNTS["train_one"] += 1
            out = participant_round(fns, opts, start_params, rng, labels, control, server_control,
                                    features, rows, positions, mask, valid)
            return jax.tree.map(lambda a: a[None], out)

        self._train_one = jax.jit(train_one)

        # Loop backend: one participant at a time.
        def chunk_one(state, start_params, labels, control, server_control, features, rows, positions, mask, valid):
            TRACE_COUNTS["chunk_one"] += 1
            ctx = ClientContext(start_params, _correction(opts, server_control, control), labels)
            return local.run_steps(fns, state, ctx, features, rows, positions, mask, valid)

        def chunk_one_x(state, start_params, labels, control, server_control, x, positions, mask, valid):
            TRACE_COUNTS["chunk_one_x"] += 1
            ctx = ClientContext(start_params, _correction(opts, server_control, control), labels)
            return local.run_steps(fns, state, ctx, None, None, positions, mask, valid, x=x)

        def init_one(start_params, rng):
            TRACE_COUNTS["init_one"] += 1
            return fns.init(start_params, rng)

        def final_one(state, start_params, labels, control, server_control):
            TRACE_COUNTS["final_one"] += 1
            return fns.final(state, ClientContext(start_params, (), labels), control, server_control)

        def score_one(params, features, rows):
            TRACE_COUNTS["score_one"] += 1
            return score_rows(params, features, rows, method)

        def score_chunk_one(params, x):
            TRACE_COUNTS["score_chunk_one"] += 1
            return method.score(params, x)

        self._chunk_one = jax.jit(chunk_one)
        self._chunk_one_x = jax.jit(chunk_one_x)
        self._init_one = jax.jit(init_one)
        self._final_one = jax.jit(final_one)
        self._score_one = jax.jit(score_one)
        self._score_chunk_one = jax.jit(score_chunk_one)

    # -------------------------------------------------------------- placement
    def put_features(self, features: np.ndarray):
        """Features on the device(s): zero-copy on CPU when 64-byte aligned.

        The sharded backend replicates them (every device gathers rows of its
        participants from the whole array), i.e. one copy per device.
        """
        if self.backend == "sharded":
            return jax.device_put(features, self._rep_sharding)
        out = jax.device_put(features)
        dev = next(iter(out.devices()))
        if dev.platform == "cpu" and features.nbytes > 2**26:
            try:
                aliased = out.unsafe_buffer_pointer() == features.ctypes.data
            except Exception:  # noqa: BLE001 - pointer not exposed on some runtimes
                aliased = True
            if not aliased:
                warnings.warn(
                    "the feature array was copied to the device (it is not 64-byte aligned), so it is "
                    "held twice; allocate it with clapjax.engine.aligned_array or np.memmap, or use "
                    "streaming=True", stacklevel=3)
        return out

    def put_k(self, tree):
        if self.backend == "sharded":
            return jax.device_put(tree, self._k_sharding)
        return jax.device_put(tree)

    def put_rep(self, tree):
        if self.backend == "sharded":
            return jax.device_put(tree, self._rep_sharding)
        return jax.device_put(tree)

    def put_start(self, tree):
        return self.put_k(tree) if self.stacked_start else self.put_rep(tree)

    def gather(self, tree):
        """Participant outputs for the server: replicated on every device, so
        the aggregation reduces in the same order as on one device."""
        return self.put_rep(tree) if self.backend == "sharded" else tree

    # ------------------------------------------------------------------ train
    def stream_steps(self, features: np.ndarray, participants: int, batch: int) -> int:
        """Steps per streamed chunk: ``chunk_steps`` capped by ``stream_chunk_bytes``."""
        per_step = participants * batch * int(np.prod(features.shape[1:])) * np.dtype(features.dtype).itemsize
        return int(max(1, min(self.opts.chunk_steps, self.opts.stream_chunk_bytes // max(per_step, 1))))

    def train(self, start_params, rngs, labels, controls, server_control, plan: BatchPlan,
              features_device=None, features_host: np.ndarray | None = None,
              groups: list[np.ndarray] | None = None) -> ClientOutput:
        """Local training of all ``K`` (padded) participants.

        Exactly one of ``features_device`` (in-memory path) and
        ``features_host`` (streaming path) is given. ``groups`` (vmap backend,
        in-memory path): participant index groups, one call each (default:
        ``adaptive_step_groups`` of the plan with ``opts.vmap_groups``).
        """
        if self.backend == "loop":
            return self._train_loop(start_params, rngs, labels, controls, server_control, plan,
                                    features_device, features_host)
        start_params = self.put_start(start_params)
        rngs, labels, controls = self.put_k(rngs), self.put_k(labels), self.put_k(controls)
        server_control = self.put_rep(server_control)
        if self.backend == "vmap":
            return self._train_groups(start_params, rngs, labels, controls, server_control, plan,
                                      features_device, groups, features_host)
        if features_host is None:
            return self._train_all(start_params, rngs, labels, controls, server_control, features_device,
                                   *self.put_k(tuple(plan)))
        state = self._init_all(start_params, rngs)
        tc = self.stream_steps(features_host, plan.rows.shape[0], plan.rows.shape[2])
        for x, p, m, v in stream_chunks(features_host, plan, tc):
            state = _after(state, self._chunk_all(state, start_params, labels, controls, server_control,
                                                  *self.put_k((x, p, m, v))))
        return self._final_all(state, start_params, labels, controls, server_control)

    def _train_groups(self, start_params, rngs, labels, controls, server_control, plan: BatchPlan,
                      features_device, groups, features_host=None) -> ClientOutput:
        steps = plan.step_valid.sum(axis=1)
        if groups is None:
            groups = adaptive_step_groups(steps, self.opts.vmap_groups, self.opts.vmap_max_overhead)
        outputs = []
        for idx in groups:
            sub = BatchPlan(*(a[idx, : max(1, int(steps[idx].max()))] for a in plan))
            one = idx.size == 1
            if one:
                k = int(idx[0])
                pick = lambda tree: jax.tree.map(lambda a: a[k], tree)  # noqa: E731
                rng, lab = rngs[k], labels[k]
            else:
                pick = lambda tree: jax.tree.map(lambda a: a[idx], tree)  # noqa: E731
                rng, lab = rngs[idx], labels[idx]
            sp = pick(start_params) if self.stacked_start else start_params
            ctl = pick(controls)
            if features_host is not None:
                outputs.append(self._stream_group(sp, rng, lab, ctl, server_control, sub, features_host, one))
            elif one:
                outputs.append(self._train_one(sp, rng, lab, ctl, server_control, features_device,
                                               *(a[0] for a in sub)))
            else:
                outputs.append(self._train_all(sp, rng, lab, ctl, server_control, features_device, *sub))
        if len(groups) == 1 and np.array_equal(groups[0], np.arange(plan.rows.shape[0])):
            return outputs[0]
        inverse = np.argsort(np.concatenate(groups))
        return jax.tree.map(lambda *xs: jnp.concatenate(xs)[inverse], *outputs)

    def _stream_group(self, start_params, rngs, labels, controls, server_control, plan: BatchPlan,
                      features_host, one: bool) -> ClientOutput:
        """One step-count group trained from host features, chunk by chunk: the
        same per-participant computation as the in-memory group (a group of
        one runs unbatched, like ``_train_one``)."""
        k, _, b = plan.rows.shape
        tc = self.stream_steps(features_host, k, b)
        if one:
            state = self._init_one(start_params, rngs)
            for x, p, m, v in stream_chunks(features_host, plan, tc):
                state = _after(state, self._chunk_one_x(state, start_params, labels, controls, server_control,
                                                        x[0], p[0], m[0], v[0]))
            out = self._final_one(state, start_params, labels, controls, server_control)
            return jax.tree.map(lambda a: a[None], out)
        state = self._init_all(start_params, rngs)
        for x, p, m, v in stream_chunks(features_host, plan, tc):
            state = _after(state, self._chunk_all(state, start_params, labels, controls, server_control,
                                                  x, p, m, v))
        return self._final_all(state, start_params, labels, controls, server_control)

    def _train_loop(self, start_params, rngs, labels, controls, server_control, plan,
                    features_device, features_host) -> ClientOutput:
        tc = self.opts.chunk_steps
        outputs = []
        k_all = plan.rows.shape[0]
        for k in range(k_all):
            sp = jax.tree.map(lambda a: a[k], start_params) if self.stacked_start else start_params
            ctl = jax.tree.map(lambda a: a[k], controls)
            lab = labels[k]
            state = self._init_one(sp, rngs[k])
            n_valid = int(plan.step_valid[k].sum())
            one = BatchPlan(*(a[k : k + 1] for a in plan))
            if features_host is None:
                # Full chunks of tc steps, then the remainder one step at a time:
                # two compiled shapes, and no masked step is ever computed.
                bounds = [(c * tc, (c + 1) * tc) for c in range(n_valid // tc)]
                bounds += [(s, s + 1) for s in range((n_valid // tc) * tc, n_valid)]
                for lo, hi in bounds:
                    r, p, m, v = (a[0, lo:hi] for a in one)
                    state = self._chunk_one(state, sp, lab, ctl, server_control, features_device, r, p, m, v)
            else:
                trimmed = BatchPlan(*(a[:, : max(n_valid, 1)] for a in one))
                for x, p, m, v in stream_chunks(features_host, trimmed, self.stream_steps(features_host, 1, plan.rows.shape[2])):
                    state = _after(state, self._chunk_one_x(state, sp, lab, ctl, server_control,
                                                            x[0], p[0], m[0], v[0]))
            outputs.append(self._final_one(state, sp, lab, ctl, server_control))
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)

    # ---------------------------------------------------------------- scoring
    def score(self, params, rows: np.ndarray, features_device=None,
              features_host: np.ndarray | None = None) -> jax.Array:
        """Eval scores ``[K, n_chunks * chunk]`` of each participant's rows
        ``rows [K, n_chunks, chunk]`` under its own ``params [K, ...]``."""
        if self.backend == "loop":
            outs = []
            for k in range(rows.shape[0]):
                pk = jax.tree.map(lambda a: a[k], params)
                if features_host is None:
                    outs.append(self._score_one(pk, features_device, rows[k]))
                else:
                    rk = rows[k]
                    parts = []
                    for x in prefetched(lambda c: features_host[rk[c]], rk.shape[0]):
                        parts.append(_after(parts[-1] if parts else None, self._score_chunk_one(pk, x)))
                    outs.append(jnp.concatenate(parts))
            return jnp.stack(outs)
        params = self.put_k(params)
        if features_host is None:
            return self._score_all(params, features_device, self.put_k(rows))
        outs = []
        for x in prefetched(lambda c: features_host[rows[:, c]], rows.shape[1]):
            outs.append(_after(outs[-1] if outs else None, self._score_chunk_all(params, self.put_k(x))))
        return jnp.concatenate(outs, axis=1)


def _pad_steps(a: np.ndarray, t: int) -> np.ndarray:
    """Pads the step axis (0) to ``t`` with zeros (= masked, invalid steps)."""
    if a.shape[0] == t:
        return a
    pad = [(0, t - a.shape[0])] + [(0, 0)] * (a.ndim - 1)
    return np.pad(a, pad)


def _after(previous, new):
    """Returns ``new`` once ``previous`` (the last chunk's result) is computed.

    JAX dispatches asynchronously: without this a host loop over streamed
    chunks would queue every chunk's features (each call keeps its input
    alive until it runs), i.e. the whole round in memory. Waiting for the
    previous chunk keeps at most two chunks on the device (one running, one
    queued) plus the one being read.
    """
    if previous is not None:
        jax.block_until_ready(previous)
    return new


def prefetched(load: Callable[[int], T], n: int) -> Iterator[T]:
    """Yields ``load(0), ..., load(n - 1)``; item ``c + 1`` is loaded in a
    background thread while the caller works on item ``c`` (host reads overlap
    device compute; at most two items exist at once)."""
    if n <= 0:
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, 0)
        for c in range(n):
            item = pending.result()
            if c + 1 < n:
                pending = pool.submit(load, c + 1)
            yield item
            del item


def stream_chunks(features, plan: BatchPlan, chunk_steps: int
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yields ``(x [K, Tc, B, C, D], positions, mask, valid)`` chunk by chunk.

    The next chunk's rows are read from ``features`` (np.ndarray, np.memmap
    or a row store such as :class:`clapjax.data.store.PackedFeatures`) in a
    background thread while the caller trains on the current one.
    """
    k, t, b = plan.rows.shape
    n_chunks = -(-t // chunk_steps)

    def load(c):
        sl = slice(c * chunk_steps, (c + 1) * chunk_steps)
        rows = _pad_steps(plan.rows[:, sl].transpose(1, 0, 2), chunk_steps).transpose(1, 0, 2)
        x = features[rows.reshape(-1)].reshape(k, chunk_steps, b, *features.shape[1:])
        pos, mask = (_pad_steps(a[:, sl].transpose(1, 0, 2), chunk_steps).transpose(1, 0, 2)
                     for a in (plan.positions, plan.row_mask))
        valid = _pad_steps(plan.step_valid[:, sl].T, chunk_steps).T
        return x, pos, mask, valid

    yield from prefetched(load, n_chunks)
