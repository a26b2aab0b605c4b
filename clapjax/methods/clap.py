"""CLAP (Al-lahham et al., CVPR 2024) as a method of the federated engine.

Pseudo-labelling (host, before training): per-participant video statistics
``[σ, H]`` → GMM video pseudo-labels → null Gaussians → server mixture →
window segment labels (:func:`clapjax.pipeline.pseudo_label`, SPEC §2 steps
1-4). Training: the segment scorer (:mod:`clapjax.model`) on shuffled
batches of segments with masked BCE (SPEC §2 step 5). Refinement between
rounds: PLR (Alg. 2 Update, :func:`clapjax.spl.refine_labels`) from
``TrainOptions.plr_start_round`` on.

Every option is one of :class:`clapjax.model.ModelOptions`,
:class:`clapjax.options.PseudoLabelOptions` and
:class:`clapjax.engine.TrainOptions` (SPEC §3), with ``paper`` and
``reference`` presets; CLAP has no options of its own.

Through this interface CLAP computes bit for bit what the engine computed
before methods were pluggable (``tests/test_methods_clap.py`` against golden
values of that engine).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from clapjax import model as model_lib
from clapjax.engine.method import Method, Stage
from clapjax.model import ModelOptions

NAME = "clap"

#: The training budget of CLAP's run command, per variant, on top of the
#: engine's preset (``experiments.run``; the library's ``TrainOptions``
#: defaults are unchanged). Chosen by rule and measured with
#: ``experiments.budget`` on the main job (UCF event 13, default synthetic
#: preset, seed 0); README "Training budget" lists every run:
#:
#: * ``lr``: the 1-2-5 grid value whose collaborative round (E = 1 local
#:   epoch, FedAvg) moves the global model closest to one centralized epoch at
#:   the released code's 0.01 (FedAvg of K models that each saw 1/K of the
#:   data moves about 1/K as far at equal learning rates): paper 0.2
#:   (movement ratio 1.07; 0.1: 0.87), reference 0.1 (1.25; 0.05: 0.77). The
#:   variants differ in segment weighting and batch order.
#: * ``lr_milestones=(7,)``, ``lr_decay=0.1``: from the eighth round on a
#:   tenth of the learning rate, so the model settles. At a constant rate the
#:   curve kept moving: paper at 0.2 by up to 0.6 points a round over 10
#:   rounds; reference at 0.2 peaked at round 4 and drifted down 13 points
#:   over the next 12.
#: * ``rounds``: the smallest count >= 10 (the paper's and the released launch
#:   config's) whose last 3 rounds lie within 0.5 AUC points, on a 12-round run
#:   with the decay: paper 11 (rounds 9-11: 0.9186, 0.9161, 0.9190; with 10
#:   rounds the spread was 0.55), reference 10 (rounds 8-10: 0.7658, 0.7642,
#:   0.7678). The reference curve still rises slowly afterwards (0.7741,
#:   0.7775 at rounds 11-12): flat by the rule at 10, not at a fixed point.
#: * E = 1 local epoch and λ = 1 (``server_lr``) stay the released code's: the
#:   learning rate alone sets how far a round moves (E and λ were not varied).
#: * PLR starts at the fixed round 1 (0-based; the second round). The
#:   agreement start (``--train.plr-start agreement``) opened for 11 of 13
#:   participants at that round, 12 at the next and all 13 from the fourth;
#:   its AUC curve stayed within 0.6 points of the fixed start's (11 rounds:
#:   0.9152 against 0.9190). At this learning rate the model is mature when
#:   PLR starts, so the simpler fixed start of the paper is the default.
BUDGET = {
    "paper": {"lr": 0.2, "lr_milestones": (7,), "lr_decay": 0.1, "rounds": 11},
    "reference": {"lr": 0.1, "lr_milestones": (7,), "lr_decay": 0.1, "rounds": 10},
}


def train_overrides(variant: str = "paper") -> dict:
    """``TrainOptions`` fields CLAP's run command sets on the engine's ``variant``
    preset: the training budget :data:`BUDGET` (measurements in its comment)."""
    if variant not in BUDGET:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(BUDGET)}")
    return dict(BUDGET[variant])


@dataclasses.dataclass(frozen=True)
class BoundRefine:
    """``fn(scores, labels, layout, video_labels, options)`` with its options
    bound; hashable by value, so equal refinements share compiled code."""

    fn: Callable[..., jax.Array]
    options: Any

    def __call__(self, scores, labels, layout, video_labels):
        return self.fn(scores, labels, layout, video_labels, self.options)


class _ByIdentity:
    """Unhashable refinement options, hashed by identity."""

    def __init__(self, value):
        self.value = value


def _spl_refine(scores, labels, layout, video_labels, opts):
    from clapjax.spl import refine_labels  # lazy: imported only when PLR runs

    if isinstance(opts, _ByIdentity):
        opts = opts.value
    return refine_labels(scores, labels, layout, video_labels, opts)


@dataclasses.dataclass(frozen=True)
class Clap(Method):
    """CLAP's segment scorer trained with masked BCE on pseudo-labels.

    Attributes:
      model: the scorer (:class:`clapjax.model.ModelOptions`).
      pseudo_labels: options of the PLR refinement (usually
        :class:`clapjax.options.PseudoLabelOptions`); None with no
        ``refine_fn``: no refinement.
      refine_fn: ``(scores, labels, layout, video_labels, pseudo_labels) ->
        labels`` replacing :func:`clapjax.spl.refine_labels` (tests, ablations).
    """

    model: ModelOptions = ModelOptions()
    pseudo_labels: Any = None
    refine_fn: Callable[..., jax.Array] | None = None
    name: str = dataclasses.field(default=NAME, init=False)

    def init_params(self, feature_dim: int, crops: int, key: jax.Array):
        return model_lib.init_params(self.model, feature_dim, key, crops)

    def _bce(self, net_params, params, batch, labels, noise) -> jax.Array:
        """Masked mean BCE of the batch against its rows' labels (SPEC §2 step 5)."""
        y = jnp.take(labels, batch.positions, axis=0, mode="clip")
        return model_lib.bce_loss(net_params, batch.x, y, batch.mask, self.model, masks=noise)

    def stages(self, phase) -> tuple[Stage, ...]:
        return (Stage(None, self._bce),)

    def noise(self, key: jax.Array, batch):
        """Dropout keep-masks of the batch (None without dropout)."""
        if self.model.dropout_rate > 0:
            return model_lib.dropout_masks(key, batch.x.shape[:-1], self.model)
        return None

    def score(self, params, x: jax.Array) -> jax.Array:
        return model_lib.score(params, x, self.model)

    def refinement(self):
        if self.pseudo_labels is None and self.refine_fn is None:
            return None
        opts = self.pseudo_labels
        try:
            hash(opts)
        except TypeError:
            opts = _ByIdentity(opts)
        if self.refine_fn is None:
            return BoundRefine(_spl_refine, opts)
        fn = self.refine_fn
        if isinstance(opts, _ByIdentity):
            return BoundRefine(lambda s, y, lay, v, o: fn(s, y, lay, v, o.value), opts)
        return BoundRefine(fn, opts)

    def compile_key(self) -> "Clap":
        return Clap(model=self.model)

    def __hash__(self):
        try:
            return hash((self.model, self.pseudo_labels, self.refine_fn))
        except TypeError:
            return hash((self.model, id(self.pseudo_labels), self.refine_fn))
