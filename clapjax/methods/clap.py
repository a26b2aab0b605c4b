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
