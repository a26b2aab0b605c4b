"""Options of the CLAP pseudo-labelling stages (SPEC §2 steps 1-4 and 6).

Every row of the SPEC §3 "paper vs released code" table that concerns pseudo-
labelling is one field of :class:`PseudoLabelOptions`. Two presets exist:
``paper`` (the default, ``PseudoLabelOptions()``) and ``reference`` (what the
authors' released code computes). The object is frozen and hashable, so it can
be a static argument of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

Magnitude = Literal["l2_of_mean", "mean_sq_norm"]
Sigma = Literal["std_diff", "max_diff"]
Entropy = Literal["trace_normalised", "eq4_raw", "diag_reference"]
AnomalousCluster = Literal["higher_entropy", "smaller"]
NullScore = Literal["pvalue_upper", "pvalue_two_sided", "density"]
Rounding = Literal["ceil", "floor"]
GenerateWindow = Literal["min_mean", "max_total_variation"]
PLRWindow = Literal["max_mean", "max_total_variation"]
PLRRule = Literal["paper", "reference_iou"]
PLRScope = Literal["anomalous", "all"]

_CHOICES = {
    "magnitude": ("l2_of_mean", "mean_sq_norm"),
    "sigma": ("std_diff", "max_diff"),
    "entropy": ("trace_normalised", "eq4_raw", "diag_reference"),
    "anomalous_cluster": ("higher_entropy", "smaller"),
    "null_score": ("pvalue_upper", "pvalue_two_sided", "density"),
    "window_rounding": ("ceil", "floor"),
    "generate_window": ("min_mean", "max_total_variation"),
    "plr": ("paper", "reference_iou"),
    "plr_window": ("max_mean", "max_total_variation"),
    "plr_scope": ("anomalous", "all"),
}


@dataclasses.dataclass(frozen=True)
class PseudoLabelOptions:
    """All switches of the pseudo-labelling stages.

    Attributes:
      magnitude: segment magnitude ``z``. ``"l2_of_mean"`` (paper): L2 norm of
        the crop-mean feature. ``"mean_sq_norm"`` (reference): mean over crops
        of the squared per-crop L2 norm.
      sigma: ``σ_i``. ``"std_diff"`` (paper Eq. 1-2): std, ddof 1, of the
        consecutive differences of ``z``. ``"max_diff"`` (reference): max
        forward difference ``max_j z_{j+1} - z_j``.
      entropy: ``H_i``. ``"trace_normalised"`` (paper default): von Neumann
        entropy ``-Σ p ln p`` of the covariance spectrum divided by its trace.
        ``"eq4_raw"``: literal Eq. 4, ``-Σ λ ln λ`` on the raw eigenvalues.
        ``"diag_reference"`` (reference): ``-Σ_d C_dd ln C_dd`` over the
        covariance diagonal, zeros replaced by ``diag_zero_value``.
      diag_zero_value: replacement of zero variances in ``diag_reference``.
      gmm_max_iter: scikit-learn ``GaussianMixture.max_iter``.
      gmm_seed: scikit-learn ``GaussianMixture.random_state``.
      gmm_standardise: z-score ``[σ, H]`` before the GMM (neither the paper
        nor the released code does; off in both presets).
      anomalous_cluster: ``"higher_entropy"`` (paper Alg. 1) or ``"smaller"``
        (reference: the cluster with fewer videos).
      null_score: score of a segment under the server mixture ``G``:
        ``"pvalue_upper"`` (paper default, ``P(Z >= z)``),
        ``"pvalue_two_sided"`` or ``"density"`` (reference).
      beta: window fraction of Generate (paper ``w = ⌈β m⌉``; reference 0.2).
      window_rounding: ``"ceil"`` (paper) or ``"floor"`` (reference, Python
        ``int``). Used by Generate and PLR.
      generate_window: ``"min_mean"`` (paper: lowest mean p-value) or
        ``"max_total_variation"`` (reference: largest ``Σ|p_{t+1} - p_t|``).
      alpha: if not None and the score is a p-value, segments of anomalous
        videos with ``p < alpha`` are also labelled 1 (the paper's optional
        direct rule; its final algorithm labels the window only, so both
        presets use None).
      plr: PLR rule. ``"paper"`` (Alg. 2 Update: intersection if the max-score
        window overlaps the current labels, else union) or ``"reference_iou"``
        (the released code's dormant rule: IoU < ``plr_iou_threshold`` →
        union, else soft labels ``(old + new) / 2``).
      plr_window: window choice in PLR, ``"max_mean"`` (paper) or
        ``"max_total_variation"`` (reference).
      plr_scope: videos refined: ``"anomalous"`` (video pseudo-label 1, both
        presets) or ``"all"`` (the literal Alg. 2, which also touches normal
        videos).
      plr_beta: window fraction of PLR (paper β = 0.2 as in Generate;
        reference 0.1).
      plr_iou_threshold: IoU threshold of ``"reference_iou"``.
      var_floor: relative variance floor of the null mixture components:
        ``var_k >= var_floor * max(1, mean_k²)`` (keeps zero-variance
        participants finite; see :mod:`clapjax.null_model`).
    """

    magnitude: Magnitude = "l2_of_mean"
    sigma: Sigma = "std_diff"
    entropy: Entropy = "trace_normalised"
    diag_zero_value: float = 1e-9
    gmm_max_iter: int = 150
    gmm_seed: int = 0
    gmm_standardise: bool = False
    anomalous_cluster: AnomalousCluster = "higher_entropy"
    null_score: NullScore = "pvalue_upper"
    beta: float = 0.2
    window_rounding: Rounding = "ceil"
    generate_window: GenerateWindow = "min_mean"
    alpha: float | None = None
    plr: PLRRule = "paper"
    plr_window: PLRWindow = "max_mean"
    plr_scope: PLRScope = "anomalous"
    plr_beta: float = 0.2
    plr_iou_threshold: float = 0.05
    var_floor: float = 1e-12

    def __post_init__(self):
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(
                    f"PseudoLabelOptions.{name}={value!r}; valid: {', '.join(choices)}"
                )
        for name in ("diag_zero_value", "beta", "plr_beta", "plr_iou_threshold", "var_floor", "alpha"):
            value = getattr(self, name)
            if value is None and name == "alpha":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"PseudoLabelOptions.{name} must be a finite number, got {value!r}")
        for name in ("beta", "plr_beta"):
            # β = 0 makes an empty window: every segment would be labelled normal.
            value = getattr(self, name)
            if not 0.0 < float(value) <= 1.0:
                raise ValueError(f"PseudoLabelOptions.{name}={value!r} must be in (0, 1]")
        if not 0.0 <= self.plr_iou_threshold <= 1.0:
            raise ValueError(f"PseudoLabelOptions.plr_iou_threshold={self.plr_iou_threshold!r} must be in [0, 1]")
        if self.alpha is not None and not 0.0 < float(self.alpha) < 1.0:
            raise ValueError(f"PseudoLabelOptions.alpha={self.alpha!r} must be in (0, 1)")
        if int(self.gmm_max_iter) < 1:
            raise ValueError(f"PseudoLabelOptions.gmm_max_iter={self.gmm_max_iter!r} must be >= 1")
        if not 0 <= int(self.gmm_seed) <= 2**32 - 1:
            raise ValueError(f"PseudoLabelOptions.gmm_seed={self.gmm_seed!r} must be in [0, 2**32 - 1] "
                             "(scikit-learn random_state)")
        if not self.diag_zero_value > 0:
            raise ValueError("PseudoLabelOptions.diag_zero_value must be > 0")
        if not self.var_floor >= 0:
            raise ValueError("PseudoLabelOptions.var_floor must be >= 0")

    @classmethod
    def preset(cls, variant: str = "paper", **overrides) -> "PseudoLabelOptions":
        """Returns the ``"paper"`` or ``"reference"`` preset, with overrides."""
        if variant not in PRESETS:
            raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[variant], **overrides)

    def replace(self, **changes) -> "PseudoLabelOptions":
        """Returns a copy with some fields changed."""
        return dataclasses.replace(self, **changes)


#: The two presets of SPEC §3. The GMM uses ``max_iter=150, random_state=0``
#: in both: the paper fixes a seed without giving values, the code gives them.
PRESETS: dict[str, PseudoLabelOptions] = {
    "paper": PseudoLabelOptions(),
    "reference": PseudoLabelOptions(
        magnitude="mean_sq_norm",
        sigma="max_diff",
        entropy="diag_reference",
        anomalous_cluster="smaller",
        null_score="density",
        beta=0.2,
        window_rounding="floor",
        generate_window="max_total_variation",
        alpha=None,
        plr="reference_iou",
        plr_window="max_total_variation",
        plr_scope="anomalous",
        plr_beta=0.1,
        plr_iou_threshold=0.05,
    ),
}
