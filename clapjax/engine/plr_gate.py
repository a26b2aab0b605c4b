"""Convergence-based start of pseudo-label refinement (``TrainOptions.plr_start="agreement"``).

The paper starts PLR at a fixed round and leaves which open (SPEC §1, step
6). Refining with a model that ranks its own training segments worse than
the labels it was trained on is harmful: on the old synthetic default PLR
started when the participants' models scored their training segments below
chance and label precision fell every round (issue 16). The agreement rule
lets each participant refine only once its freshly trained local model
*agrees with its current segment labels better than the magnitude ranking
does*: the segment ROC-AUC of the model's scores against the current labels
exceeds that of the feature magnitudes (the ranking the initial labels were
made from) against the same labels. Every quantity is the participant's own,
so the rule shares nothing.

Both sides are measured on the same (current) labels, so the rule is
stateless: a resumed run takes the same decisions, and a participant whose
model falls behind the magnitudes again simply pauses refinement.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["masked_auc", "agreement_gate"]


def masked_auc(scores: jax.Array, positive: jax.Array, mask: jax.Array) -> jax.Array:
    """ROC-AUC (Mann-Whitney, ties counted half) of ``scores`` over the ``mask`` rows.

    Args:
      scores: ``[N] float`` scores.
      positive: ``[N] bool`` labels.
      mask: ``[N] bool`` rows that count (padding excluded).

    Returns:
      ``[] float32``; NaN when the masked rows hold only one class.
    """
    s = jnp.asarray(scores, jnp.float32)
    pos = jnp.asarray(positive, bool) & mask
    neg = ~jnp.asarray(positive, bool) & mask
    # Average ranks among the valid rows: padded rows sort last (+inf) and are not counted.
    key = jnp.where(mask, s, jnp.inf)
    srt = jnp.sort(key)
    lo = jnp.searchsorted(srt, key, side="left")
    hi = jnp.searchsorted(srt, key, side="right")
    rank = (lo + hi + 1).astype(jnp.float32) / 2.0  # 1-based average rank
    n_pos = jnp.sum(pos).astype(jnp.float32)
    n_neg = jnp.sum(neg).astype(jnp.float32)
    u = jnp.sum(jnp.where(pos, rank, 0.0)) - n_pos * (n_pos + 1.0) / 2.0
    return jnp.where((n_pos > 0) & (n_neg > 0), u / jnp.maximum(n_pos * n_neg, 1.0), jnp.nan)


def agreement_gate(scores: jax.Array, labels: jax.Array, magnitudes: jax.Array,
                   mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Whether one participant refines this round (module docstring).

    Args:
      scores: ``[N]`` the participant's freshly trained model's segment scores.
      labels: ``[N] float`` its current segment labels (``>= 0.5`` is anomalous).
      magnitudes: ``[N]`` its segments' feature magnitudes.
      mask: ``[N] bool`` its real rows.

    Returns:
      ``(refine [] bool, model_auc [] float32, magnitude_auc [] float32)``;
      ``refine`` is False when the labels hold one class only.
    """
    positive = labels >= 0.5
    model = masked_auc(scores, positive, mask)
    mag = masked_auc(magnitudes, positive, mask)
    return jnp.nan_to_num(model, nan=-1.0) > jnp.nan_to_num(mag, nan=2.0), model, mag
