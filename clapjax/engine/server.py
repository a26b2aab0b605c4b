"""Server side: FedAvg / FedProx / SCAFFOLD aggregation over the participant axis.

Participants only hand over parameter deltas ``Δ_k = θ_k − θ`` (and, for
SCAFFOLD, control-variate deltas ``Δc_k``); everything here is a reduction over
the leading participant axis of stacked pytrees.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clapjax.engine.local import ClientOutput
from clapjax.engine.options import TrainOptions

Params = Any


class ServerState(NamedTuple):
    """Global parameters, server-optimiser state (``()`` if none) and the
    SCAFFOLD server control variate ``c`` (``()`` unless SCAFFOLD)."""

    params: Params
    opt_state: Any
    control: Any


def server_optimizer(opts: TrainOptions) -> optax.GradientTransformation | None:
    """Optax optimiser applied to the negative mean delta, or None (λ-step)."""
    lr, b1, b2, eps = opts.server_lr, opts.server_b1, opts.server_b2, opts.server_eps
    if opts.server_optimizer == "none":
        return None
    if opts.server_optimizer == "sgd":
        return optax.sgd(lr, momentum=b1)
    if opts.server_optimizer == "adam":
        return optax.adam(lr, b1=b1, b2=b2, eps=eps)
    if opts.server_optimizer == "yogi":
        return optax.yogi(lr, b1=b1, b2=b2, eps=eps)
    return optax.adagrad(lr, eps=eps)


def zeros_like(params: Params) -> Params:
    return jax.tree.map(jnp.zeros_like, params)


def init_server(params: Params, opts: TrainOptions, tx: optax.GradientTransformation | None) -> ServerState:
    """Server state; SCAFFOLD's ``c`` starts at zero (never random)."""
    opt_state = tx.init(params) if tx is not None else ()
    control = zeros_like(params) if opts.aggregator == "scaffold" else ()
    return ServerState(params, opt_state, control)


def participant_weights(counts: np.ndarray, weighting: str, num_participants: int) -> np.ndarray:
    """``[K_pad] float32`` aggregation weights summing to 1 over real participants.

    "uniform": 1/K over participants with data; "segments": n_k / Σ n.
    Padding participants (and empty ones) get weight 0.
    """
    counts = np.asarray(counts, np.float64)
    w = np.zeros(num_participants, np.float64)
    has = counts > 0
    if not has.any():
        raise ValueError("no participant has any segment to train on")
    w[: counts.size] = np.where(has, 1.0, 0.0) if weighting == "uniform" else counts
    return (w / w.sum()).astype(np.float32)


def control_weights(counts: np.ndarray, num_participants: int) -> np.ndarray:
    """``[K_pad]`` SCAFFOLD weights for ``c += |S|/N · mean_{k∈S} Δc_k`` with
    every real participant sampled (|S| = N): 1/N each, 0 for padding."""
    w = np.zeros(num_participants, np.float32)
    n = len(counts)
    w[:n] = 1.0 / n
    return w


def weighted_sum(weights: jax.Array, stacked: Params) -> Params:
    """``Σ_k w_k · x_k`` over the leading axis, accumulated in participant order.

    A sequential scan (instead of a dot) fixes the summation order, so padding
    participants (weight 0, appended last) add exact zeros and every backend
    and padding level gives bit-identical results.
    """
    def body(acc, wx):
        w, x = wx
        return jax.tree.map(lambda a, b: a + w * b, acc, x), None

    init = jax.tree.map(lambda x: jnp.zeros(x.shape[1:], x.dtype), stacked)
    total, _ = jax.lax.scan(body, init, (weights, stacked))
    return total


def aggregate(
    server: ServerState,
    outputs: ClientOutput,
    client_controls: Any,
    weights: jax.Array,
    c_weights: jax.Array,
    opts: TrainOptions,
    tx: optax.GradientTransformation | None,
) -> tuple[ServerState, Any]:
    """One server update from stacked participant outputs.

    Args:
      outputs: ``ClientOutput`` with a leading ``[K]`` axis on every leaf.
      client_controls: ``[K, ...]`` SCAFFOLD ``c_i`` before the round (``()`` otherwise).
      weights: ``[K]`` delta weights; c_weights: ``[K]`` control-delta weights.
    Returns:
      (new server state, new ``[K, ...]`` client controls).
    """
    deltas = jax.tree.map(lambda local, g: local - g[None], outputs.params, server.params)
    mean_delta = weighted_sum(weights, deltas)
    if tx is None:
        params = jax.tree.map(lambda p, d: p + opts.server_lr * d, server.params, mean_delta)
        opt_state = server.opt_state
    else:
        pseudo_grad = jax.tree.map(jnp.negative, mean_delta)
        updates, opt_state = tx.update(pseudo_grad, server.opt_state, server.params)
        params = optax.apply_updates(server.params, updates)
    control = server.control
    if opts.aggregator == "scaffold":
        # The server adds Δc_i = c_i+ − c_i (not c_i itself).
        dc = jax.tree.map(jnp.subtract, outputs.control, client_controls)
        control = jax.tree.map(jnp.add, server.control, weighted_sum(c_weights, dc))
        client_controls = outputs.control
    return ServerState(params, opt_state, control), client_controls


def upload_bytes(params: Params, opts: TrainOptions) -> int:
    """Bytes one participant uploads per round: its delta (+ Δc for SCAFFOLD).

    Zero in the local and centralized settings (no aggregation).
    """
    n = sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))
    if opts.setting in ("local", "centralized"):
        return 0  # nothing is communicated
    return 2 * n if opts.aggregator == "scaffold" else n
