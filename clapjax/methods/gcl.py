"""GCL (Zaheer et al., CVPR 2022): Generative Cooperative Learning.

"Generative Cooperative Learning for Unsupervised Video Anomaly Detection".
No official code was released; this is implemented from the paper's method
(§3: training data organisation, generator, pseudo-labels from the generator,
discriminator, pseudo-labels from the discriminator, negative learning of the
generator, self-supervised pre-training, anomaly scoring).

Two networks, both federated (FedAvg / FedProx / SCAFFOLD average the whole
parameter dict ``{"generator", "discriminator"}``), each with its own local
optimiser state:

* the **generator** G, an autoencoder of segment features (FC layers
  ``gen_hidden``, ReLU, linear output; :class:`Generator`);
* the **discriminator** D, the segment scorer of :mod:`clapjax.model`
  (FC 512 → 32 → 1, dropout, sigmoid, crop mean of probabilities).

Every local step takes one batch of consecutive segments
(:class:`clapjax.engine.ConsecutiveSampler`) and runs two stages
(cross-supervision):

1. **D stage**: G's reconstruction error of each segment ``e_j`` (mean
   squared error over crops and feature dims) gives pseudo-labels
   ``y_j = [e_j > μ_e + k·σ_e]`` with the batch's mean and standard deviation;
   D takes a BCE step on them.
2. **G stage**: the updated D's eval-mode scores ``s_j`` give pseudo-labels
   ``y_j = [s_j > μ_s + k·σ_s]``; G takes an MSE step reconstructing the
   input of segments with ``y_j = 0`` and a *pseudo target* (negative
   learning: by default all ones) for segments with ``y_j = 1``, so that G
   learns not to reconstruct anomalies.

Before the cooperative phase G is pre-trained as a plain autoencoder on all
segments for ``pretrain_rounds`` rounds (self-supervised pre-training; D is
not trained then). Test segments are scored by D (eval mode; or, for
analysis, by G's reconstruction error: ``score="reconstruction"``).

Choices the paper leaves open (each an option of :class:`GCLOptions` unless
noted; this implementation's reading):

* network widths: G ``D → 1024 → 512 → 1024 → D`` (``gen_hidden``), no
  dropout; D the CLAP/C2FPL scorer ``512 → 32 → 1`` with dropout 0.6 and no
  attention (``disc_hidden``, ``disc_dropout``); xavier-uniform weights, zero
  biases (as :mod:`clapjax.model`);
* crops: G reconstructs every crop's feature, a segment's error is the mean
  over its crops; D scores every crop and averages the crop probabilities;
* thresholds: ``μ + k·σ`` of the batch's (unmasked) values with ``k = 1``
  (``threshold_k``; population standard deviation), or a percentile
  (``threshold="percentile"``);
* negative-learning target: a vector of ones (``negative_target``; also
  ``"zeros"``, ``"noise"`` (standard normal) and ``"permuted"`` (the
  segment's own feature, elements randomly permuted));
* order inside a step: the D stage first, then the G stage on the updated D
  (alternating, as the paper's cooperative loop); pseudo-labels never carry
  gradients;
* batches: runs of ``batch_size`` consecutive segments of a participant's
  videos in split order, runs in random order every epoch
  (``batch_within_videos`` keeps runs inside one video);
* pre-training: ``pretrain_rounds = 1`` federated round of G alone;
* optimiser (``train_overrides``): Adam, lr 1e-4, no L2, batch 128,
  10 rounds of 1 local epoch; the federated settings follow CLAP's paper
  (its re-implementation of GCL is not public).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from clapjax import model as model_lib
from clapjax.engine.data import ConsecutiveSampler
from clapjax.engine.method import Method, Stage
from clapjax.model import ModelOptions

NAME = "gcl"
NETWORKS = ("generator", "discriminator")
PHASES = ("pretrain", "cooperative")

_CHOICES = {
    "threshold": ("mean_std", "percentile"),
    "negative_target": ("ones", "zeros", "noise", "permuted"),
    "score": ("discriminator", "reconstruction"),
}


@dataclasses.dataclass(frozen=True)
class GCLOptions:
    """GCL's networks and cooperative-learning switches (module docstring).

    Attributes:
      gen_hidden: widths of the generator's hidden FC layers (encoder and
        decoder; the output has the feature dimension).
      disc_hidden: the discriminator's two hidden widths.
      disc_dropout: the discriminator's dropout rate.
      threshold: pseudo-labels above ``"mean_std"`` (``μ + k·σ`` of the
        batch) or above a ``"percentile"`` of the batch.
      threshold_k: ``k`` of ``"mean_std"``.
      threshold_percentile: percentile of ``"percentile"``.
      negative_target: reconstruction target of segments pseudo-labelled
        anomalous: ``"ones"``, ``"zeros"``, ``"noise"`` or ``"permuted"``.
      pretrain_rounds: rounds of generator-only autoencoder pre-training.
      batch_within_videos: batches of consecutive segments never cross a video.
      score: test-time anomaly score: ``"discriminator"`` (D's probability,
        GCL §3.4) or ``"reconstruction"`` (G's reconstruction error, an
        unbounded score, for analysis).
    """

    gen_hidden: tuple[int, ...] = (1024, 512, 1024)
    disc_hidden: tuple[int, int] = (512, 32)
    disc_dropout: float = 0.6
    threshold: Literal["mean_std", "percentile"] = "mean_std"
    threshold_k: float = 1.0
    threshold_percentile: float = 90.0
    negative_target: Literal["ones", "zeros", "noise", "permuted"] = "ones"
    pretrain_rounds: int = 1
    batch_within_videos: bool = False
    score: Literal["discriminator", "reconstruction"] = "discriminator"

    def __post_init__(self):
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"GCLOptions.{name}={getattr(self, name)!r}; valid: {', '.join(allowed)}")
        if not self.gen_hidden or min(self.gen_hidden) < 1:
            raise ValueError(f"GCLOptions.gen_hidden must be positive widths, got {self.gen_hidden}")
        if len(self.disc_hidden) != 2 or min(self.disc_hidden) < 1:
            raise ValueError(f"GCLOptions.disc_hidden must be two positive widths, got {self.disc_hidden}")
        if not 0.0 <= self.disc_dropout < 1.0:
            raise ValueError(f"GCLOptions.disc_dropout must be in [0, 1), got {self.disc_dropout}")
        if not 0.0 < self.threshold_percentile < 100.0:
            raise ValueError(f"GCLOptions.threshold_percentile must be in (0, 100), got {self.threshold_percentile}")
        if int(self.pretrain_rounds) < 0:
            raise ValueError(f"GCLOptions.pretrain_rounds must be >= 0, got {self.pretrain_rounds}")

    @classmethod
    def preset(cls, variant: str = "paper", **overrides) -> "GCLOptions":
        """``"paper"`` (no code was released, so ``"reference"`` is the same)."""
        if variant not in ("paper", "reference"):
            raise ValueError(f"unknown variant {variant!r}; valid: paper, reference")
        return dataclasses.replace(cls(), **overrides)

    def replace(self, **changes) -> "GCLOptions":
        return dataclasses.replace(self, **changes)

    @property
    def discriminator(self) -> ModelOptions:
        """The discriminator as a :class:`clapjax.model.ModelOptions` scorer."""
        return ModelOptions(attention=False, hidden=tuple(self.disc_hidden), dropout_rate=self.disc_dropout)


def train_overrides(variant: str = "paper") -> dict:
    """``TrainOptions`` fields GCL sets on top of the engine's ``variant`` preset."""
    if variant not in ("paper", "reference"):
        raise ValueError(f"unknown variant {variant!r}; valid: paper, reference")
    return {"plr_start_round": None, "optimizer": "adam", "lr": 1e-4, "momentum": 0.0, "l2": 0.0}


class Generator(nn.Module):
    """Autoencoder of segment features: ``[..., D] -> [..., D]``."""

    hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = lambda n, name: nn.Dense(  # noqa: E731
            n, kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.zeros, name=name)
        h = x
        for i, width in enumerate(self.hidden):
            h = nn.relu(dense(width, f"fc{i + 1}")(h))
        return dense(x.shape[-1], "out")(h)


def reconstruction_error(gen_params, x: jax.Array, hidden: tuple[int, ...]) -> jax.Array:
    """``[...]`` mean squared reconstruction error of ``x [..., C, D]`` over crops and dims."""
    recon = Generator(tuple(hidden)).apply({"params": gen_params}, x)
    return jnp.mean(jnp.square(recon - x), axis=(-2, -1))


def threshold_labels(values: jax.Array, mask: jax.Array, opts: GCLOptions) -> jax.Array:
    """``[B] float32`` pseudo-labels: 1 where ``values`` exceed the batch threshold.

    ``"mean_std"``: ``μ + k·σ`` (population std) over the rows with ``mask``;
    ``"percentile"``: the ``threshold_percentile``-th percentile of those rows
    (linear interpolation). Masked rows get 0.
    """
    values = jnp.asarray(values, jnp.float32)
    w = mask.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    if opts.threshold == "mean_std":
        mean = jnp.sum(w * values) / n
        std = jnp.sqrt(jnp.sum(w * jnp.square(values - mean)) / n)
        cut = mean + opts.threshold_k * std
    else:
        big = jnp.where(mask, values, jnp.inf)
        ranked = jnp.sort(big)
        pos = (opts.threshold_percentile / 100.0) * (n - 1.0)
        lo = jnp.floor(pos).astype(jnp.int32)
        hi = jnp.minimum(lo + 1, jnp.sum(mask).astype(jnp.int32) - 1)
        frac = pos - lo
        cut = ranked[lo] + frac * (ranked[jnp.maximum(hi, 0)] - ranked[lo])
    return jnp.where(mask & (values > cut), 1.0, 0.0)


def _masked_mean(per_row: jax.Array, mask: jax.Array) -> jax.Array:
    w = mask.astype(per_row.dtype)
    return jnp.sum(w * per_row) / jnp.maximum(jnp.sum(w), 1.0)


@dataclasses.dataclass(frozen=True)
class GCL(Method):
    """Generative Cooperative Learning on the federated engine.

    Attributes:
      options: :class:`GCLOptions`.
    """

    options: GCLOptions = GCLOptions()
    name: str = dataclasses.field(default=NAME, init=False)
    networks: tuple[str, ...] = dataclasses.field(default=NETWORKS, init=False)

    @property
    def discriminator(self) -> ModelOptions:
        return self.options.discriminator

    def init_params(self, feature_dim: int, crops: int, key: jax.Array):
        kg, kd = jax.random.split(key)
        dummy = jnp.zeros((1, crops, feature_dim), jnp.float32)
        gen = Generator(tuple(self.options.gen_hidden)).init({"params": kg}, dummy)["params"]
        disc = model_lib.init_params(self.discriminator, feature_dim, kd, crops)
        return {"generator": gen, "discriminator": disc}

    def phase(self, round_index: int) -> str:
        return "pretrain" if round_index < self.options.pretrain_rounds else "cooperative"

    def noise(self, key: jax.Array, batch):
        """(D's dropout masks or None, a key for the negative-learning target)."""
        km, kt = jax.random.split(key)
        masks = (model_lib.dropout_masks(km, batch.x.shape[:-1], self.discriminator)
                 if self.options.disc_dropout > 0 else None)
        return masks, kt

    def _target(self, x: jax.Array, anomalous: jax.Array, key: jax.Array) -> jax.Array:
        t = self.options.negative_target
        if t == "ones":
            neg = jnp.ones_like(x)
        elif t == "zeros":
            neg = jnp.zeros_like(x)
        elif t == "noise":
            neg = jax.random.normal(key, x.shape, x.dtype)
        else:
            perm = jax.vmap(lambda k: jax.random.permutation(k, x.shape[-1]))(
                jax.random.split(key, x.shape[0]))
            neg = jnp.take_along_axis(x, perm[:, None, :], axis=-1)
        return jnp.where(anomalous[:, None, None] > 0, neg, x)

    def _generator_loss(self, gen_params, x, target, mask) -> jax.Array:
        recon = Generator(tuple(self.options.gen_hidden)).apply({"params": gen_params}, x)
        return _masked_mean(jnp.mean(jnp.square(recon - target), axis=(-2, -1)), mask)

    def _pretrain_loss(self, gen_params, params, batch, labels, noise) -> jax.Array:
        """Autoencoder MSE on every segment (self-supervised pre-training)."""
        return self._generator_loss(gen_params, batch.x, batch.x, batch.mask)

    def _discriminator_loss(self, disc_params, params, batch, labels, noise) -> jax.Array:
        """BCE of D against G's pseudo-labels (reconstruction error above the batch threshold)."""
        err = reconstruction_error(params["generator"], batch.x, self.options.gen_hidden)
        y = jax.lax.stop_gradient(threshold_labels(err, batch.mask, self.options))
        return model_lib.bce_loss(disc_params, batch.x, y, batch.mask, self.discriminator, masks=noise[0])

    def _cooperative_generator_loss(self, gen_params, params, batch, labels, noise) -> jax.Array:
        """MSE of G: reconstruct D's normals, the negative target for D's anomalies."""
        scores = model_lib.score(params["discriminator"], batch.x, self.discriminator)
        y = jax.lax.stop_gradient(threshold_labels(scores, batch.mask, self.options))
        target = jax.lax.stop_gradient(self._target(batch.x, y, noise[1]))
        return self._generator_loss(gen_params, batch.x, target, batch.mask)

    def stages(self, phase) -> tuple[Stage, ...]:
        if phase == "pretrain":
            return (Stage("generator", self._pretrain_loss),)
        if phase == "cooperative":
            return (Stage("discriminator", self._discriminator_loss),
                    Stage("generator", self._cooperative_generator_loss))
        raise ValueError(f"GCL has no phase {phase!r}; phases: {', '.join(PHASES)}")

    def score(self, params, x: jax.Array) -> jax.Array:
        """D's eval-mode segment probabilities (GCL §3.4), or G's
        reconstruction errors (``options.score="reconstruction"``)."""
        if self.options.score == "reconstruction":
            return reconstruction_error(params["generator"], x, self.options.gen_hidden)
        return model_lib.score(params["discriminator"], x, self.discriminator)

    def sampler(self, opts):
        return ConsecutiveSampler(opts.batch_size, within_videos=self.options.batch_within_videos)
