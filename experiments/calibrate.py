"""Statistics of real I3D / C3D features beside the synthetic generator's, as a table.

    python -m experiments.calibrate --cctv features/cctv --cctv-crops10 features/cctv10 \\
        --ped2 features/ped2 --ped2-crops10 features/ped2_10 \\
        [--out calibration.json --markdown calibration.md]

The real I3D feature folders are this project's extractor output for the
shared real videos (``../shared/real``, see its README); make them once
(2,453 clip-crops in all: about 17 CPU-minutes at the extractor's 2.4
clip-crops per CPU-second measured in the README; re-running skips finished
videos)::

    python -m pip install -e ".[video]"
    python -m experiments.extract ../shared/real/ucf_crime/videos --out features/cctv
    python -m experiments.extract ../shared/real/ucf_crime/videos --out features/cctv10 --crops 10
    python -m experiments.extract ../shared/real/ucsd_ped2/frames --out features/ped2
    python -m experiments.extract ../shared/real/ucsd_ped2/frames --out features/ped2_10 --crops 10

The command measures, on every feature set given, the statistics the generator of
:mod:`clapjax.data.synthetic` is fitted to, and prints a markdown table
(one column per set) and writes it with a JSON of every number:

* **Non-positive values**: fraction of feature values ``<= 0`` (post-ReLU
  I3D features are non-negative; their zeros are exact).
* **Segment norms** ``z_j = ‖f_j‖₂`` of the crop-mean feature (CLAP's
  magnitude): the pooled mean (depends on ``D``), the coefficient of variation
  (std / mean) inside windows of ``W`` segments (median over videos of the
  median over a video's windows), and across videos (std / mean of the
  per-video mean norms).
* **σ relative to the mean norm**: CLAP's ``σ_i`` (std, ddof 1, of
  consecutive norm differences; paper Eq. 1-2) over the whole video divided
  by the video's mean norm (median and interquartile range over videos).
* **Lag-1 temporal autocorrelation** of the features,
  ``Σ_t ⟨x_t, x_{t+1}⟩ / Σ_t ⟨x_t, x_t⟩`` with ``x`` centred per window (all
  dimensions pooled: a variance-weighted mean over dimensions), and of the
  norms (the same on ``z``), inside non-overlapping windows of ``W``
  segments: the estimator's bias depends on the window length, so every set
  is measured on the same ``W``.
* **Eigen-spectrum**: the trace-normalised eigenvalues ``p_k`` of the
  covariance of ``W`` consecutive segments (top-1 share ``p_1``) and their
  entropy ``H = -Σ p ln p`` (CLAP's ``H``, paper Eq. 3-4, trace-normalised)
  of the first ``L`` segments of every video with at least ``L`` segments,
  for ``L`` = 8, 16, 24, 32, 64, 128, 256 (median over videos): how ``H``
  grows with video length. Real videos here are 9-29 segments long, so only
  ``L <= 24`` is measured on real data.
* **The rise of the norm inside annotated anomalies**: per anomalous video
  with normal and anomalous frames, the frame ROC-AUC of ``z`` (segment norm
  repeated over its 16 frames) against the frame ground truth (min, median,
  max), and the median of ``mean z`` over anomalous segments / ``mean z``
  over normal segments of the same video, minus 1. Also the pooled frame AUC
  of ``z`` over every test frame of the set: the feature-norm scorer of
  ``experiments.baseline``.

Sets: ``--cctv``/``--ped2`` are this project's extractor output (``python -m
experiments.extract``) of the shared real videos; the C3D sets are the
shared Sultani-format files (rows L2-normalised, so every norm row is ``1``
and left out); ``synthetic`` is the UCF-Crime test set of
``SyntheticConfig.preset(--synthetic-preset)``. Nothing here trains a model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import tyro

#: Window length (segments) of the windowed time statistics: Ped2's shortest
#: test video has 9 segments, so every real video holds at least one window.
WINDOW = 8
#: Lengths at which ``H`` of a video's first ``L`` segments is measured.
H_LENGTHS = (8, 16, 24, 32, 64, 128, 256)
#: At most this many windows per video (evenly spaced) enter a video's median.
MAX_WINDOWS = 32

REAL = Path("..") / "shared" / "real"
ANNOTATIONS = REAL / "annotations"
CCTV_ANNOTATIONS = (ANNOTATIONS / "ucf_crime_test_annotation_with_frame_counts.txt",
                    ANNOTATIONS / "extended_roadaccidents_temporal_annotation.txt")
PED2_ANNOTATIONS = (REAL / "ucsd_ped2" / "ped2.mat",)


@dataclasses.dataclass
class VideoSet:
    """Features of a set of videos and their frame ground truth.

    Attributes:
      name: column title.
      features: per video ``[m, C, D] float32``.
      names: video names.
      ground_truth: ``[F] uint8`` concatenated frame labels (``F = 16 Σ m``
        unless ``segment_frames``), or None.
      segment_frames: ``[Σ m] int`` frames per segment for compressed
        features, else None.
      unit_norm: rows are L2-normalised (norm statistics are left out).
      note: where the set comes from.
    """

    name: str
    features: list[np.ndarray]
    names: list[str]
    ground_truth: np.ndarray | None
    segment_frames: np.ndarray | None = None
    unit_norm: bool = False
    note: str = ""


# ------------------------------------------------------------------ loading


def real_set(name: str, features_dir: Path, annotations: Sequence[Path], note: str = "",
             unit_norm: bool = False) -> VideoSet:
    """Every annotated video of a features folder (a transductive custom dataset)."""
    from clapjax import data, pipeline

    ds = data.custom_dataset(features_dir, annotations=[str(a) for a in annotations], transductive=True)
    test = pipeline.load_test_set(ds.test)
    feats = np.split(test.features, np.cumsum(test.lengths)[:-1])
    return VideoSet(name, feats, list(test.names), test.ground_truth, test.segment_frames, unit_norm, note)


def synthetic_set(preset: str = "default", dataset: str = "ucf", **overrides) -> VideoSet:
    """The synthetic test set of a preset (real lengths and test intervals)."""
    from clapjax import data, pipeline

    cfg = data.SyntheticConfig.preset(preset, **overrides)
    src = data.open_source(dataset, "test", synthetic=cfg)
    test = pipeline.load_test_set(src)
    feats = np.split(test.features, np.cumsum(test.lengths)[:-1])
    return VideoSet(f"synthetic {preset}", feats, list(test.names), test.ground_truth, None, False,
                    f"{dataset} test set of SyntheticConfig.preset({preset!r}), D={cfg.feature_dim}, "
                    f"{cfg.crops} crop(s)")


# ------------------------------------------------------------------ statistics


def windows(m: int, width: int = WINDOW, limit: int = MAX_WINDOWS) -> list[tuple[int, int]]:
    """Non-overlapping ``[a, b)`` windows of ``width`` segments (at most ``limit``, evenly spaced)."""
    n = m // width
    picks = range(n) if n <= limit else np.unique(np.linspace(0, n - 1, limit).round().astype(int))
    return [(int(i) * width, int(i) * width + width) for i in picks]


def lag1_autocorrelation(x: np.ndarray) -> float:
    """``Σ_t ⟨x_t, x_{t+1}⟩ / Σ_t ⟨x_t, x_t⟩`` of ``x [m, D]`` (or ``[m]``) centred over time."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    x = x - x.mean(axis=0)
    den = float(np.sum(x * x))
    return float(np.sum(x[:-1] * x[1:]) / den) if den > 0 else math.nan


def spectrum(x: np.ndarray) -> np.ndarray:
    """Trace-normalised covariance eigenvalues of ``x [m, D]``, descending (``[min(m, D)]``).

    From the ``m x m`` Gram matrix of the centred rows (SPEC §2: never a
    ``D x D`` eigendecomposition for a short video).
    """
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0)
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    ev = np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None)
    total = ev.sum()
    return ev / total if total > 0 else ev


def entropy(p: np.ndarray) -> float:
    """``-Σ p ln p`` over the positive ``p``."""
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def direction_shift(f: np.ndarray, anomalous: np.ndarray) -> float:
    """How far an anomaly turns the feature, in units of the normal within-video spread.

    With ``P`` the projection removing the direction of the normal segments'
    mean ``m_n`` (what the norm already measures): ``‖P(m_a − m_n)‖`` over
    ``s = sqrt(mean_j ‖P(f_j − m_n)‖²)`` (normal segments, ddof 1), debiased
    for the noise of the two means (``E‖·‖² = ‖d‖² + s² (1/n_a + 1/n_n)``).

    Args:
      f: ``[m, D]`` crop-mean features of one video.
      anomalous: ``[m] bool`` segment labels (at least 2 of each).
    """
    f = np.asarray(f, np.float64)
    normal = f[~anomalous]
    m_n = normal.mean(axis=0)
    u = m_n / np.linalg.norm(m_n)

    def proj(v):
        return v - np.multiply.outer(v @ u, u)

    d = proj(f[anomalous].mean(axis=0) - m_n)
    spread2 = float(np.sum(proj(normal - m_n) ** 2) / (len(normal) - 1))
    ratio2 = float(d @ d) / spread2 - (1.0 / anomalous.sum() + 1.0 / (~anomalous).sum())
    return math.sqrt(max(ratio2, 0.0))


def dimension_mean_shape(means: Sequence[np.ndarray]) -> float:
    """Gamma shape ``mean² / var`` (method of moments) of the per-dimension means.

    Args:
      means: per video ``[m, D]`` crop-mean features; every segment of the set
        enters the per-dimension mean ``μ_d`` (scale-free, so comparable
        across ``D``).
    """
    mu = np.concatenate(means).mean(axis=0)
    return float(mu.mean() ** 2 / mu.var())


def direction_spread(means: Sequence[np.ndarray]) -> float | None:
    """rms over videos of how far a video's mean feature points away from the set's mean.

    Each video mean ``v`` and the set's mean ``g`` are scaled to unit norm;
    the part of ``v̂ − ĝ`` orthogonal to ``ĝ`` (a direction change, not a
    norm change) has norm ``≈`` the relative, ``μ²``-weighted rms deviation
    the generator's ``video_spread`` sets. None with fewer than 2 videos.
    """
    if len(means) < 2:
        return None
    v = np.stack([f.mean(axis=0) for f in means]).astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    g = v.mean(axis=0)
    g /= np.linalg.norm(g)
    d = v - np.outer(v @ g, g)
    return float(np.sqrt(np.mean(np.sum(d * d, axis=1))))


def crop_deviation(features: Sequence[np.ndarray]) -> dict[str, float] | None:
    """How crops of one segment differ (None with 1 crop).

    ``relative_rms``: median over segments of ``‖x_c − x̄‖ / ‖x̄‖`` (rms over
    crops ``c``), the generator's ``crop_variation``; ``norm_cv``: median of
    the std / mean of the crops' norms, its ``CROP_ACTIVITY``.
    """
    if features[0].shape[1] < 2:
        return None
    rel, cv = [], []
    for f in features:
        f = np.asarray(f, np.float64)
        mean = f.mean(axis=1, keepdims=True)
        rel.append(np.sqrt(np.mean(np.sum((f - mean) ** 2, axis=2), axis=1)) / np.linalg.norm(mean[:, 0], axis=1))
        n = np.linalg.norm(f, axis=2)
        cv.append(n.std(axis=1) / n.mean(axis=1))
    return {"relative_rms": float(np.median(np.concatenate(rel))), "norm_cv": float(np.median(np.concatenate(cv)))}


def _median(values) -> float | None:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    return float(np.median(v)) if v.size else None


def _quantiles(values, qs=(25, 50, 75)) -> list[float] | None:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    return [float(q) for q in np.percentile(v, qs)] if v.size else None


def _per_window(x: np.ndarray, fn) -> float | None:
    vals = [fn(x[a:b]) for a, b in windows(len(x))]
    return _median(vals)


def measure(vs: VideoSet) -> dict[str, Any]:
    """Every statistic of the module docstring for one set (JSON-able)."""
    from clapjax.data import segment_labels_from_frames
    from clapjax.evaluation import frame_metrics, roc_auc

    lengths = np.asarray([len(f) for f in vs.features], np.int64)
    raw_nonpos = sum(int(np.count_nonzero(f <= 0)) for f in vs.features)
    raw_total = sum(int(f.size) for f in vs.features)
    means = [np.asarray(f, np.float64).mean(axis=1) for f in vs.features]
    norms = [np.linalg.norm(f, axis=1) for f in means]
    out: dict[str, Any] = {
        "name": vs.name, "note": vs.note,
        "videos": int(lengths.size),
        "feature_dim": int(vs.features[0].shape[-1]), "crops": int(vs.features[0].shape[1]),
        "segments": {"total": int(lengths.sum()), "median": float(np.median(lengths)),
                     "min": int(lengths.min()), "max": int(lengths.max())},
        "nonpositive_fraction": raw_nonpos / raw_total,
        "unit_norm_rows": vs.unit_norm,
        "window": WINDOW,
        "lag1_autocorrelation_features": _median(_per_window(f, lag1_autocorrelation) for f in means),
        "spectrum_top1_share": _median(_per_window(f, lambda w: float(spectrum(w)[0])) for f in means),
        "entropy_by_length": {},
    }
    for L in H_LENGTHS:
        hs = [entropy(spectrum(f[:L])) for f in means if len(f) >= L]
        out["entropy_by_length"][str(L)] = {"median": _median(hs), "videos": len(hs)}
    full_h = np.asarray([entropy(spectrum(f)) for f in means])
    out["entropy_full"] = _quantiles(full_h)
    if lengths.size > 2 and np.ptp(lengths) > 0:
        from scipy.stats import spearmanr

        out["entropy_spearman_log_length"] = float(spearmanr(full_h, np.log(lengths)).statistic)
    else:
        out["entropy_spearman_log_length"] = None

    # Video labels from the ground truth (segment_frames: compressed features).
    anomalous = np.zeros(lengths.size, bool)
    seg_labels: list[np.ndarray | None] = [None] * lengths.size
    if vs.ground_truth is not None:
        counts = (vs.segment_frames if vs.segment_frames is not None
                  else np.full(int(lengths.sum()), 16, np.int64))
        seg_ends = np.cumsum(lengths)
        frame_ends = np.cumsum(counts)
        for i, m in enumerate(lengths):
            s0 = seg_ends[i] - m
            f0 = 0 if s0 == 0 else int(frame_ends[s0 - 1])
            f1 = int(frame_ends[seg_ends[i] - 1])
            g = vs.ground_truth[f0:f1]
            anomalous[i] = bool(g.any())
            if vs.segment_frames is None:
                seg_labels[i] = segment_labels_from_frames(g).astype(bool)
    out["normal_videos"] = int((~anomalous).sum()) if vs.ground_truth is not None else None
    out["anomalous_videos"] = int(anomalous.sum()) if vs.ground_truth is not None else None
    out["dimension_mean_gamma_shape"] = dimension_mean_shape(means)
    out["direction_spread_across_videos"] = direction_spread(means)
    out["crops_stats"] = crop_deviation(vs.features)
    if vs.unit_norm:
        out["norms"] = None
        out["norm_rise"] = None
        return out

    video_mean = np.asarray([z.mean() for z in norms])
    sigma_rel = [float(np.std(np.diff(z), ddof=1) / z.mean()) for z in norms if len(z) > 2]
    out["norms"] = {
        "mean": float(np.concatenate(norms).mean()),
        "within_video_cv": _median(_per_window(z, lambda w: float(w.std() / w.mean())) for z in norms),
        "within_video_cv_full": _median(float(z.std() / z.mean()) for z in norms),
        "across_video_cv": float(video_mean.std() / video_mean.mean()) if lengths.size > 1 else None,
        "sigma_relative": _quantiles(sigma_rel),
        "lag1_autocorrelation": _median(_per_window(z, lag1_autocorrelation) for z in norms),
    }
    rise: dict[str, Any] = {"per_video_auc": {}, "per_video_ratio": {}, "per_video_shift": {}}
    if vs.ground_truth is not None:
        counts = (vs.segment_frames if vs.segment_frames is not None
                  else np.full(int(lengths.sum()), 16, np.int64))
        frame_ends = np.cumsum(counts)
        seg_ends = np.cumsum(lengths)
        for i, z in enumerate(norms):
            s0 = seg_ends[i] - lengths[i]
            f0 = 0 if s0 == 0 else int(frame_ends[s0 - 1])
            f1 = int(frame_ends[seg_ends[i] - 1])
            g = vs.ground_truth[f0:f1]
            if 0 < g.sum() < g.size:
                rise["per_video_auc"][vs.names[i]] = roc_auc(g, np.repeat(z, counts[s0:seg_ends[i]]))
            lab = seg_labels[i]
            if lab is not None and 0 < lab.sum() < lab.size:
                rise["per_video_ratio"][vs.names[i]] = float(z[lab].mean() / z[~lab].mean() - 1.0)
            if lab is not None and lab.sum() >= 2 and (~lab).sum() >= 2:
                rise["per_video_shift"][vs.names[i]] = direction_shift(means[i], lab)
        aucs = list(rise["per_video_auc"].values())
        rise["videos"] = len(aucs)
        rise["auc_min_median_max"] = (None if not aucs else
                                      [float(np.min(aucs)), float(np.median(aucs)), float(np.max(aucs))])
        rise["auc_quartiles"] = _quantiles(aucs)
        rise["ratio_median"] = _median(rise["per_video_ratio"].values())
        rise["shift_median"] = _median(rise["per_video_shift"].values())
        try:
            pooled = frame_metrics(np.concatenate(norms), lengths, vs.ground_truth, vs.names, vs.segment_frames)
            rise["pooled_auc"] = pooled["auc"]
        except ValueError:  # one class only (e.g. every frame anomalous)
            rise["pooled_auc"] = None
    out["norm_rise"] = rise
    return out


# ------------------------------------------------------------------ report


def _f(v, digits=3, pct=False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    return f"{100 * v:.{max(digits - 2, 1)}f} %" if pct else f"{v:.{digits}f}"


def markdown(results: Sequence[dict[str, Any]]) -> str:
    """The calibration table: one column per set, one row per statistic."""
    def row(label, fn):
        return "| " + label + " | " + " | ".join(fn(r) for r in results) + " |"

    def norms(fn):
        return lambda r: "— (unit rows)" if r["norms"] is None else fn(r["norms"])

    def rise(fn):
        return lambda r: "— (unit rows)" if r["norm_rise"] is None else fn(r["norm_rise"])

    def h_at(L):
        def cell(r):
            e = r["entropy_by_length"][str(L)]
            return "—" if not e["videos"] else f"{e['median']:.2f} ({e['videos']})"
        return cell

    def trio(v):
        return "—" if not v else f"{v[0]:.2f} / {v[1]:.2f} / {v[2]:.2f}"

    lines = [
        "| statistic | " + " | ".join(r["name"] for r in results) + " |",
        "|---|" + "---|" * len(results),
        row("videos (normal / anomalous)", lambda r: f"{r['videos']} ({r['normal_videos']} / {r['anomalous_videos']})"),
        row("D × crops", lambda r: f"{r['feature_dim']} × {r['crops']}"),
        row("segments per video: median (min-max)",
            lambda r: f"{r['segments']['median']:.0f} ({r['segments']['min']}-{r['segments']['max']})"),
        row("non-positive values", lambda r: _f(r["nonpositive_fraction"], 4, pct=True)),
        row("segment norm: mean", norms(lambda n: _f(n["mean"], 2))),
        row(f"norm CV within {WINDOW}-segment windows (median)", norms(lambda n: _f(n["within_video_cv"]))),
        row("norm CV within whole videos (median)", norms(lambda n: _f(n["within_video_cv_full"]))),
        row("norm CV across videos (of video means)", norms(lambda n: _f(n["across_video_cv"]))),
        row("σ / mean norm: quartiles", norms(lambda n: trio(n["sigma_relative"]))),
        row("per-dimension means: gamma shape (mean² / var)", lambda r: _f(r["dimension_mean_gamma_shape"], 2)),
        row("direction spread across videos (rms, norm removed)",
            lambda r: _f(r["direction_spread_across_videos"])),
        row("crops: relative rms deviation from the crop mean / norm CV over crops",
            lambda r: "— (1 crop)" if not r["crops_stats"] else
            f"{r['crops_stats']['relative_rms']:.3f} / {r['crops_stats']['norm_cv']:.3f}"),
        row(f"lag-1 autocorrelation of features ({WINDOW}-segment windows)",
            lambda r: _f(r["lag1_autocorrelation_features"])),
        row(f"lag-1 autocorrelation of norms ({WINDOW}-segment windows)", norms(lambda n: _f(n["lag1_autocorrelation"]))),
        row(f"spectrum top-1 share ({WINDOW}-segment windows)", lambda r: _f(r["spectrum_top1_share"])),
    ]
    lines += [row(f"H of the first {L} segments (videos)", h_at(L)) for L in H_LENGTHS]
    lines += [
        row("H of whole videos: quartiles", lambda r: trio(r["entropy_full"])),
        row("Spearman(H, log length), whole videos", lambda r: _f(r["entropy_spearman_log_length"], 2)),
        row("per-video frame AUC of the norm: min / median / max (videos)",
            rise(lambda n: "—" if not n["videos"] else f"{trio(n['auc_min_median_max'])} ({n['videos']})")),
        row("per-video frame AUC of the norm: quartiles", rise(lambda n: trio(n["auc_quartiles"]))),
        row("norm inside / outside anomalies − 1 (median)", rise(lambda n: _f(n["ratio_median"]))),
        row("direction shift of anomalies / within-video spread (median)", rise(lambda n: _f(n["shift_median"], 2))),
        row("pooled frame AUC of the norm (feature-norm scorer)", rise(lambda n: _f(n.get("pooled_auc")))),
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ command


HELP = """Statistics of real I3D/C3D features beside the synthetic generator's (markdown table + JSON).

Make the real I3D folders once from the shared videos (python -m pip install -e ".[video]"):
  python -m experiments.extract ../shared/real/ucf_crime/videos --out features/cctv
  python -m experiments.extract ../shared/real/ucf_crime/videos --out features/cctv10 --crops 10
  python -m experiments.extract ../shared/real/ucsd_ped2/frames --out features/ped2
  python -m experiments.extract ../shared/real/ucsd_ped2/frames --out features/ped2_10 --crops 10

then:
  python -m experiments.calibrate --cctv features/cctv --cctv-crops10 features/cctv10 \\
        --ped2 features/ped2 --ped2-crops10 features/ped2_10
"""


@dataclasses.dataclass(frozen=True)
class CalibrateArgs:
    """Statistics of real I3D/C3D features beside the synthetic generator's (markdown + JSON)."""

    cctv: Optional[Path] = None
    """I3D features (extractor output, centre crop) of the 7 shared CCTV videos."""
    cctv_crops10: Optional[Path] = None
    """The same with 10 crops."""
    ped2: Optional[Path] = None
    """I3D features (centre crop) of UCSD Ped2 test videos 01-06."""
    ped2_crops10: Optional[Path] = None
    """The same with 10 crops."""
    c3d: bool = True
    """Include the shared C3D sets (Sultani's 10 UCF-Crime test videos + the 24 extended-set videos)."""
    real: Path = REAL
    """The shared real-data folder (annotations and C3D features)."""
    synthetic_preset: str = "default"
    """Synthetic preset measured (UCF-Crime test set)."""
    out: Optional[Path] = None
    """JSON output (every number, per-video AUCs included)."""
    markdown: Optional[Path] = None
    """Markdown table output (also printed)."""


def collect(args: CalibrateArgs) -> list[VideoSet]:
    """The sets the arguments name, in table order."""
    ann = args.real / "annotations"
    cctv_ann = (ann / "ucf_crime_test_annotation_with_frame_counts.txt",
                ann / "extended_roadaccidents_temporal_annotation.txt")
    ped2_ann = (args.real / "ucsd_ped2" / "ped2.mat",)
    sets = []
    for path, title, annotations in ((args.cctv, "I3D CCTV, centre crop", cctv_ann),
                                     (args.cctv_crops10, "I3D CCTV, 10 crops", cctv_ann),
                                     (args.ped2, "I3D Ped2, centre crop", ped2_ann),
                                     (args.ped2_crops10, "I3D Ped2, 10 crops", ped2_ann)):
        if path is not None:
            sets.append(real_set(title, path, annotations, note=str(path)))
    if args.c3d:
        c3d = args.real / "ucf_crime"
        sets.append(real_set("C3D Sultani (10 test)", c3d / "c3d_sultani_txt",
                             (ann / "ucf_crime_test_annotation_with_frame_counts.txt",),
                             note="ucf_crime/c3d_sultani_txt", unit_norm=True))
        sets.append(real_set("C3D extended (24)", c3d / "c3d_extended" / "32seg",
                             (ann / "extended_roadaccidents_temporal_annotation.txt",),
                             note="ucf_crime/c3d_extended/32seg", unit_norm=True))
    sets.append(synthetic_set(args.synthetic_preset))
    return sets


def main(argv: Sequence[str] | None = None) -> int:
    from clapjax.data import DataError
    from clapjax.report.rundir import atomic_write

    args = tyro.cli(CalibrateArgs, args=list(sys.argv[1:] if argv is None else argv),
                    prog="python -m experiments.calibrate", description=HELP)
    try:
        sets = collect(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = [measure(vs) for vs in sets]
    table = markdown(results)
    print(table, end="")
    if args.markdown is not None:
        with atomic_write(args.markdown, "w") as fh:
            fh.write(table)
    if args.out is not None:
        with atomic_write(args.out, "w") as fh:
            json.dump({"window": WINDOW, "entropy_lengths": list(H_LENGTHS), "sets": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
