"""Video-level pseudo-labels (VPL, paper Algorithm 1; SPEC §2.2).

A 2-component, full-covariance scikit-learn ``GaussianMixture`` clusters the
per-video statistics ``x_i = [σ_i, H_i]`` on the host. This is the only place
scikit-learn is used.

Which cluster is anomalous:
  * ``"higher_entropy"`` (paper Alg. 1 lines 7-11): component 0 is anomalous
    if its mean ``H`` is strictly larger than component 1's, else component 1.
  * ``"smaller"`` (released code): component 1 is anomalous if component 0 has
    strictly more videos, else component 0.

Degenerate inputs never crash; they return a documented result and warn
(:class:`VPLWarning`):
  * fewer than 2 videos, or fewer than 2 distinct rows of ``x``: every video
    is labelled normal (no clustering is possible; the null model then uses
    every segment).
  * all videos in one component: the empty component counts as the other
    cluster ("higher_entropy": the non-empty one is normal; "smaller": the
    empty one is anomalous) → every video normal.
  * EM not converged in ``gmm_max_iter`` iterations: the last EM state is
    used (as scikit-learn does).
  * scikit-learn fails ("ill-defined empirical covariance"): this happens on
    raw statistics of large scale (e.g. σ ~ 1e9), where its absolute
    ``reg_covar = 1e-6`` is below the float64 resolution of a collapsed
    component's covariance. The fit is redone on z-scored statistics (per
    column mean 0, std 1), where ``reg_covar`` is always resolvable and the
    result does not depend on the scale of ``[σ, H]``; the note says so. If
    that fails too, every video is labelled normal.
Every degenerate case is also in :attr:`VPLResult.note` (the pipeline keeps
the notes and the run reports them). Non-finite statistics raise
``ValueError`` naming the video.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from clapjax.options import PseudoLabelOptions


class VPLWarning(UserWarning):
    """A degenerate case of video pseudo-labelling (see module docstring)."""


class VPLResult(NamedTuple):
    """Video pseudo-labels with diagnostics.

    Attributes:
      labels: ``[N] bool`` True = pseudo-anomalous.
      components: ``[N] int`` GMM component of each video (-1 if not clustered).
      converged: EM converged (False when clustering was skipped).
      note: empty, or the reason for a degenerate result.
    """

    labels: np.ndarray
    components: np.ndarray
    converged: bool
    note: str


def _validate(stats: ArrayLike) -> np.ndarray:
    x = np.asarray(stats, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"video statistics must be [N, 2] (σ, H); got shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"video {i}: non-finite statistics {x[i].tolist()}")
    return x


def _standardise(x: np.ndarray) -> np.ndarray:
    """Per-column z-scores (constant columns become 0)."""
    scale = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def _fit_components(features: np.ndarray, opts: PseudoLabelOptions) -> tuple[np.ndarray, bool]:
    """scikit-learn ``GaussianMixture`` (2 full-covariance components) labels."""
    gmm = GaussianMixture(
        n_components=2,
        covariance_type="full",
        max_iter=int(opts.gmm_max_iter),
        random_state=int(opts.gmm_seed),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        components = gmm.fit_predict(features)
    return components, bool(gmm.converged_)


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def fit_video_pseudo_labels(stats: ArrayLike, opts: PseudoLabelOptions = PseudoLabelOptions()) -> VPLResult:
    """Clusters ``[σ, H]`` and returns labels plus diagnostics.

    Never raises on finite statistics of any scale (see the module docstring
    for the fallbacks, each reported in ``note`` and as a
    :class:`VPLWarning`).

    Args:
      stats: ``[N, 2]`` per-video ``[σ_i, H_i]`` of one participant.
      opts: ``gmm_max_iter``, ``gmm_seed``, ``gmm_standardise``,
        ``anomalous_cluster``.

    Raises:
      ValueError: stats not ``[N, 2]`` or not finite (naming the video).
    """
    x = _validate(stats)
    n = x.shape[0]
    normal = np.zeros(n, bool)
    unclustered = np.full(n, -1, np.int64)
    if n < 2:
        note = f"only {n} video(s): cannot cluster; all labelled normal"
        warnings.warn(note, VPLWarning, stacklevel=2)
        return VPLResult(normal, unclustered, False, note)
    if np.unique(x, axis=0).shape[0] < 2:
        note = "all videos have identical statistics: cannot cluster; all labelled normal"
        warnings.warn(note, VPLWarning, stacklevel=2)
        return VPLResult(normal, unclustered, False, note)
    note = ""
    try:
        components, converged = _fit_components(_standardise(x) if opts.gmm_standardise else x, opts)
    except (ValueError, FloatingPointError, np.linalg.LinAlgError) as error:
        if opts.gmm_standardise:
            note = f"GMM failed on standardised statistics ({_reason(error)}): cannot cluster; all labelled normal"
            warnings.warn(note, VPLWarning, stacklevel=2)
            return VPLResult(normal, unclustered, False, note)
        note = (
            f"GMM failed on the raw statistics ({_reason(error)}; largest |σ|, |H| = "
            f"{np.abs(x[:, 0]).max():.3g}, {np.abs(x[:, 1]).max():.3g}); refit on standardised statistics"
        )
        warnings.warn(note, VPLWarning, stacklevel=2)
        try:
            components, converged = _fit_components(_standardise(x), opts)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as again:
            note = _join(note, f"that failed too ({_reason(again)}): cannot cluster; all labelled normal")
            warnings.warn(note, VPLWarning, stacklevel=2)
            return VPLResult(normal, unclustered, False, note)
    if not converged:
        extra = f"GMM did not converge in {opts.gmm_max_iter} EM iterations; using its last state"
        note = _join(note, extra)
        warnings.warn(extra, VPLWarning, stacklevel=2)
    counts = np.bincount(components, minlength=2)
    if opts.anomalous_cluster == "higher_entropy":
        if counts.min() == 0:
            anomalous = int(np.argmin(counts))
        else:
            mean_h = [x[components == c, 1].mean() for c in (0, 1)]
            anomalous = 0 if mean_h[0] > mean_h[1] else 1
    else:
        anomalous = 1 if counts[0] > counts[1] else 0
    labels = components == anomalous
    if counts.min() == 0:
        extra = "GMM put every video in one component; all labelled normal"
        note = _join(note, extra)
        warnings.warn(extra, VPLWarning, stacklevel=2)
    return VPLResult(labels, components.astype(np.int64), converged, note)


def _reason(error: Exception) -> str:
    """First sentence of a scikit-learn/numpy error, for a one-line note."""
    text = str(error).strip()
    if "ill-defined empirical covariance" in text:
        return "ill-defined empirical covariance"
    text = text.split(". ")[0].rstrip(".")
    return text[:120] if text else type(error).__name__


def video_pseudo_labels(stats: ArrayLike, opts: PseudoLabelOptions = PseudoLabelOptions()) -> np.ndarray:
    """``[N] bool`` video pseudo-labels (True = anomalous) from ``[N, 2]`` stats."""
    return fit_video_pseudo_labels(stats, opts).labels
