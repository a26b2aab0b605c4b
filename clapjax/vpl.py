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
Non-finite statistics raise ``ValueError`` naming the video.
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


def fit_video_pseudo_labels(stats: ArrayLike, opts: PseudoLabelOptions = PseudoLabelOptions()) -> VPLResult:
    """Clusters ``[σ, H]`` and returns labels plus diagnostics.

    Args:
      stats: ``[N, 2]`` per-video ``[σ_i, H_i]`` of one participant.
      opts: ``gmm_max_iter``, ``gmm_seed``, ``gmm_standardise``,
        ``anomalous_cluster``.
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
    features = x
    if opts.gmm_standardise:
        scale = x.std(axis=0)
        features = (x - x.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    gmm = GaussianMixture(
        n_components=2,
        covariance_type="full",
        max_iter=int(opts.gmm_max_iter),
        random_state=int(opts.gmm_seed),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        components = gmm.fit_predict(features)
    converged = bool(gmm.converged_)
    note = ""
    if not converged:
        note = f"GMM did not converge in {opts.gmm_max_iter} EM iterations; using its last state"
        warnings.warn(note, VPLWarning, stacklevel=2)
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
        note = f"{note}; {extra}" if note else extra
        warnings.warn(extra, VPLWarning, stacklevel=2)
    return VPLResult(labels, components.astype(np.int64), converged, note)


def video_pseudo_labels(stats: ArrayLike, opts: PseudoLabelOptions = PseudoLabelOptions()) -> np.ndarray:
    """``[N] bool`` video pseudo-labels (True = anomalous) from ``[N, 2]`` stats."""
    return fit_video_pseudo_labels(stats, opts).labels
