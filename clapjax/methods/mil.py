"""Sultani et al. (CVPR 2018): MIL ranking on 32-segment bags, weakly supervised.

"Real-world Anomaly Detection in Surveillance Videos"; released code
``WaqasSultani/AnomalyDetectionCVPR2018`` (``TrainingAnomalyDetector_public.py``:
network, loss ``custom_objective``, optimiser, batches; ``Save_C3DFeatures_32Segments.m``:
the compression).

Every training video (label known: weak supervision) is a bag of ``M = 32``
segments (:mod:`clapjax.methods.compression`: means of consecutive clip
features over 32 ranges, L2-normalised). A step holds ``pairs`` (normal,
anomalous) bag pairs (:class:`clapjax.engine.BagSampler`); the 3-layer MLP
``f`` scores every segment and the MIL ranking loss (§3.2, Eq. 6-7) asks the
highest-scored segment of the anomalous bag to beat that of the normal bag by
a margin, with temporal smoothness and sparsity of the anomalous bag's scores:

    l(B_a, B_n) = max(0, 1 − max_i f(V_a^i) + max_i f(V_n^i))
                  + λ1 Σ_{i<M} (f(V_a^i) − f(V_a^{i+1}))² + λ2 Σ_i f(V_a^i)

Federated (no federated MIL existed; this implementation's): every participant
pairs its own normal and anomalous videos; the engine averages the MLP.

Paper vs released code (``paper`` / ``reference`` presets of
:class:`MILOptions` and :func:`train_overrides`):

=====================  ==================================  ==========================================
item                   paper                               released code
=====================  ==================================  ==========================================
ranking term           one hinge per (anomalous, normal)   every normal bag of the step against every
                       pair, mean over the step's pairs    anomalous one: hinges summed over the
                       (``ranking="pairs"``)               anomalous bags, mean over the normal bags
                                                           (``"all_pairs"``, ``custom_objective``)
smoothness, sparsity   per pair, in the pair's loss        summed over the step's anomalous bags,
                       (mean over pairs)                   added once (``custom_objective``)
optimiser              Adagrad, lr 0.001 (§4.1)            ``Adagrad(lr=0.01, epsilon=1e-08)``
=====================  ==================================  ==========================================

Common to both (values from the paper §3.3/§4.1 and the code, which agree):
FC 4096→512 (ReLU) → 32 (no activation: the code's second ``Dense`` has
none; the paper names ReLU and sigmoid for the first and last layers only)
→ 1 (sigmoid), 60 % dropout after the first and second layers, λ1 = λ2 =
8e-5, margin 1, 30 normal + 30 anomalous videos per step, Glorot-normal
weights (Keras 1's: normal, not truncated), zero biases. Choices:

* L2: the code's ``W_regularizer=l2(0.001)`` on every kernel (``0.001·Σw²``)
  is the engine's ``l2 = 0.002`` (``l2/2·‖θ‖²``), which also covers biases;
  the paper's Eq. 7 ``‖W‖_F`` gives no weight.
* Schedule: the code trains 20,000 steps of randomly drawn videos; here an
  epoch pairs every video of the larger class once (the smaller class
  cycled), ``local_epochs = 10`` per round (10 rounds: 100 epochs), both
  presets shuffled (the code draws at random).
* crops: every crop is scored, a segment's score is the crop mean of the
  probabilities (Sultani's C3D has one crop).
* test: every test row is scored as given (clip features, or Sultani's 32
  released segments), L2-normalised when ``normalize``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from clapjax import model as model_lib
from clapjax.engine.data import BagSampler
from clapjax.engine.method import Method, Stage
from clapjax.methods.compression import SEGMENTS, l2_normalize
from clapjax.model import ModelOptions

NAME = "mil"

_CHOICES = {"ranking": ("pairs", "all_pairs"), "fc2_activation": ("none", "relu")}


@dataclasses.dataclass(frozen=True)
class MILOptions:
    """Sultani et al.'s MIL ranking (module docstring).

    Attributes:
      segments: ``M``, segments per bag (video).
      compress: compress every training video to ``M`` segments (else each
        must already have ``M``, e.g. Sultani's released features).
      normalize: L2-normalise compressed training rows and test rows.
      hidden: the two hidden widths (512, 32).
      dropout: dropout rate after each hidden layer.
      fc2_activation: ``"none"`` (released code) or ``"relu"``.
      ranking: ``"pairs"`` (paper) or ``"all_pairs"`` (released code).
      margin: the hinge's margin (1).
      lambda_smooth: λ1 of the temporal smoothness term.
      lambda_sparse: λ2 of the sparsity term.
      pairs_per_step: (normal, anomalous) bag pairs per step (30: 60 videos).
    """

    segments: int = SEGMENTS
    compress: bool = True
    normalize: bool = True
    hidden: tuple[int, int] = (512, 32)
    dropout: float = 0.6
    fc2_activation: Literal["none", "relu"] = "none"
    ranking: Literal["pairs", "all_pairs"] = "pairs"
    margin: float = 1.0
    lambda_smooth: float = 8e-5
    lambda_sparse: float = 8e-5
    pairs_per_step: int = 30

    def __post_init__(self):
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"MILOptions.{name}={getattr(self, name)!r}; valid: {', '.join(allowed)}")
        if int(self.segments) < 1 or int(self.pairs_per_step) < 1:
            raise ValueError(f"MILOptions.segments and pairs_per_step must be >= 1, got {self.segments}, "
                             f"{self.pairs_per_step}")
        if len(self.hidden) != 2 or min(self.hidden) < 1:
            raise ValueError(f"MILOptions.hidden must be two positive widths, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MILOptions.dropout must be in [0, 1), got {self.dropout}")
        for name in ("margin", "lambda_smooth", "lambda_sparse"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"MILOptions.{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def preset(cls, variant: str = "paper", **overrides) -> "MILOptions":
        """``"paper"`` or ``"reference"`` (released code; module docstring table)."""
        if variant == "paper":
            base = cls()
        elif variant == "reference":
            base = cls(ranking="all_pairs")
        else:
            raise ValueError(f"unknown variant {variant!r}; valid: paper, reference")
        return dataclasses.replace(base, **overrides)

    def replace(self, **changes) -> "MILOptions":
        return dataclasses.replace(self, **changes)

    @property
    def dropout_options(self) -> ModelOptions:
        """Widths and rate in the form :func:`clapjax.model.dropout_masks` reads."""
        return ModelOptions(attention=False, hidden=tuple(self.hidden), dropout_rate=self.dropout)


def train_overrides(variant: str = "paper") -> dict:
    """``TrainOptions`` fields MIL sets on top of the engine's ``variant`` preset."""
    if variant == "paper":
        lr = 1e-3
    elif variant == "reference":
        lr = 1e-2
    else:
        raise ValueError(f"unknown variant {variant!r}; valid: paper, reference")
    return {"plr_start_round": None, "optimizer": "adagrad", "lr": lr, "momentum": 0.0, "l2": 0.002,
            "local_epochs": 10, "shuffle": True}


class MILNet(nn.Module):
    """Sultani's MLP: per-crop logits ``[..., C]`` of ``x [..., C, D]``."""

    hidden: tuple[int, int]
    dropout: float
    fc2_activation: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, masks=None) -> jax.Array:
        init = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")  # Keras 1 glorot_normal
        dense = lambda n, name: nn.Dense(n, kernel_init=init, bias_init=nn.initializers.zeros, name=name)  # noqa: E731
        m1, m2 = masks if masks is not None else (None, None)
        h = nn.relu(dense(self.hidden[0], "fc1")(x))
        if m1 is not None:
            h = jnp.where(m1, h / (1.0 - self.dropout), 0.0)
        g = dense(self.hidden[1], "fc2")(h)
        if self.fc2_activation == "relu":
            g = nn.relu(g)
        if m2 is not None:
            g = jnp.where(m2, g / (1.0 - self.dropout), 0.0)
        return dense(1, "fc3")(g)[..., 0]


def ranking_loss(normal: jax.Array, anomalous: jax.Array, pair_mask: jax.Array, opts: MILOptions) -> jax.Array:
    """The MIL ranking objective of one step (module docstring; Sultani Eq. 6-7).

    Args:
      normal: ``[P, M]`` segment scores of the normal bag of each pair.
      anomalous: ``[P, M]`` segment scores of the anomalous bag of each pair.
      pair_mask: ``[P] bool`` real pairs (padding pairs contribute nothing).
      opts: ``ranking`` ("pairs": mean over real pairs of hinge + λ1·smooth +
        λ2·sparse; "all_pairs": mean over real normal bags of the hinges
        summed over real anomalous bags, + λ1·Σ smooth + λ2·Σ sparse over the
        real anomalous bags), ``margin``, ``lambda_smooth``, ``lambda_sparse``.
    Returns:
      ``[] float32``; 0 without a real pair.
    """
    w = pair_mask.astype(jnp.float32)
    n_real = jnp.maximum(jnp.sum(w), 1.0)
    max_n = jnp.max(normal, axis=-1)
    max_a = jnp.max(anomalous, axis=-1)
    smooth = jnp.sum(jnp.square(anomalous[:, :-1] - anomalous[:, 1:]), axis=-1)
    sparse = jnp.sum(anomalous, axis=-1)
    if opts.ranking == "pairs":
        hinge = jnp.maximum(0.0, opts.margin - max_a + max_n)
        per_pair = hinge + opts.lambda_smooth * smooth + opts.lambda_sparse * sparse
        return jnp.sum(w * per_pair) / n_real
    hinges = jnp.maximum(0.0, opts.margin - max_a[None, :] + max_n[:, None])  # [normal i, anomalous j]
    per_normal = jnp.sum(hinges * w[None, :], axis=1)
    return (jnp.sum(w * per_normal) / n_real + opts.lambda_smooth * jnp.sum(w * smooth)
            + opts.lambda_sparse * jnp.sum(w * sparse))


@dataclasses.dataclass(frozen=True)
class MIL(Method):
    """Sultani et al.'s MIL ranking on the federated engine.

    Attributes:
      options: :class:`MILOptions`.
    """

    options: MILOptions = MILOptions()
    name: str = dataclasses.field(default=NAME, init=False)

    def _net(self) -> MILNet:
        return MILNet(tuple(self.options.hidden), self.options.dropout, self.options.fc2_activation)

    def init_params(self, feature_dim: int, crops: int, key: jax.Array):
        return self._net().init({"params": key}, jnp.zeros((1, crops, feature_dim), jnp.float32))["params"]

    def noise(self, key: jax.Array, batch):
        """Dropout keep-masks of the batch (None without dropout)."""
        if self.options.dropout > 0:
            return model_lib.dropout_masks(key, batch.x.shape[:-1], self.options.dropout_options)
        return None

    def probabilities(self, params, x: jax.Array, masks=None) -> jax.Array:
        """``[...]`` segment probabilities (crop mean of sigmoids) of ``x [..., C, D]``."""
        return jnp.mean(jax.nn.sigmoid(self._net().apply({"params": params}, x, masks)), axis=-1)

    def _loss(self, net_params, params, batch, labels, noise) -> jax.Array:
        o = self.options
        s = self.probabilities(net_params, batch.x, noise).reshape(o.pairs_per_step, 2, o.segments)
        pair_mask = batch.mask.reshape(o.pairs_per_step, 2, o.segments)[:, 0, 0]
        return ranking_loss(s[:, 0], s[:, 1], pair_mask, o)

    def stages(self, phase) -> tuple[Stage, ...]:
        return (Stage(None, self._loss),)

    def score(self, params, x: jax.Array) -> jax.Array:
        x = l2_normalize(jnp.asarray(x, jnp.float32)) if self.options.normalize else x
        return self.probabilities(params, x)

    def sampler(self, opts):
        return BagSampler(self.options.pairs_per_step, self.options.segments)
