"""The CLAP segment scorer as Flax (linen) modules, applied functionally.

Two variants (SPEC §3 "network" row):

* ``paper``: FC 512 -> 32 -> 1 with ReLU + dropout, gated by two attention
  layers (512 and 32 units) whose softmax runs over the **feature** dimension.
  The gating follows the authors' dormant module ("multiplication then
  addition"): ``h = fc(x); h = h * softmax(att(x)) + h``.
* ``reference``: the same FC path without attention (the released code defines
  the attention layers but never calls them), dropout 0.6, xavier-uniform
  weights, zero biases.

Every crop is scored separately; a segment's probability is the mean of its
crop probabilities (or, as an option, the sigmoid of the mean crop logit).

Parameter counts for ``D = 2048``: the FC path has 1,065,537 parameters
(``2048*512+512 + 512*32+32 + 32+1``). The attention layers add
``2048*512+512`` and ``512*32+32`` = 1,065,504, so the network *with* the
attention layers has 2,131,041 parameters: the paper's "2.1 M" counts the
attention layers that the released code defines but does not use.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

Variant = Literal["paper", "reference"]


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Scorer configuration (every SPEC §3 network row is an option).

    Attributes:
      attention: gate the FC outputs with softmax attention layers (paper).
      hidden: widths of the two hidden FC layers.
      dropout_rate: dropout after each hidden layer (the paper gives no value;
        0.6 is the released code's, used for both presets).
      init: weight initialisation; "xavier_uniform" (released code, zero bias)
        or "lecun_normal" (Flax default).
      crop_reduction: "mean_probability" (sigmoid per crop, then mean, as the
        released code) or "mean_logit" (mean crop logit, then sigmoid).
    """

    attention: bool = True
    hidden: tuple[int, int] = (512, 32)
    dropout_rate: float = 0.6
    init: Literal["xavier_uniform", "lecun_normal"] = "xavier_uniform"
    crop_reduction: Literal["mean_probability", "mean_logit"] = "mean_probability"

    def __post_init__(self):
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"ModelOptions.dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if len(self.hidden) != 2 or min(self.hidden) < 1:
            raise ValueError(f"ModelOptions.hidden must be two positive widths, got {self.hidden}")
        if self.init not in ("xavier_uniform", "lecun_normal"):
            raise ValueError(f"ModelOptions.init: unknown {self.init!r}")
        if self.crop_reduction not in ("mean_probability", "mean_logit"):
            raise ValueError(f"ModelOptions.crop_reduction: unknown {self.crop_reduction!r}")

    @classmethod
    def preset(cls, variant: Variant = "paper") -> "ModelOptions":
        """``paper`` (attention) or ``reference`` (released code, no attention)."""
        if variant == "paper":
            return cls(attention=True)
        if variant == "reference":
            return cls(attention=False)
        raise ValueError(f"unknown model variant {variant!r}; expected 'paper' or 'reference'")


def _kernel_init(options: ModelOptions):
    if options.init == "xavier_uniform":
        return nn.initializers.xavier_uniform()
    return nn.initializers.lecun_normal()


@functools.lru_cache(maxsize=None)
def _bits_fn(shape: tuple[int, ...], impl: str):
    """``uint32`` random bits of ``shape`` from raw key data, vmap-consistent.

    ``rbg`` keys draw bits with ``lax.rng_bit_generator``, whose vmap rule
    draws the whole batch from the *first* key, so vmapped participants would
    get different dropout masks than the same participants run one by one.
    This rule maps over the keys instead: every participant gets exactly the
    bits its own key gives unbatched.
    """

    @jax.custom_batching.custom_vmap
    def bits(key_data):
        return jax.random.bits(jax.random.wrap_key_data(key_data, impl=impl), shape, jnp.uint32)

    @bits.def_vmap
    def _rule(axis_size, in_batched, key_data):
        if not in_batched[0]:
            return bits(key_data), False
        return jax.lax.map(bits, key_data), True

    return bits


def dropout_masks(key: jax.Array, leading: tuple[int, ...], options: ModelOptions) -> tuple[jax.Array, jax.Array]:
    """Keep-masks ``([*leading, h1], [*leading, h2]) bool`` for the two dropout layers.

    One ``uint32`` per unit compared with ``keep · 2³²``; independent of
    batching (see :func:`_bits_fn`).
    """
    keep = 1.0 - options.dropout_rate
    threshold = jnp.uint32(min(int(round(keep * 2.0**32)), 2**32 - 1))
    impl = str(jax.random.key_impl(key))
    k1, k2 = jax.random.split(key)
    out = []
    for k, width in ((k1, options.hidden[0]), (k2, options.hidden[1])):
        shape = (*leading, width)
        if "rbg" in impl:
            bits = _bits_fn(shape, impl)(jax.random.key_data(k))
        else:  # threefry's counter-based bits are already vmap-consistent
            bits = jax.random.bits(k, shape, jnp.uint32)
        out.append(bits < threshold)
    return out[0], out[1]


def _dropout(h: jax.Array, mask: jax.Array | None, rate: float) -> jax.Array:
    if mask is None or rate == 0.0:
        return h
    return jnp.where(mask, h / (1.0 - rate), 0.0)


class Scorer(nn.Module):
    """Per-crop anomaly logits.

    ``__call__(x: [..., C, D], dropout_masks=None) -> logits [..., C]``;
    ``dropout_masks`` (from :func:`dropout_masks`) switches on training-mode
    dropout; without them the module is in eval mode.
    """

    options: ModelOptions = ModelOptions()

    @nn.compact
    def __call__(self, x: jax.Array, dropout_masks: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        o = self.options
        dense = lambda n, name: nn.Dense(  # noqa: E731
            n, kernel_init=_kernel_init(o), bias_init=nn.initializers.zeros, name=name
        )
        inputs = x
        h = dense(o.hidden[0], "fc1")(inputs)
        if o.attention:
            # Softmax over the feature axis (not the batch axis, paper supp. §10).
            gate = jax.nn.softmax(dense(o.hidden[0], "attention1")(inputs), axis=-1)
            h = h * gate + h
        m1, m2 = dropout_masks if dropout_masks is not None else (None, None)
        h = _dropout(nn.relu(h), m1, o.dropout_rate)
        g = dense(o.hidden[1], "fc2")(h)
        if o.attention:
            gate = jax.nn.softmax(dense(o.hidden[1], "attention2")(h), axis=-1)
            g = g * gate + g
        g = _dropout(nn.relu(g), m2, o.dropout_rate)
        return dense(1, "fc3")(g)[..., 0]


def init_params(
    options: ModelOptions, input_dim: int, key: jax.Array, crops: int = 1
) -> dict:
    """Initial parameters for features of dimension ``input_dim`` (from the data)."""
    if input_dim < 1:
        raise ValueError(f"input_dim must be positive, got {input_dim}")
    dummy = jnp.zeros((1, crops, input_dim), jnp.float32)
    return Scorer(options).init({"params": key}, dummy)["params"]


def crop_logits(
    params, x: ArrayLike, options: ModelOptions, dropout_key: jax.Array | None = None,
    masks: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Per-crop logits ``[..., C]`` of features ``x: [..., C, D]``.

    Dropout is applied iff ``dropout_key`` (or precomputed ``masks``) is given.
    """
    x = jnp.asarray(x)
    if masks is None and dropout_key is not None and options.dropout_rate > 0:
        masks = dropout_masks(dropout_key, x.shape[:-1], options)
    return Scorer(options).apply({"params": params}, x, masks)


def log_probabilities(logits: jax.Array, options: ModelOptions) -> tuple[jax.Array, jax.Array]:
    """Numerically stable ``(log p, log(1 - p))`` of the segment probability.

    ``logits: [..., C]`` -> two ``[...]`` arrays. For mean-of-probabilities,
    ``log p = logsumexp_c log σ(l_c) - log C`` (exact, no clipping).
    """
    if options.crop_reduction == "mean_logit":
        mean = jnp.mean(logits, axis=-1)
        return jax.nn.log_sigmoid(mean), jax.nn.log_sigmoid(-mean)
    log_c = math.log(logits.shape[-1])
    log_p = jax.nn.logsumexp(jax.nn.log_sigmoid(logits), axis=-1) - log_c
    log_q = jax.nn.logsumexp(jax.nn.log_sigmoid(-logits), axis=-1) - log_c
    return log_p, log_q


def segment_probability(logits: jax.Array, options: ModelOptions) -> jax.Array:
    """Segment anomaly probability ``[...]`` from crop logits ``[..., C]``."""
    if options.crop_reduction == "mean_logit":
        return jax.nn.sigmoid(jnp.mean(logits, axis=-1))
    return jnp.mean(jax.nn.sigmoid(logits), axis=-1)


def score(params, x: ArrayLike, options: ModelOptions) -> jax.Array:
    """Eval-mode (no dropout) segment probabilities ``[...]`` of ``x: [..., C, D]``."""
    return segment_probability(crop_logits(params, x, options), options)


def bce_loss(
    params,
    x: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    options: ModelOptions,
    dropout_key: jax.Array | None = None,
    masks: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Masked mean binary cross-entropy.

    Args:
      x: ``[B, C, D]`` features; labels: ``[B]`` targets in [0, 1] (soft allowed);
      mask: ``[B]`` bool, False rows contribute nothing.
    Returns:
      scalar ``sum(mask * bce) / max(sum(mask), 1)``.
    """
    log_p, log_q = log_probabilities(crop_logits(params, x, options, dropout_key, masks), options)
    per_row = -(labels * log_p + (1.0 - labels) * log_q)
    weights = mask.astype(per_row.dtype)
    return jnp.sum(weights * per_row) / jnp.maximum(jnp.sum(weights), 1.0)


def parameter_count(params) -> int:
    """Number of scalar parameters in a parameter pytree."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def parameter_counts(options: ModelOptions, input_dim: int) -> dict[str, int]:
    """Parameter counts per part, computed from shapes (no allocation).

    Returns ``{"total", "fc", "attention", "with_attention_layers"}``;
    ``with_attention_layers`` is the count the paper quotes (2,131,041 ≈ 2.1 M
    for ``input_dim = 2048``) whether or not ``options.attention`` is set.
    """
    shapes = jax.eval_shape(lambda k: init_params(options, input_dim, k), jax.random.key(0))
    total = parameter_count(shapes)
    attention = sum(parameter_count(v) for k, v in shapes.items() if k.startswith("attention"))
    h1, h2 = options.hidden
    att_layers = input_dim * h1 + h1 + h1 * h2 + h2
    return {
        "total": total,
        "fc": total - attention,
        "attention": attention,
        "with_attention_layers": total - attention + att_layers,
    }


def train_flops_per_row(options: ModelOptions, input_dim: int) -> int:
    """Matmul FLOPs of one training step per segment-crop (forward + backward).

    Counts ``2·in·out`` per dense layer forward, the same for the weight
    gradient, and the same again for the input gradient except at the first
    layers (their input, the features, needs no gradient). Elementwise work
    (activations, softmax, dropout) is not counted.
    """
    h1, h2 = options.hidden
    first = [(input_dim, h1)] + ([(input_dim, h1)] if options.attention else [])
    rest = [(h1, h2)] + ([(h1, h2)] if options.attention else []) + [(h2, 1)]
    return sum(4 * i * o for i, o in first) + sum(6 * i * o for i, o in rest)
