"""Null model of normal segment magnitudes (SPEC §2.3, paper Eq. 5-7).

Participant side: :func:`participant_null` fits a 1-D Gaussian to ``z`` over
the segments of its normal-labelled videos and returns only the summary
``NullGaussian(mean Γ_k, var Θ_k, count M0_k)``.

Server side: :func:`server_mixture` takes summaries only (its signature has no
feature or segment argument) and returns the mixture ``G`` with weights
``M0_k / Σ M0``.

Segment scores under ``G`` (:func:`segment_scores_under_null`) are closed form
and pure jnp: upper-tail p-value ``Σ_k w_k P(Z_k >= z)`` (paper default),
two-sided ``Σ_k w_k 2 P(Z_k >= |z - μ_k| + μ_k)``, or the mixture density
``Σ_k w_k N(z; μ_k, Θ_k)`` (released code). In float32 these underflow to 0
beyond ~13σ (p-values) or ~14σ (density), so the window rules use
:func:`segment_log_scores_under_null` (``log_ndtr`` and the log-density,
combined with ``logsumexp``), finite far into the tail.

Documented rules for degenerate participants:
  * ``M0 = 0`` (no normal-labelled segment): ``NullGaussian(0, 0, 0)``; its
    mixture weight is 0, so it changes nothing.
  * ``M0 = 1``: the ddof-1 variance is undefined → ``var = 0``.
  * zero (or tiny) variance: the server floors each component's variance at
    ``var_floor · max(1, mean²)`` (``opts.var_floor``, default 1e-12), which
    makes it a near point mass with finite density and p-values.
  * every participant with ``M0 = 0``: :func:`server_mixture` raises
    ``ValueError`` when the counts are concrete; under ``jit`` it falls back
    to uniform weights over the (all-zero) components.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from clapjax import packed
from clapjax.options import PseudoLabelOptions
from clapjax.packed import Layout


class NullGaussian(NamedTuple):
    """What a participant sends to the server (never features).

    Attributes:
      mean: ``[] float32`` Γ_k, mean of normal-segment magnitudes.
      var: ``[] float32`` Θ_k, their ddof-1 variance.
      count: ``[] int32`` M0_k, number of normal-labelled segments.
    """

    mean: jax.Array
    var: jax.Array
    count: jax.Array


class Mixture(NamedTuple):
    """Server null mixture ``G`` over ``K`` participants.

    Attributes:
      weights: ``[K] float32`` ``M0_k / Σ M0``.
      means: ``[K] float32``.
      variances: ``[K] float32`` (floored, see module docstring).
    """

    weights: jax.Array
    means: jax.Array
    variances: jax.Array


def participant_null(z: ArrayLike, layout: Layout, video_labels: ArrayLike) -> NullGaussian:
    """Gaussian of ``z`` over the segments of normal-labelled videos (Eq. 5-6).

    Args:
      z: ``[S]`` segment magnitudes.
      layout: packed layout with ``N`` videos.
      video_labels: ``[N] bool`` video pseudo-labels (True = anomalous).

    Returns:
      :class:`NullGaussian` with scalar fields (vmap for several participants).
    """
    z = jnp.asarray(z, jnp.float32)
    labels = jnp.asarray(video_labels, bool)
    normal_row = layout.segment_mask & ~packed.per_segment(labels, layout, fill=True)
    count = normal_row.sum(dtype=jnp.int32)
    denom = jnp.maximum(count, 1).astype(jnp.float32)
    mean = jnp.sum(jnp.where(normal_row, z, 0.0)) / denom
    dev = jnp.where(normal_row, z - mean, 0.0)
    var = jnp.sum(dev * dev) / jnp.maximum(count - 1, 1).astype(jnp.float32)
    var = jnp.where(count >= 2, var, 0.0)
    mean = jnp.where(count >= 1, mean, 0.0)
    return NullGaussian(mean=mean, var=var, count=count)


def server_mixture(
    nulls: Sequence[NullGaussian] | NullGaussian,
    opts: PseudoLabelOptions = PseudoLabelOptions(),
) -> Mixture:
    """Builds ``G`` from participant summaries only.

    Args:
      nulls: a sequence of scalar :class:`NullGaussian`, or one
        :class:`NullGaussian` with ``[K]`` fields (e.g. from ``jax.vmap``).
      opts: uses ``opts.var_floor``.

    Returns:
      :class:`Mixture` with ``[K]`` fields.
    """
    if isinstance(nulls, NullGaussian):
        stacked = nulls
    else:
        nulls = list(nulls)
        if not nulls:
            raise ValueError("server_mixture needs at least one participant summary")
        for k, item in enumerate(nulls):
            if not isinstance(item, NullGaussian):
                raise TypeError(
                    f"participant {k}: expected a NullGaussian summary, got {type(item).__name__}"
                )
        stacked = NullGaussian(*(jnp.stack([jnp.asarray(getattr(g, f)) for g in nulls]) for f in NullGaussian._fields))
    means = jnp.atleast_1d(jnp.asarray(stacked.mean, jnp.float32))
    var = jnp.atleast_1d(jnp.asarray(stacked.var, jnp.float32))
    counts = jnp.atleast_1d(jnp.asarray(stacked.count)).astype(jnp.float32)
    if not isinstance(counts, jax.core.Tracer):
        host_counts = np.asarray(counts)
        if (host_counts < 0).any():
            raise ValueError(f"participant {int(np.argmin(host_counts))}: negative segment count")
        if host_counts.sum() <= 0:
            raise ValueError(
                "no participant has normal-labelled segments (all M0 = 0): cannot build the null mixture"
            )
        for name, arr in (("mean", means), ("var", var)):
            values = np.asarray(arr)
            if not np.isfinite(values).all():
                k = int(np.flatnonzero(~np.isfinite(values))[0])
                raise ValueError(f"participant {k}: non-finite null {name} {values[k]}")
    total = counts.sum()
    weights = jnp.where(total > 0, counts / jnp.where(total > 0, total, 1.0), 1.0 / counts.shape[0])
    floor = jnp.float32(opts.var_floor) * jnp.maximum(1.0, means * means)
    variances = jnp.maximum(var, floor)
    # A zero floor with zero variance would divide by zero: keep the tiniest normal.
    variances = jnp.maximum(variances, jnp.finfo(jnp.float32).tiny)
    return Mixture(weights=weights, means=means, variances=variances)


def segment_scores_under_null(
    z: ArrayLike, mixture: Mixture, opts: PseudoLabelOptions = PseudoLabelOptions()
) -> jax.Array:
    """Scores of segment magnitudes under ``G`` (Eq. 7), closed form.

    Args:
      z: ``[S]`` magnitudes.
      mixture: the server :class:`Mixture`.
      opts: ``opts.null_score``: ``"pvalue_upper"`` → ``Σ w_k (1 - Φ(t_k))``,
        ``"pvalue_two_sided"`` → ``Σ w_k 2(1 - Φ(|t_k|))``, ``"density"`` →
        ``Σ w_k φ(t_k)/σ_k`` with ``t_k = (z - μ_k)/σ_k``.

    Returns:
      ``[S] float32``.
    """
    z = jnp.asarray(z, jnp.float32)[..., None]
    std = jnp.sqrt(mixture.variances)
    t = (z - mixture.means) / std
    if opts.null_score == "pvalue_upper":
        per = jax.scipy.special.ndtr(-t)
    elif opts.null_score == "pvalue_two_sided":
        per = 2.0 * jax.scipy.special.ndtr(-jnp.abs(t))
    else:
        per = jax.scipy.stats.norm.pdf(t) / std
    return jnp.sum(mixture.weights * per, axis=-1)


def segment_log_scores_under_null(
    z: ArrayLike, mixture: Mixture, opts: PseudoLabelOptions = PseudoLabelOptions()
) -> jax.Array:
    """Natural log of :func:`segment_scores_under_null`, without underflow.

    Same formulas (paper Eq. 7 p-values; the released code's mixture density),
    evaluated in log space: ``log Σ_k w_k s_k = logsumexp_k(log w_k + log s_k)``
    with ``log s_k = log_ndtr(-t_k)`` (upper tail), ``log 2 + log_ndtr(-|t_k|)``
    (two-sided) or ``-t_k²/2 - log σ_k - log(2π)/2`` (density). Components
    with weight 0 contribute nothing. Float32 log-scores stay finite (and
    accurate to ~``eps · |log s|``) up to ``|t| ~ 1e19``, where a float32
    p-value is already 0 at ``t ≈ 13``.

    Args:
      z: ``[S]`` magnitudes.
      mixture: the server :class:`Mixture`.
      opts: ``opts.null_score`` as in :func:`segment_scores_under_null`.

    Returns:
      ``[S] float32`` log-scores (``-inf`` only where every weight is 0).
    """
    z = jnp.asarray(z, jnp.float32)[..., None]
    std = jnp.sqrt(mixture.variances)
    t = (z - mixture.means) / std
    if opts.null_score == "pvalue_upper":
        per = jax.scipy.special.log_ndtr(-t)
    elif opts.null_score == "pvalue_two_sided":
        per = jnp.log(2.0) + jax.scipy.special.log_ndtr(-jnp.abs(t))
    else:
        per = -0.5 * t * t - jnp.log(std) - 0.5 * jnp.log(2.0 * jnp.pi)
    weights = jnp.asarray(mixture.weights, jnp.float32)
    log_w = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)
    return jax.nn.logsumexp(log_w + per, axis=-1)
