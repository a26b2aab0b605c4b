"""CLAWS (Zaheer et al., ECCV 2020): weakly supervised, normalcy suppression, clustering loss.

"CLAWS: Clustering Assisted Weakly Supervised Learning with Normalcy
Suppression for Anomalous Event Detection" (arXiv 2011.12077). No code was
released by the authors. Sources of this implementation: the paper's abstract
and method outline (random batches of consecutive segments, two normalcy
suppression modules, regression loss with temporal-smoothness and sparsity
terms, a clustering-distance loss), and, for the details the paper's text
(not readable here) fixes, a public third-party re-implementation
(``Umair0343/UCF_Anomaly_detection``: ``models/bbn.py``, ``models/clustering.py``,
``utils/loss.py``, ``config.py``; not the authors' code). Every such value is
an option of :class:`CLAWSOptions` and is listed below as a choice.

Training data (weak supervision): every training video's true label is given
to all its segments (:func:`clapjax.methods.compression.weak_labels`); videos
are compressed to 32 segments (:mod:`clapjax.methods.compression`), as the
issue that asked for CLAWS here specifies for both weakly supervised methods.
A step is a batch of ``batch_segments`` consecutive segments
(:class:`clapjax.engine.ConsecutiveSampler`); batches are visited in a random
order every epoch (the paper's random batch selection).

Backbone (:class:`CLAWSNet`): FC1 → ReLU → dropout → FC2 → ReLU → dropout →
FC3 → sigmoid, each of FC1 and FC2 multiplied elementwise by a normalcy
suppression module (NSM): an FC layer of the same width on the block's input
whose outputs are soft-maxed over the batch (temporal) axis, so that within a
batch the features of most segments are suppressed.

Loss of a batch (``y_j`` the row's video label, ``s_j`` its score):

    L = mean_j (s_j − y_j)²                                  (regression)
        + λ1 Σ_j (s_j − s_{j+1})² + λ2 Σ_j s_j                (smoothness, sparsity)
        + λc L_c                                              (clustering distance)

``L_c`` (:func:`clustering_loss`): the batch's FC1 features are split into
two clusters by k-means; for a normal batch (``max_j y_j = 0``) every feature
is pulled to the mean of the two centres (``1 − cos``); for an anomalous batch
the features near their own centre (``1 − cos(f, c_own) < β (1 − cos(c_1, c_2))``)
are pulled to it (``1 − cos``, weight α) and pushed from the other
(``1 + cos``, weight 1 − α), so that anomalous batches form two distinct
clusters and normal batches one.

Choices (options of :class:`CLAWSOptions` or :func:`train_overrides`):

* widths FC1 512, FC2 32 (as Sultani's; third-party ``config.py``), dropout
  0.6 (third-party), xavier-uniform weights, zero biases;
* NSM: softmax over the batch's real rows, per crop and unit (third-party
  ``bbn.py``); at test, where the engine scores rows without their batch,
  each gate is its batch-uniform value ``1 / batch_segments``
  (``test_gate="uniform"``; ``"none"`` drops the gate);
* clustering: k-means with 2 clusters on the crop-mean FC1 outputs (before
  the gate; third-party), Euclidean assignment, deterministic start (the
  batch's first real row and the real row farthest from it), 10 Lloyd
  iterations; centres and assignments carry no gradient (the third-party
  code's loss carries none at all: it clusters detached numpy copies, so its
  ``L_c`` is a constant); no feature standardisation (the third-party code
  standardises); α = 0.7, β = 0.25 (third-party); a cluster with no feature
  near its centre uses all its features (the third-party code its first);
  a batch is anomalous when any of its rows has label 1;
* weights λ1 = λ2 = λc = 8e-5 (Sultani's λ, used by the third-party code for
  all three), smoothness and sparsity as sums over the batch (Sultani's form),
  pairs across a video boundary included when a batch crosses one;
* batches: ``batch_segments = 32`` consecutive segments inside one video
  (``batch_within_videos``): with the 32-segment compression one batch is
  one whole video, as in the third-party code;
* optimiser: RMSprop, lr 1e-3 (third-party ``train.py`` / ``config.py``; torch
  defaults: decay 0.99, eps 1e-8), no L2, 10 rounds of 1 local epoch;
* federated (no federated CLAWS existed): every participant batches its own
  videos; FedAvg etc. average the whole network.
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
from clapjax.methods.compression import SEGMENTS, l2_normalize
from clapjax.model import ModelOptions

NAME = "claws"

_CHOICES = {"test_gate": ("uniform", "none")}


@dataclasses.dataclass(frozen=True)
class CLAWSOptions:
    """CLAWS's network, losses and batches (module docstring).

    Attributes:
      segments: ``M`` of the compression.
      compress: compress every training video to ``M`` segments.
      normalize: L2-normalise compressed training rows and test rows.
      hidden: FC1 and FC2 widths.
      dropout: dropout rate after each hidden layer.
      nsm: use the two normalcy suppression modules.
      test_gate: NSM gates at test: ``"uniform"`` (1 / batch_segments) or
        ``"none"`` (gate removed).
      lambda_smooth, lambda_sparse, lambda_cluster: λ1, λ2, λc.
      cluster_alpha: α, weight of the pull to the own centre (anomalous batches).
      cluster_beta: β, nearness of the features used (anomalous batches).
      kmeans_iters: Lloyd iterations of the 2-means.
      batch_segments: consecutive segments per step.
      batch_within_videos: batches never cross a video boundary.
    """

    segments: int = SEGMENTS
    compress: bool = True
    normalize: bool = True
    hidden: tuple[int, int] = (512, 32)
    dropout: float = 0.6
    nsm: bool = True
    test_gate: Literal["uniform", "none"] = "uniform"
    lambda_smooth: float = 8e-5
    lambda_sparse: float = 8e-5
    lambda_cluster: float = 8e-5
    cluster_alpha: float = 0.7
    cluster_beta: float = 0.25
    kmeans_iters: int = 10
    batch_segments: int = 32
    batch_within_videos: bool = True

    def __post_init__(self):
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"CLAWSOptions.{name}={getattr(self, name)!r}; valid: {', '.join(allowed)}")
        for name in ("segments", "kmeans_iters", "batch_segments"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"CLAWSOptions.{name} must be >= 1, got {getattr(self, name)}")
        if len(self.hidden) != 2 or min(self.hidden) < 1:
            raise ValueError(f"CLAWSOptions.hidden must be two positive widths, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CLAWSOptions.dropout must be in [0, 1), got {self.dropout}")
        for name in ("lambda_smooth", "lambda_sparse", "lambda_cluster", "cluster_beta"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"CLAWSOptions.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.cluster_alpha <= 1.0:
            raise ValueError(f"CLAWSOptions.cluster_alpha must be in [0, 1], got {self.cluster_alpha}")

    @classmethod
    def preset(cls, variant: str = "paper", **overrides) -> "CLAWSOptions":
        """``"paper"`` (no code was released, so ``"reference"`` is the same)."""
        if variant not in ("paper", "reference"):
            raise ValueError(f"unknown variant {variant!r}; valid: paper, reference")
        return dataclasses.replace(cls(), **overrides)

    def replace(self, **changes) -> "CLAWSOptions":
        return dataclasses.replace(self, **changes)

    @property
    def dropout_options(self) -> ModelOptions:
        return ModelOptions(attention=False, hidden=tuple(self.hidden), dropout_rate=self.dropout)


def train_overrides(variant: str = "paper") -> dict:
    """``TrainOptions`` fields CLAWS sets on top of the engine's ``variant`` preset."""
    if variant not in ("paper", "reference"):
        raise ValueError(f"unknown variant {variant!r}; valid: paper, reference")
    return {"plr_start_round": None, "optimizer": "rmsprop", "lr": 1e-3, "momentum": 0.0, "l2": 0.0,
            "shuffle": True}


def _masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over axis 0 (the batch) of ``logits [B, ...]`` among rows with ``mask [B]``."""
    m = mask.reshape(mask.shape + (1,) * (logits.ndim - 1))
    z = jnp.where(m, logits, -jnp.inf)
    z = z - jax.lax.stop_gradient(jnp.max(jnp.where(m, z, jnp.finfo(logits.dtype).min), axis=0, keepdims=True))
    e = jnp.where(m, jnp.exp(z), 0.0)
    return e / jnp.maximum(jnp.sum(e, axis=0, keepdims=True), jnp.finfo(logits.dtype).tiny)


class CLAWSNet(nn.Module):
    """CLAWS's backbone: ``(logits [B, C], fc1 [B, C, H1])`` of ``x [B, C, D]``.

    ``mask [B]`` (training) soft-maxes the NSM gates over the batch's real
    rows; ``mask=None`` (test) uses the constant ``gate`` instead (None: no gate).
    """

    hidden: tuple[int, int]
    dropout: float
    nsm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask=None, masks=None, gate: float | None = None):
        dense = lambda n, name: nn.Dense(  # noqa: E731
            n, kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.zeros, name=name)
        m1, m2 = masks if masks is not None else (None, None)

        def suppress(h, inp, name):
            if not self.nsm:
                return h
            a = dense(h.shape[-1], name)(inp)
            if mask is not None:
                return h * _masked_softmax(a, mask)
            return h if gate is None else h * gate

        f1 = dense(self.hidden[0], "fc1")(x)
        h = nn.relu(suppress(f1, x, "nsm1"))
        if m1 is not None:
            h = jnp.where(m1, h / (1.0 - self.dropout), 0.0)
        g = nn.relu(suppress(dense(self.hidden[1], "fc2")(h), h, "nsm2"))
        if m2 is not None:
            g = jnp.where(m2, g / (1.0 - self.dropout), 0.0)
        return dense(1, "fc3")(g)[..., 0], f1


def two_means(f: jax.Array, mask: jax.Array, iters: int) -> tuple[jax.Array, jax.Array]:
    """2-means of the rows ``f [B, H]`` with ``mask``: ``(centres [2, H], assignment [B] int32)``.

    Start: the first real row, and the real row farthest from it; then
    ``iters`` Lloyd iterations (Euclidean; an empty cluster keeps its centre).
    Ties go to cluster 0. Masked rows are assigned but never move a centre.
    """
    w = mask.astype(f.dtype)
    first = jnp.argmax(mask)
    c0 = f[first]
    d0 = jnp.where(mask, jnp.sum(jnp.square(f - c0), axis=-1), -1.0)
    centres = jnp.stack([c0, f[jnp.argmax(d0)]])

    def assign(c):
        d = jnp.sum(jnp.square(f[:, None, :] - c[None]), axis=-1)  # [B, 2]
        return (d[:, 1] < d[:, 0]).astype(jnp.int32)

    def body(_, c):
        a = assign(c)
        one_hot = jax.nn.one_hot(a, 2, dtype=f.dtype) * w[:, None]  # [B, 2]
        n = jnp.sum(one_hot, axis=0)
        new = (one_hot.T @ f) / jnp.maximum(n, 1.0)[:, None]
        return jnp.where((n > 0)[:, None], new, c)

    centres = jax.lax.fori_loop(0, iters, body, centres)
    return centres, assign(centres)


def _cos(a: jax.Array, b: jax.Array) -> jax.Array:
    eps = 1e-8
    return jnp.sum(a * b, -1) / (jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
                                 * jnp.maximum(jnp.linalg.norm(b, axis=-1), eps))


def clustering_loss(f: jax.Array, mask: jax.Array, anomalous: jax.Array, opts: CLAWSOptions) -> jax.Array:
    """CLAWS's clustering-distance loss of one batch (module docstring).

    Args:
      f: ``[B, H]`` features (crop-mean FC1 outputs); gradients flow through
        them, not through the centres or assignments.
      mask: ``[B] bool`` real rows.
      anomalous: ``[] bool`` the batch's label.
      opts: ``cluster_alpha``, ``cluster_beta``, ``kmeans_iters``.
    Returns:
      ``[] float32``; 0 without a real row.
    """
    centres, a = jax.lax.stop_gradient(two_means(jax.lax.stop_gradient(f), mask, opts.kmeans_iters))
    w = mask.astype(f.dtype)
    n = jnp.maximum(jnp.sum(w), 1.0)
    normal = jnp.sum(w * (1.0 - _cos(f, jnp.mean(centres, axis=0)[None]))) / n
    own, other = centres[a], centres[1 - a]
    d_own = 1.0 - _cos(f, own)
    near = mask & (jax.lax.stop_gradient(d_own) < opts.cluster_beta * (1.0 - _cos(centres[0], centres[1])))
    # A cluster without a near feature uses all of its features.
    has_near = jnp.stack([jnp.any(near & (a == k)) for k in (0, 1)])
    sel = jnp.where(has_near[a], near, mask).astype(f.dtype)
    n_sel = jnp.maximum(jnp.sum(sel), 1.0)
    pull = jnp.sum(sel * d_own) / n_sel
    push = jnp.sum(sel * (1.0 + _cos(f, other))) / n_sel
    abnormal = opts.cluster_alpha * pull + (1.0 - opts.cluster_alpha) * push
    return jnp.where(anomalous, abnormal, normal)


def batch_loss(s: jax.Array, f: jax.Array, y: jax.Array, mask: jax.Array, opts: CLAWSOptions) -> jax.Array:
    """CLAWS's objective of one batch from its scores ``s [B]``, FC1 features
    ``f [B, H]``, row labels ``y [B]`` and ``mask [B]`` (module docstring)."""
    w = mask.astype(s.dtype)
    reg = jnp.sum(w * jnp.square(s - y)) / jnp.maximum(jnp.sum(w), 1.0)
    both = w[:-1] * w[1:]
    smooth = jnp.sum(both * jnp.square(s[:-1] - s[1:]))
    sparse = jnp.sum(w * s)
    anomalous = jnp.max(jnp.where(mask, y, 0.0)) > 0.5
    out = reg + opts.lambda_smooth * smooth + opts.lambda_sparse * sparse
    if opts.lambda_cluster > 0:
        out = out + opts.lambda_cluster * clustering_loss(f, mask, anomalous, opts)
    return out


@dataclasses.dataclass(frozen=True)
class CLAWS(Method):
    """CLAWS on the federated engine.

    Attributes:
      options: :class:`CLAWSOptions`.
    """

    options: CLAWSOptions = CLAWSOptions()
    name: str = dataclasses.field(default=NAME, init=False)

    def _net(self) -> CLAWSNet:
        return CLAWSNet(tuple(self.options.hidden), self.options.dropout, self.options.nsm)

    def init_params(self, feature_dim: int, crops: int, key: jax.Array):
        x = jnp.zeros((1, crops, feature_dim), jnp.float32)
        return self._net().init({"params": key}, x, jnp.ones((1,), bool))["params"]

    def noise(self, key: jax.Array, batch):
        if self.options.dropout > 0:
            return model_lib.dropout_masks(key, batch.x.shape[:-1], self.options.dropout_options)
        return None

    def forward(self, params, x: jax.Array, mask: jax.Array, masks=None) -> tuple[jax.Array, jax.Array]:
        """Training-mode ``(scores [B], crop-mean FC1 features [B, H1])`` of a batch ``x [B, C, D]``."""
        logits, f1 = self._net().apply({"params": params}, x, mask, masks)
        return jnp.mean(jax.nn.sigmoid(logits), axis=-1), jnp.mean(f1, axis=-2)

    def _loss(self, net_params, params, batch, labels, noise) -> jax.Array:
        s, f = self.forward(net_params, batch.x, batch.mask, noise)
        y = jnp.take(labels, batch.positions, axis=0, mode="clip")
        return batch_loss(s, f, y, batch.mask, self.options)

    def stages(self, phase) -> tuple[Stage, ...]:
        return (Stage(None, self._loss),)

    def score(self, params, x: jax.Array) -> jax.Array:
        o = self.options
        x = l2_normalize(jnp.asarray(x, jnp.float32)) if o.normalize else x
        gate = 1.0 / o.batch_segments if o.test_gate == "uniform" else None
        logits, _ = self._net().apply({"params": params}, x, None, None, gate)
        return jnp.mean(jax.nn.sigmoid(logits), axis=-1)

    def sampler(self, opts):
        return ConsecutiveSampler(self.options.batch_segments, within_videos=self.options.batch_within_videos)
