"""Local training of ONE participant as pure ``init / step / final`` functions.

Backends vmap (or loop over) these; nothing here knows about other
participants, and nothing here knows a method: a step runs the method's
stages (:class:`clapjax.engine.method.Stage`), each a gradient step of one
network with its own optimiser state.
A step whose ``valid`` flag is False returns the previous state bit for bit
(``jnp.where`` over the whole state: parameters, optimiser state, RNG, counters),
which is how ragged participants share one scan length.

The step differentiates only the data term (e.g. masked BCE) and adds the L2
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

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from clapjax.engine.method import Method, as_method, network_of, with_network
from clapjax.engine.options import TrainOptions

Params = Any


class ClientState(NamedTuple):
    """Evolving state of one participant during a round.

    Attributes:
      params: model parameters. opt_state: local optimiser state (a dict of
        one state per network for multi-network methods).
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
    if opts.optimizer == "adagrad":
        return optax.adagrad(opts.lr, initial_accumulator_value=0.0, eps=1e-8)
    if opts.optimizer == "rmsprop":
        return optax.rmsprop(opts.lr, decay=0.99, eps=1e-8)
    return optax.sgd(opts.lr, momentum=opts.momentum if opts.momentum > 0 else None, nesterov=opts.nesterov)


def _sq_norm(tree) -> jax.Array:
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def penalty(params: Params, anchor: Params, opts: TrainOptions) -> jax.Array:
    """``l2/2·‖θ‖²`` (+ ``μ/2·‖θ − anchor‖²`` for FedProx); ``[]`` float32."""
    out = jnp.zeros((), jnp.float32)
    if opts.l2 > 0:
        out = out + 0.5 * opts.l2 * _sq_norm(params)
    if opts.aggregator == "fedprox" and opts.mu > 0:
        out = out + 0.5 * opts.mu * _sq_norm(jax.tree.map(jnp.subtract, params, anchor))
    return out


def local_loss(stage_loss, net_params: Params, params: Params, anchor: Params, batch: Batch, labels: jax.Array,
               noise: Any, opts: TrainOptions) -> jax.Array:
    """A stage's objective including its network's regularisers:
    ``stage_loss + l2/2·‖θ‖²`` (+ ``μ/2·‖θ − anchor‖²`` for FedProx).

    ``anchor`` is the network's round-start parameters; ``noise`` the step's
    non-differentiated randomness (e.g. dropout masks).
    """
    return stage_loss(net_params, params, batch, labels, noise) + penalty(net_params, anchor, opts)


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


def client_fns(method: Method, opts: TrainOptions, phase=0) -> ClientFns:
    """Builds the pure per-participant ``init``, ``step`` and ``final`` of
    ``method`` (or a ``ModelOptions``: CLAP's scorer) in ``phase``.

    A step draws the method's noise from the participant's key, then runs the
    phase's stages in order; each differentiates its loss w.r.t. its network
    only, adds that network's L2 gradient (and the SCAFFOLD correction) and
    updates that network with its own optimiser state. The reported loss is
    the sum of the stage losses plus the regularisers' value.
    """
    method = as_method(method)
    tx = local_optimizer(opts)
    stages = tuple(method.stages(phase))
    if not stages:
        raise ValueError(f"method {method.name!r} has no stages in phase {phase!r}")
    networks = method.networks
    for st in stages:
        if (st.network is None) != (networks is None) or (networks is not None and st.network not in networks):
            raise ValueError(f"method {method.name!r}: stage network {st.network!r} is not one of {networks}")
    proximal = opts.aggregator == "fedprox" and opts.mu > 0
    grad_fns = [jax.value_and_grad(st.loss) for st in stages]
    full_grad_fns = [jax.value_and_grad(functools.partial(local_loss, st.loss)) for st in stages]

    def opt_init(params):
        if networks is None:
            return tx.init(params)
        return {name: tx.init(params[name]) for name in networks}

    def init(params: Params, rng: jax.Array) -> ClientState:
        # A round starts at its anchor (the start parameters), so the proximal term is 0.
        return ClientState(params, opt_init(params), rng, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32),
                           penalty(params, params, opts))

    def step(state: ClientState, ctx: ClientContext, batch: Batch) -> ClientState:
        rng, key = jax.random.split(state.rng)
        # Noise (dropout masks) is drawn outside the differentiated functions (integer work).
        noise = method.noise(key, batch)
        params, opt_state, loss = state.params, state.opt_state, None
        for st, grad_fn, full_grad_fn in zip(stages, grad_fns, full_grad_fns):
            sub = network_of(params, st.network)
            if proximal:
                # FedProx differentiates the whole objective: at some shapes XLA rounds the explicit
                # proximal gradient differently, and earlier FedProx results must reproduce bit for bit.
                value, grads = full_grad_fn(sub, params, network_of(ctx.anchor, st.network), batch, ctx.labels,
                                            noise, opts)
            else:
                value, grads = grad_fn(sub, params, batch, ctx.labels, noise)
                grads = l2_grads(sub, grads, opts)
            if opts.aggregator == "scaffold":
                grads = jax.tree.map(jnp.add, grads, network_of(ctx.correction, st.network))
            updates, sub_state = tx.update(grads, network_of(opt_state, st.network), sub)
            params = with_network(params, st.network, optax.apply_updates(sub, updates))
            opt_state = with_network(opt_state, st.network, sub_state)
            loss = value if loss is None else loss + value
        if not proximal:
            loss = loss + state.penalty
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
