"""C2FPL (Al-lahham et al., WACV 2024): coarse-to-fine pseudo-labels, then BCE.

"A Coarse-to-Fine Pseudo-Labeling (C2FPL) Framework for Unsupervised Video
Anomaly Detection"; released code ``AnasEmad11/C2FPL`` (its pseudo-labels are
made in ``notebooks/Unsupervised_PL_C2FPL.ipynb``, training in ``mainv2.py`` /
``train.py`` / ``model.py``, launched by ``train.sh``).

Stages (each participant on its own videos; nothing crosses participants
before training, unlike CLAP's server mixture):

1. **Video statistics**: each video ``V_i`` is summarised by
   ``x_i = [μ_i, s_i]``, the mean and spread of its segment magnitudes ``z_ij``
   (:func:`video_statistics`, pure jnp).
2. **Coarse (video) pseudo-labels** by hierarchical divisive clustering
   (:func:`divisive_clustering`, scikit-learn GMMs on the host): a
   2-component GMM splits all videos into a normal and an anomalous set; then,
   while ``|anomalous| / |normal| < η``, the normal set is split again and
   part of it joins the anomalous set.
3. **Fine (segment) pseudo-labels** by hypothesis testing: a Gaussian
   ``N(Γ, Θ)`` (ddof 1) is fitted to ``z`` of the segments of the videos
   called normal; in each video called anomalous the window of
   ``w_i`` segments chosen by the null scores is labelled 1, all else 0
   (:func:`segment_labels`, via :func:`clapjax.spl.generate_labels` with a
   one-component mixture).
4. **Training**: the segment scorer of :mod:`clapjax.model` (FC 512 → 32 → 1)
   with masked BCE on the segment pseudo-labels, through the federated engine
   (:class:`C2FPL`); no refinement between rounds.

Paper vs released code (each row is a field of :class:`C2FPLOptions`,
:class:`clapjax.model.ModelOptions` or :class:`clapjax.engine.TrainOptions`;
``paper`` and ``reference`` presets):

=====================  ===============================  ==============================================
stage                  paper                            reference code (file)
=====================  ===============================  ==============================================
magnitude ``z``        ``‖f̄_ij‖₂`` of the crop-mean     mean over crops of the squared norm
                       feature (``magnitude``)          (notebook ``get_matrix``)
video spread ``s_i``   standard deviation of ``z``      variance (``np.cov`` of ``z``, ddof 1;
                       (``spread="std"``)               notebook ``estimate_gauss``)
GMM covariance         not stated: scikit-learn's       ``covariance_type="spherical"``,
                       default ``"full"``               ``max_iter=150, random_state=0`` (notebook)
first split            the smaller cluster is           the cluster GMM numbers 1 (notebook
                       anomalous (``first_split``)      ``labels == 1``), whatever its size
divisive step          the normal set is split by a     the normal set's videos below the 3rd
                       2-component GMM; its smaller     percentile of its 2-component GMM's
                       cluster joins the anomalous set  log-likelihood join the anomalous set
                       (``split_rule="smaller_cluster"``)  (``"low_likelihood"``, notebook loop)
stop (``eta``)         ``|A| / |N| ≥ η``                ``len(abag) / len(nbag) ≥ nu = 1.0``
null score             p-value, upper tail              Gaussian **density** (notebook
                       (``null_score``)                 ``multivariate_normal.pdf``)
window                 ``⌈β m_i⌉``, lowest mean         ``int(0.2 m_i)``, largest total variation
                       p-value (``window``)             ``Σ|p_{t+1} − p_t|`` inside (notebook)
scorer                 FC 512 → 32 → 1, ReLU, dropout   ``Model_V2`` (``model.py``): the same FC path;
                       (no attention)                   its attention layers are defined, never used;
                                                        dropout 0.6, xavier init, crop mean of sigmoids
optimiser              SGD (values not verified,        SGD lr 0.001, momentum 0.9, Nesterov, weight
                       engine defaults)                 decay 5e-4, batch 128, shuffled (``train.sh``,
                                                        ``mainv2.py``)
schedule               constant                         ``MultiStepLR([15, 25], 0.1)``, 20 epochs
                                                        (``lr_milestones``; one round = one epoch)
refinement             none                             none: ``concatenated_train_feedback``
                                                        collects scores, ``mainv2.py`` never uses them
=====================  ===============================  ==============================================

Sources and choices. The paper's text was not in the material this
implementation could read; its column follows the paper's abstract
(hierarchical divisive clustering of videos, hypothesis testing of segments),
the CLAP paper's description of the same stages (CLAP §3.1 reuses C2FPL's
p-value window: ``⌈β m⌉``, lowest mean p-value, upper tail), and otherwise
this implementation's reading, marked here as choices:

* ``x_i = [mean, std]`` of ``‖f̄_ij‖₂``; videos of one segment get spread 0
  (the notebook's ``np.cov`` would give NaN).
* the paper's divisive step splits with a 2-component GMM and moves the
  smaller cluster; the first split calls the smaller cluster anomalous.
* ``β = 0.2`` in both presets (the notebook's ``length = 0.2``; ``option.py``'s
  ``--windowsize 0.09`` belongs to an older code path, ``utils.py``).
* the paper preset trains with the engine's paper ``TrainOptions`` (the same as
  CLAP's), so that Table 1 compares pseudo-labels, not optimisers.
* federated settings (the CLAP paper's re-implementation, whose code is not
  public): every participant runs stages 1-3 on its own videos; the scorer is
  trained by the engine (FedAvg etc.). Centralized = the original C2FPL.
* a participant with fewer than 2 videos cannot be clustered: its videos are
  all called normal (noted in the pseudo-label report).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from clapjax import null_model, packed, spl, statistics
from clapjax.methods.clap import Clap
from clapjax.model import ModelOptions
from clapjax.options import PseudoLabelOptions
from clapjax.packed import Layout

NAME = "c2fpl"

_CHOICES = {
    "magnitude": ("l2_of_mean", "mean_sq_norm"),
    "spread": ("std", "var"),
    "gmm_covariance": ("full", "spherical", "diag", "tied"),
    "first_split": ("smaller", "component_1"),
    "split_rule": ("smaller_cluster", "low_likelihood"),
    "null_score": ("pvalue_upper", "pvalue_two_sided", "density"),
    "window_rounding": ("ceil", "floor"),
    "window": ("min_mean", "max_total_variation"),
}


@dataclasses.dataclass(frozen=True)
class C2FPLOptions:
    """Every switch of C2FPL's pseudo-labelling (module docstring table).

    Attributes:
      magnitude: segment magnitude ``z``: ``"l2_of_mean"`` (paper) or
        ``"mean_sq_norm"`` (reference), as in :func:`clapjax.statistics.segment_magnitude`.
      spread: second video statistic: ``"std"`` (paper) or ``"var"``
        (reference), ddof 1 of ``z`` over the video's segments.
      gmm_covariance: scikit-learn ``covariance_type`` of every GMM.
      gmm_max_iter: scikit-learn ``max_iter``. gmm_seed: ``random_state``.
      first_split: anomalous cluster of the first split: ``"smaller"``
        (fewer videos; paper) or ``"component_1"`` (reference).
      split_rule: how the normal set gives videos to the anomalous set:
        ``"smaller_cluster"`` (paper) or ``"low_likelihood"`` (reference).
      likelihood_percentile: percentile of ``"low_likelihood"`` (reference 3).
      eta: stop when ``|anomalous| / |normal| >= eta`` (both 1.0).
      max_splits: bound on the divisive steps (a note is recorded when hit).
      null_score: ``"pvalue_upper"`` (paper), ``"pvalue_two_sided"`` or
        ``"density"`` (reference).
      beta: window fraction ``w_i = round(β m_i)``.
      window_rounding: ``"ceil"`` (paper) or ``"floor"`` (reference).
      window: ``"min_mean"`` (paper: lowest mean null score) or
        ``"max_total_variation"`` (reference).
      alpha: if set (p-value scores only), segments of anomalous videos with
        ``p < alpha`` are also labelled 1; None in both presets.
      var_floor: relative variance floor of the null Gaussian
        (:func:`clapjax.null_model.server_mixture`).
    """

    magnitude: Literal["l2_of_mean", "mean_sq_norm"] = "l2_of_mean"
    spread: Literal["std", "var"] = "std"
    gmm_covariance: Literal["full", "spherical", "diag", "tied"] = "full"
    gmm_max_iter: int = 150
    gmm_seed: int = 0
    first_split: Literal["smaller", "component_1"] = "smaller"
    split_rule: Literal["smaller_cluster", "low_likelihood"] = "smaller_cluster"
    likelihood_percentile: float = 3.0
    eta: float = 1.0
    max_splits: int = 1000
    null_score: Literal["pvalue_upper", "pvalue_two_sided", "density"] = "pvalue_upper"
    beta: float = 0.2
    window_rounding: Literal["ceil", "floor"] = "ceil"
    window: Literal["min_mean", "max_total_variation"] = "min_mean"
    alpha: float | None = None
    var_floor: float = 1e-12

    def __post_init__(self):
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"C2FPLOptions.{name}={getattr(self, name)!r}; valid: {', '.join(allowed)}")
        if not 0.0 < float(self.beta) <= 1.0:
            raise ValueError(f"C2FPLOptions.beta={self.beta!r} must be in (0, 1]")
        if not self.eta > 0:
            raise ValueError(f"C2FPLOptions.eta={self.eta!r} must be > 0")
        if not 0.0 < float(self.likelihood_percentile) < 100.0:
            raise ValueError(f"C2FPLOptions.likelihood_percentile={self.likelihood_percentile!r} must be in (0, 100)")
        for name in ("gmm_max_iter", "max_splits"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"C2FPLOptions.{name} must be >= 1, got {getattr(self, name)}")
        if self.alpha is not None and not 0.0 < float(self.alpha) < 1.0:
            raise ValueError(f"C2FPLOptions.alpha={self.alpha!r} must be in (0, 1)")
        if not self.var_floor >= 0:
            raise ValueError("C2FPLOptions.var_floor must be >= 0")

    @classmethod
    def preset(cls, variant: str = "paper", **overrides) -> "C2FPLOptions":
        """``"paper"`` or ``"reference"`` (released code), with overrides."""
        if variant not in PRESETS:
            raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[variant], **overrides)

    def replace(self, **changes) -> "C2FPLOptions":
        return dataclasses.replace(self, **changes)

    def segment_options(self) -> PseudoLabelOptions:
        """The :class:`clapjax.options.PseudoLabelOptions` of the shared
        magnitude / null-score / window functions."""
        return PseudoLabelOptions(
            magnitude=self.magnitude, null_score=self.null_score, beta=self.beta,
            window_rounding=self.window_rounding, generate_window=self.window, alpha=self.alpha,
            var_floor=self.var_floor)


PRESETS: dict[str, C2FPLOptions] = {
    "paper": C2FPLOptions(),
    "reference": C2FPLOptions(
        magnitude="mean_sq_norm", spread="var", gmm_covariance="spherical", first_split="component_1",
        split_rule="low_likelihood", likelihood_percentile=3.0, eta=1.0, null_score="density", beta=0.2,
        window_rounding="floor", window="max_total_variation", alpha=None),
}


def model_options(variant: str = "paper") -> ModelOptions:
    """C2FPL's scorer: the FC path without attention (both presets; ``model.py`` ``Model_V2``)."""
    if variant not in PRESETS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(PRESETS)}")
    return ModelOptions.preset("reference")


def train_overrides(variant: str = "paper") -> dict:
    """``TrainOptions`` fields C2FPL sets on top of the engine's ``variant`` preset."""
    if variant == "paper":
        return {"plr_start_round": None}
    if variant == "reference":
        return {"plr_start_round": None, "lr": 0.001, "momentum": 0.9, "nesterov": True, "l2": 5e-4,
                "shuffle": True, "rounds": 20, "lr_milestones": (15, 25), "lr_decay": 0.1}
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(PRESETS)}")


# ----------------------------------------------------------------------------- stage 1


def video_statistics(z: ArrayLike, layout: Layout, spread: str = "std") -> jax.Array:
    """``[N, 2] float32`` per video ``[mean of z, spread of z]`` (ddof 1).

    Args:
      z: ``[S]`` segment magnitudes (packed). layout: ``N`` videos.
      spread: ``"std"`` or ``"var"``; videos with one segment get 0.
    Returns:
      ``[N, 2]``; zero-length (padding) videos get ``[0, 0]``.
    """
    z = jnp.where(layout.segment_mask, jnp.asarray(z, jnp.float32), 0.0)
    n = layout.lengths.astype(jnp.float32)
    mean = packed.segment_sum(z, layout) / jnp.maximum(n, 1.0)
    dev = jnp.where(layout.segment_mask, z - packed.per_segment(mean, layout), 0.0)
    var = packed.segment_sum(dev * dev, layout) / jnp.maximum(n - 1.0, 1.0)
    var = jnp.where(n >= 2, var, 0.0)
    second = jnp.sqrt(var) if spread == "std" else var
    return jnp.stack([mean, second], axis=-1)


# ----------------------------------------------------------------------------- stage 2


class CoarseLabels(NamedTuple):
    """Result of :func:`divisive_clustering`.

    Attributes:
      labels: ``[n] bool`` True = anomalous.
      splits: divisive steps taken after the first split.
      note: "" or why the clustering stopped early / was skipped.
    """

    labels: np.ndarray
    splits: int
    note: str


def _gmm(x: np.ndarray, opts: C2FPLOptions):
    from sklearn.mixture import GaussianMixture

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: reported through the result instead
        return GaussianMixture(n_components=2, covariance_type=opts.gmm_covariance, max_iter=opts.gmm_max_iter,
                               random_state=opts.gmm_seed).fit(x)


def divisive_clustering(x: ArrayLike, opts: C2FPLOptions = C2FPLOptions()) -> CoarseLabels:
    """Coarse video pseudo-labels by hierarchical divisive clustering.

    First split: a 2-component GMM on all videos; its anomalous cluster per
    ``opts.first_split``. Then, while ``|A| / |N| < η``: the normal set ``N``
    gives videos to ``A`` per ``opts.split_rule`` (``"smaller_cluster"``: the
    smaller cluster of a GMM fitted to ``N``; ``"low_likelihood"``: the videos
    of ``N`` whose log-likelihood under a GMM fitted to ``N`` is below its
    ``likelihood_percentile``-th percentile, as the released notebook).

    Args:
      x: ``[n, 2]`` video statistics (:func:`video_statistics`).
      opts: clustering options.
    Returns:
      :class:`CoarseLabels`.
    Raises:
      ValueError: non-finite statistics (the message names the video index).
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"video statistics must be [n, features], got shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"video {int(np.flatnonzero(bad)[0])}: non-finite statistics {x[bad][0]}")
    n = x.shape[0]
    labels = np.zeros(n, bool)
    if n < 2:
        return CoarseLabels(labels, 0, f"{n} video(s): too few to cluster, all called normal")
    comp = _gmm(x, opts).predict(x)
    sizes = np.bincount(comp, minlength=2)
    if sizes.min() == 0:
        return CoarseLabels(labels, 0, "the first GMM split found one cluster: all videos called normal")
    anomalous_comp = int(np.argmin(sizes)) if opts.first_split == "smaller" else 1
    labels = comp == anomalous_comp
    splits, note = 0, ""
    while labels.sum() / max(int((~labels).sum()), 1) < opts.eta:
        if splits >= opts.max_splits:
            note = f"stopped after max_splits={opts.max_splits} divisive steps before reaching eta"
            break
        normal = np.flatnonzero(~labels)
        if normal.size < 2:
            note = "the normal set has fewer than 2 videos: stopped before reaching eta"
            break
        gmm = _gmm(x[normal], opts)
        if opts.split_rule == "smaller_cluster":
            c = gmm.predict(x[normal])
            sz = np.bincount(c, minlength=2)
            move = c == int(np.argmin(sz)) if sz.min() > 0 else np.zeros(normal.size, bool)
        else:
            score = gmm.score_samples(x[normal])
            move = score < np.percentile(score, opts.likelihood_percentile)
        if not move.any() or move.all():
            note = "a divisive step could not split the normal set: stopped before reaching eta"
            break
        labels[normal[move]] = True
        splits += 1
    return CoarseLabels(labels, splits, note)


# ----------------------------------------------------------------------------- stage 3


def segment_labels(z: ArrayLike, layout: Layout, video_labels: ArrayLike,
                   opts: C2FPLOptions = C2FPLOptions()) -> tuple[jax.Array, null_model.NullGaussian]:
    """Fine segment pseudo-labels of one participant by hypothesis testing.

    The null ``N(Γ, Θ)`` is fitted (ddof 1) to ``z`` over the segments of the
    videos with ``video_labels`` False (:func:`clapjax.null_model.participant_null`);
    each anomalous video gets its window chosen on the null scores
    (:func:`clapjax.spl.generate_labels` with this one Gaussian).

    Returns:
      (``[S] float32`` labels in {0, 1}, the null Gaussian).
    Raises:
      ValueError: no segment of a normal-labelled video (no null to fit).
    """
    g = null_model.participant_null(z, layout, video_labels)
    if int(g.count) == 0:
        raise ValueError("no normal-labelled video: the null Gaussian cannot be fitted")
    seg_opts = opts.segment_options()
    mixture = null_model.server_mixture([g], seg_opts)
    return spl.generate_labels(z, layout, video_labels, mixture, seg_opts), g


# ----------------------------------------------------------------------------- pipeline


def pseudo_label(ts, opts: C2FPLOptions = C2FPLOptions(), *,
                 weak_videos: Sequence[bool] | np.ndarray | None = None, progress=None):
    """Stages 1-3 for every participant of a :class:`clapjax.pipeline.TrainingSet`.

    Args:
      ts: the packed training set.
      opts: C2FPL options.
      weak_videos: optional ``[N] bool``: videos whose true label replaces the
        coarse label (weak supervision).
      progress: optional stage reporter (``clapjax.pipeline.Progress``).
    Returns:
      :class:`clapjax.pipeline.PseudoLabels` (``statistics`` holds
      ``[μ_i, s_i]``; ``vpl`` the coarse labels; ``null_*`` each participant's
      own Gaussian; ``notes`` the clustering notes).
    """
    from clapjax.pipeline import PseudoLabels, SilentProgress, weak_video_flags

    progress = progress or SilentProgress()
    n_videos = ts.layout.num_videos
    weak = weak_video_flags(ts, weak_videos)
    seg_opts = opts.segment_options()
    s = ts.features.shape[0]
    z = np.zeros(s, np.float32)
    stats = np.zeros((n_videos, 2), np.float32)
    coarse = np.zeros(n_videos, bool)
    used = np.zeros(n_videos, bool)
    labels = np.zeros(s, np.float32)
    means, variances, counts, notes = [], [], [], []
    stats_fn = jax.jit(video_statistics, static_argnames="spread")
    with progress.stage("C2FPL pseudo-labels", total=ts.num_participants) as st:
        for k in range(ts.num_participants):
            (va, vb), (ra, rb) = ts.video_ranges[k], ts.row_ranges[k]
            lay = ts.participant_layout(k)
            zk = np.asarray(statistics.segment_magnitude(ts.features[ra:rb], seg_opts))
            z[ra:rb] = zk
            xk = np.asarray(stats_fn(zk, lay, spread=opts.spread))
            stats[va:vb] = xk
            result = divisive_clustering(xk, opts)
            coarse[va:vb] = result.labels
            used[va:vb] = (np.where(weak[va:vb], ts.true_video_labels[va:vb], result.labels)
                           if weak[va:vb].any() else result.labels)
            try:
                seg, g = segment_labels(zk, lay, used[va:vb], opts)
            except ValueError as err:
                raise ValueError(f"participant {ts.participant_names[k]}: {err}") from None
            labels[ra:rb] = np.asarray(seg)
            means.append(float(g.mean))
            variances.append(float(g.var))
            counts.append(int(g.count))
            notes.append(result.note)
            st.update(k + 1)
    return PseudoLabels(magnitude=z, statistics=stats, vpl=coarse, video_labels=used,
                        null_means=np.asarray(means, np.float32), null_vars=np.asarray(variances, np.float32),
                        null_counts=np.asarray(counts, np.int64), segment_labels=labels, notes=tuple(notes))


@dataclasses.dataclass(frozen=True)
class C2FPL(Clap):
    """C2FPL's training: the segment scorer with masked BCE on the
    coarse-to-fine pseudo-labels (the same step as CLAP's), no refinement.

    Attributes:
      model: the scorer (default: without attention, :func:`model_options`).
      options: the pseudo-labelling options (used before training, recorded here).
    """

    model: ModelOptions = ModelOptions.preset("reference")
    options: C2FPLOptions = C2FPLOptions()
    name: str = dataclasses.field(default=NAME, init=False)

    def refinement(self):
        return None

    def __hash__(self):
        return hash((self.model, self.options))
