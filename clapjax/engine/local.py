"""Local training of ONE participant as pure ``init / step / final`` functions.

Backends vmap (or loop over) these; nothing here knows about other participants.
A step whose ``valid`` flag is False returns the previous state bit for bit
(``jnp.where`` over the whole state: parameters, optimiser state, RNG, counters),
which is how ragged participants share one scan length.

The step differentiates only the data term (masked BCE) and adds the L2
gradient ``l2·θ`` explicitly, with the floating-point operations autodiff
performs (bit-identical parameters). The penalty's *value*, needed only for
the reported loss, is carried in the state and computed from the updated
parameters at the end of a step: a reduction over the old parameters in the
middle of the step made XLA copy every parameter at the top of each scan
iteration (one extra ``K × parameters`` buffer, and that many bytes copied per
step). FedProx (``μ > 0``) still differentiates the whole objective, see
``client_fns``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from clapjax import model as model_lib
from clapjax.engine.options import TrainOptions
from clapjax.model import ModelOptions

Params = Any


class ClientState(NamedTuple):
    """Evolving state of one participant during a round.

    Attributes:
      params: model parameters. opt_state: local optimiser state.
      rng: typed PRNG key (dropout). steps: ``[] int32`` valid steps taken.
      loss_sum: ``[] float32`` sum of the per-step training losses.
      penalty: ``[] float32`` the regularisers' value at ``params`` (see
        :func:`penalty`), carried so a step never re-reads the parameters
        only to report the loss (not updated under FedProx, whose step
        differentiates the whole objective).
    """

    params: Params
    opt_state: Any
    rng: jax.Array
    steps: jax.Array
    loss_sum: jax.Array
    penalty: jax.Array


class ClientContext(NamedTuple):
    """Read-only inputs of one participant for a round.

    Attributes:
      anchor: the round's starting parameters (FedProx proximal centre).
      correction: SCAFFOLD gradient correction ``c − c_i`` (``()`` otherwise).
      labels: ``[N] float32`` the participant's current segment labels.
    """

    anchor: Params
    correction: Any
    labels: jax.Array


class Batch(NamedTuple):
    """One local step's inputs: x ``[B, C, D]``, positions ``[B]`` int32,
    mask ``[B]`` bool, valid ``[]`` bool."""

    x: jax.Array
    positions: jax.Array
    mask: jax.Array
    valid: jax.Array


class ClientOutput(NamedTuple):
    """What a participant hands back: final params, new SCAFFOLD control
    (``()`` otherwise), valid steps ``[]``, mean training loss ``[]``."""

    params: Params
    control: Any
    steps: jax.Array
    mean_loss: jax.Array


def local_optimizer(opts: TrainOptions) -> optax.GradientTransformation:
    """The participant's optax optimiser (re-initialised every round)."""
    if opts.optimizer == "adam":
        return optax.adam(opts.lr)
    return optax.sgd(opts.lr, momentum=opts.momentum if opts.momentum > 0 else None)


def _sq_norm(tree) -> jax.Array:
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def data_loss(
    params: Params, ctx: ClientContext, batch: Batch, masks: tuple[jax.Array, jax.Array] | None,
    model_options: ModelOptions,
) -> jax.Array:
    """Masked BCE of one batch (``masks``: dropout keep-masks, None: no dropout)."""
    labels = jnp.take(ctx.labels, batch.positions, axis=0, mode="clip")
    return model_lib.bce_loss(params, batch.x, labels, batch.mask, model_options, masks=masks)


def penalty(params: Params, anchor: Params, opts: TrainOptions) -> jax.Array:
    """``l2/2·‖θ‖²`` (+ ``μ/2·‖θ − anchor‖²`` for FedProx); ``[]`` float32."""
    out = jnp.zeros((), jnp.float32)
    if opts.l2 > 0:
        out = out + 0.5 * opts.l2 * _sq_norm(params)
    if opts.aggregator == "fedprox" and opts.mu > 0:
        out = out + 0.5 * opts.mu * _sq_norm(jax.tree.map(jnp.subtract, params, anchor))
    return out


def local_loss(
    params: Params, ctx: ClientContext, batch: Batch, masks: tuple[jax.Array, jax.Array] | None,
    model_options: ModelOptions, opts: TrainOptions,
) -> jax.Array:
    """Masked BCE + ``l2/2·‖θ‖²`` (+ ``μ/2·‖θ − anchor‖²`` for FedProx).

    The objective a step descends; ``masks`` are the dropout keep-masks
    (None: no dropout).
    """
    return data_loss(params, ctx, batch, masks, model_options) + penalty(params, ctx.anchor, opts)


def l2_grads(params: Params, grads: Params, opts: TrainOptions) -> Params:
    """``grads + l2·θ``, rounded exactly as autodiff of ``l2/2·‖θ‖²`` rounds it."""
    if opts.l2 <= 0:
        return grads
    # d/dθ (l2/2 · Σθ²) = θ · (l2/2 · 2): autodiff folds the constant, then adds the data term.
    c = jnp.float32(0.5 * opts.l2) * 2
    return jax.tree.map(lambda p, g: p * c + g, params, grads)


class ClientFns(NamedTuple):
    init: Callable[[Params, jax.Array], ClientState]
    step: Callable[[ClientState, ClientContext, Batch], ClientState]
    final: Callable[[ClientState, ClientContext, Any, Any], ClientOutput]


def client_fns(model_options: ModelOptions, opts: TrainOptions) -> ClientFns:
    """Builds the pure per-participant ``init``, ``step`` and ``final``."""
    tx = local_optimizer(opts)
    use_dropout = model_options.dropout_rate > 0
    grad_fn = jax.value_and_grad(data_loss)
    full_grad_fn = jax.value_and_grad(local_loss)
    proximal = opts.aggregator == "fedprox" and opts.mu > 0

    def init(params: Params, rng: jax.Array) -> ClientState:
        # A round starts at its anchor (the start parameters), so the proximal term is 0.
        return ClientState(params, tx.init(params), rng, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32),
                           penalty(params, params, opts))

    def step(state: ClientState, ctx: ClientContext, batch: Batch) -> ClientState:
        rng, dropout_key = jax.random.split(state.rng)
        # Masks are drawn outside the differentiated function (integer work).
        masks = model_lib.dropout_masks(dropout_key, batch.x.shape[:-1], model_options) if use_dropout else None
        if proximal:
            # FedProx differentiates the whole objective: at some shapes XLA rounds the explicit
            # proximal gradient differently, and earlier FedProx results must reproduce bit for bit.
            loss, grads = full_grad_fn(state.params, ctx, batch, masks, model_options, opts)
        else:
            loss, grads = grad_fn(state.params, ctx, batch, masks, model_options)
            loss = loss + state.penalty
            grads = l2_grads(state.params, grads, opts)
        if opts.aggregator == "scaffold":
            grads = jax.tree.map(jnp.add, grads, ctx.correction)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = ClientState(params, opt_state, rng, state.steps + 1, state.loss_sum + loss, state.penalty)
        # Padding steps must leave every bit of the state untouched.
        new = jax.tree.map(lambda a, b: jnp.where(batch.valid, a, b), new, state)
        if proximal:
            return new
        # The penalty is read from the *selected* parameters, so that the update has a
        # single consumer and XLA fuses update and selection into one pass over the
        # stacked weights (reading the unselected ones kept both alive: two more passes).
        return new._replace(penalty=jnp.where(batch.valid, penalty(new.params, ctx.anchor, opts), state.penalty))

    def final(state: ClientState, ctx: ClientContext, control: Any, server_control: Any) -> ClientOutput:
        steps = state.steps
        mean_loss = state.loss_sum / jnp.maximum(steps, 1).astype(jnp.float32)
        if opts.aggregator != "scaffold":
            return ClientOutput(state.params, (), steps, mean_loss)
        # Option II: c_i+ = c_i − c + (x − y_i) / (K_steps · lr).
        scale = 1.0 / (jnp.maximum(steps, 1).astype(jnp.float32) * opts.lr)
        new_control = jax.tree.map(
            lambda ci, c, x, y: jnp.where(steps > 0, ci - c + (x - y) * scale, ci),
            control, server_control, ctx.anchor, state.params,
        )
        return ClientOutput(state.params, new_control, steps, mean_loss)

    return ClientFns(init, step, final)


def run_steps(
    fns: ClientFns,
    state: ClientState,
    ctx: ClientContext,
    features: jax.Array | None,
    rows: jax.Array,
    positions: jax.Array,
    mask: jax.Array,
    valid: jax.Array,
    x: jax.Array | None = None,
) -> ClientState:
    """``lax.scan`` of ``step`` over ``T`` steps of one participant.

    Either ``features [S, C, D]`` with ``rows [T, B]`` (gathered per step on
    device) or pre-gathered ``x [T, B, C, D]`` (streaming) is used.
    """

    def body(carry, inp):
        if x is None:
            r, p, m, v = inp
            xb = jnp.take(features, r, axis=0, mode="clip")
        else:
            xb, p, m, v = inp
        return fns.step(carry, ctx, Batch(xb, p, m, v)), None

    xs = (rows if x is None else x, positions, mask, valid)
    state, _ = jax.lax.scan(body, state, xs)
    return state
