"""PNG figures (matplotlib, the optional ``plots`` extra, imported lazily).

* AUC per round for several runs or settings;
* pseudo-label quality per round (segment precision / recall / IoU);
* anomaly score curves against the frame ground truth for a few test videos;
* the participants' data distribution (normal / anomalous videos, paper Fig. 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

FRAMES_PER_SEGMENT = 16


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError(
            "plots need matplotlib: pip install 'clapjax[plots]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _integer_locator():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


#: The smallest y span (AUC points) of an AUC plot: a 0.3-point change must not
#: fill the axis and look like a cliff.
MIN_AUC_SPAN = 20.0
#: AUC of a random scorer (the chance line), in percent.
CHANCE_AUC = 50.0


def auc_axis_range(values_pct: Sequence[float], min_span: float = MIN_AUC_SPAN,
                   margin: float = 3.0) -> tuple[float, float]:
    """y limits (percent) of an AUC plot: every value and the chance level
    50 inside with ``margin`` points to spare, at least ``min_span`` wide,
    within [0, 100]. Non-finite values are ignored."""
    v = np.asarray([x for x in values_pct if x is not None and np.isfinite(x)] + [CHANCE_AUC], float)
    lo, hi = float(v.min()) - margin, float(v.max()) + margin
    if hi - lo < min_span:
        mid = (lo + hi) / 2.0
        lo, hi = mid - min_span / 2.0, mid + min_span / 2.0
    if lo < 0.0:
        lo, hi = 0.0, max(hi, min_span)
    if hi > 100.0:
        lo, hi = min(lo, 100.0 - min_span), 100.0
    return max(lo, 0.0), hi


def _auc_decorations(ax, values_pct: Sequence[float], references: Mapping[str, float] | None,
                     synthetic: bool) -> None:
    """Chance line, reference lines (label -> AUC in [0, 1]), "synthetic features" mark, y range."""
    ax.axhline(CHANCE_AUC, color="grey", ls=":", lw=1.2, label="chance (50 %)")
    refs = {k: 100.0 * float(v) for k, v in (references or {}).items() if v is not None}
    for (label, y), color in zip(refs.items(), ("tab:red", "tab:green", "tab:purple", "tab:brown")):
        ax.axhline(y, color=color, ls="--", lw=1.2, label=f"{label} ({y:.1f} %)")
    ax.set_ylim(*auc_axis_range(list(values_pct) + list(refs.values())))
    if synthetic:
        ax.text(0.99, 0.02, "synthetic features (not comparable to I3D results)", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=8, color="dimgrey", style="italic")


def auc_per_round(curves: Mapping[str, Sequence[Mapping]], path: str | Path,
                  metric: str = "auc", title: str = "Frame AUC per round",
                  references: Mapping[str, float] | None = None, synthetic: bool = False) -> Path:
    """Plots ``metric`` per round, one line per labelled run.

    AUC plots (``metric == "auc"``) get the chance line, the ``references``
    as dashed lines, a y range of at least :data:`MIN_AUC_SPAN` points that
    holds chance, curves and references (:func:`auc_axis_range`) and, with
    ``synthetic``, a "synthetic features" mark.

    Args:
      curves: label -> metrics.jsonl records of a run.
      path: PNG path.
      references: label -> AUC in [0, 1] (e.g. the feature-norm scorer, the
        supervised oracle); AUC plots only.
      synthetic: mark the plot as made on synthetic features.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    shown = []
    for label, records in curves.items():
        pts = [(r["round"], r.get(metric)) for r in records if r.get(metric) is not None]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, 100 * np.asarray(y), marker="o", label=label)
            shown += [100 * float(v) for v in y]
    if metric == "auc":
        _auc_decorations(ax, shown, references, synthetic)
    elif synthetic:
        ax.text(0.99, 0.02, "synthetic features", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=8, color="dimgrey", style="italic")
    ax.xaxis.set_major_locator(_integer_locator())
    ax.set_xlabel("round")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    return _save(fig, path)


def local_auc_per_round(records: Sequence[Mapping], names: Sequence[str], path: str | Path,
                        references: Mapping[str, float] | None = None, synthetic: bool = False) -> Path:
    """Local setting: every participant's AUC per round and their mean (with the
    decorations of :func:`auc_per_round`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    rounds = [r["round"] for r in records]
    per = [r.get("auc_per_participant") or [] for r in records]
    for k, name in enumerate(names):
        ys = [p[k] if k < len(p) and p[k] is not None else np.nan for p in per]
        ax.plot(rounds, 100 * np.asarray(ys, float), alpha=0.5, lw=1, label=name)
    mean = 100 * np.asarray([r.get("auc") or np.nan for r in records], float)
    ax.plot(rounds, mean, color="black", lw=2.5, label="mean")
    _auc_decorations(ax, [100 * v for p in per for v in p if v is not None] + list(mean), references, synthetic)
    ax.xaxis.set_major_locator(_integer_locator())
    ax.set_xlabel("round")
    ax.set_ylabel("AUC (%)")
    ax.set_title("Local models: frame AUC per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def label_quality_per_round(records: Sequence[Mapping], path: str | Path) -> Path:
    """Segment pseudo-label precision / recall / IoU per round (after any PLR update)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    rounds = [r["round"] for r in records]
    for key in ("precision", "recall", "iou"):
        ys = []
        for r in records:
            seg = (r.get("label_quality") or {}).get("segments") or {}
            v = seg.get(key)
            ys.append(np.nan if v is None else v)
        ax.plot(rounds, ys, marker="o", label=key)
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_locator(_integer_locator())
    ax.set_xlabel("round")
    ax.set_ylabel("segment pseudo-labels vs truth")
    ax.set_title("Pseudo-label quality (labels used in each round)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def score_curves(videos: Sequence[tuple], path: str | Path) -> Path:
    """Segment scores repeated to frames against the frame ground truth.

    Args:
      videos: ``(name, scores [m] per segment, ground truth [frames])`` triples
        (16 frames per segment), or 4-tuples adding ``segment_frames [m]``,
        the frames of each segment (compressed features, e.g. Sultani's 32).
    """
    plt = _pyplot()
    n = max(len(videos), 1)
    fig, axes = plt.subplots(n, 1, figsize=(7.0, 1.8 * n), squeeze=False)
    for ax, video in zip(axes[:, 0], videos):
        name, scores, gt = video[:3]
        counts = video[3] if len(video) > 3 else FRAMES_PER_SEGMENT
        frames = np.repeat(np.asarray(scores, float), counts)
        gt = np.asarray(gt, float)
        x = np.arange(len(frames))
        ax.fill_between(np.arange(len(gt)), 0, gt, color="tab:red", alpha=0.2, step="mid",
                        label="ground truth")
        ax.plot(x, frames, color="tab:blue", lw=1, label="score")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0, max(len(frames), len(gt), 1))
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("score")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("frame")
    return _save(fig, path)


def participant_distribution(counts: np.ndarray, names: Sequence[str], path: str | Path,
                             title: str = "Videos per participant") -> Path:
    """Stacked bars of normal / anomalous videos per participant (paper Fig. 3).

    Args:
      counts: ``[K, 2]`` (normal, anomalous) video counts.
      names: K participant names.
    """
    plt = _pyplot()
    counts = np.asarray(counts)
    k = counts.shape[0]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * k + 2), 4.0))
    x = np.arange(k)
    ax.bar(x, counts[:, 0], color="tab:blue", label="normal")
    ax.bar(x, counts[:, 1], bottom=counts[:, 0], color="tab:red", label="anomalous")
    ax.set_xticks(x)
    ax.set_xticklabels(list(names), rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("videos")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path,
               title: str = "frame-level ROC") -> Path:
    """ROC curves (false-positive rate against true-positive rate), one line each.

    Args:
      curves: ``label -> (fpr [G], tpr [G], auc)``; the AUC is printed in the legend.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--", label="chance")
    for label, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, lw=1.3, label=f"{label} (AUC {auc:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive rate (frames)")
    ax.set_ylabel("true-positive rate (frames)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)
