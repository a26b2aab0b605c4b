"""How much does the server mixture change the segment pseudo-labels?

Compares CLAP's Generate step (SPEC §2.4) under the two null models of the
ablation: each participant's own null Gaussian (``--null-model local``) and
the server mixture ``G`` of all participants' Gaussians (CLAP). Both runs share
the video statistics and video pseudo-labels, so every difference comes from
the null model alone.

Why the question: an upper-tail p-value under any Gaussian mixture,
``Σ_k w_k (1 - Φ((z - μ_k)/σ_k))``, is a strictly decreasing function of the
segment magnitude ``z``, so every mixture orders the segments of a video
exactly as the participant's own Gaussian does. The mixture can therefore
change a label only through the *mean* p-value of a window (a non-linear
change of scale moves which window has the lowest mean), through the α rule,
or, with the released code's mixture density (not monotone in ``z``), through
the order itself. This command measures each effect.

    python -m experiments.null_check                        # event 13, the main job's split
    python -m experiments.null_check --split random --participants 5 --out null.json

Prints a JSON report (and writes ``--out``): per variant and per mode the
label precision/recall/IoU against the true segment labels, and between the
modes the fraction of segments with the same label, of pseudo-anomalous
videos with the same window, and of pseudo-anomalous videos whose segments
both null models order the same way (no pair ordered oppositely; float32
ties, e.g. log p-values that round to 0 far below the null's mean, allowed),
with the median Spearman ρ.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Literal, Optional, Sequence

import numpy as np
import tyro

from experiments.config import _unset


@dataclasses.dataclass(frozen=True)
class NullCheckArgs:
    """Segment pseudo-labels under each participant's own null vs the server mixture."""

    dataset: Literal["ucf", "xd"] = "ucf"
    split: Literal["random", "event", "scene"] = "event"
    participants: int = 13
    preset: Literal["default", "tiny"] = "default"
    """Synthetic data preset (the check needs true segment labels)."""
    variants: tuple[Literal["paper", "reference"], ...] = ("paper", "reference")
    """Pseudo-labelling variants to compare under."""
    seed: int = 0
    out: Annotated[Optional[Path], _unset("PATH", "print only")] = None
    """JSON output file."""


def _quality(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    lab, tru = labels > 0.5, truth > 0
    inter, union = int((lab & tru).sum()), int((lab | tru).sum())
    return {"labelled": int(lab.sum()),
            "precision": round(inter / max(int(lab.sum()), 1), 4),
            "recall": round(inter / max(int(tru.sum()), 1), 4),
            "iou": round(inter / max(union, 1), 4)}


def orders_agree(a: np.ndarray, b: np.ndarray) -> bool:
    """True when no pair of entries is ordered oppositely by ``a`` and ``b``
    (``a_i < a_j`` and ``b_i > b_j``); ties in either are allowed.

    Sorted by ``a`` (ties by ``b``), ``b`` must never decrease: a decrease between
    neighbours is a strictly discordant pair, and without one every pair is
    ordered the same way or tied.
    """
    a, b = np.asarray(a), np.asarray(b)
    order = np.lexsort((b, a))
    return bool(np.all(np.diff(b[order]) >= 0))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0
    return float(spearmanr(a, b).statistic)


def compare(ts, opts, true_segments: np.ndarray) -> dict:
    """Labels under both null models on one training set; the comparison."""
    import jax.numpy as jnp

    from clapjax import null_model, pipeline

    z, stats = pipeline.compute_statistics(ts, opts)
    _, used, _ = pipeline.video_labels(ts, stats, opts)
    nulls = pipeline.null_summaries(ts, z, used)
    modes = {}
    log_scores = {}
    for mode in ("local", "server_mixture"):
        mix = pipeline.mixtures(nulls, opts, mode)
        modes[mode] = pipeline.segment_labels(ts, z, used, mix, opts)
        ls = np.zeros_like(z)
        for k, (ra, rb) in enumerate(ts.row_ranges):
            ls[ra:rb] = np.asarray(null_model.segment_log_scores_under_null(jnp.asarray(z[ra:rb]), mix[k], opts))
        log_scores[mode] = ls
    local, mixed = modes["local"], modes["server_mixture"]
    offsets = np.asarray(ts.layout.offsets)
    lengths = np.asarray(ts.layout.lengths)
    anomalous = np.flatnonzero(used)
    same_window, same_order, rhos = 0, 0, []
    for v in anomalous:
        a, b = int(offsets[v]), int(offsets[v] + lengths[v])
        same_window += bool(np.array_equal(local[a:b], mixed[a:b]))
        rhos.append(_spearman(log_scores["local"][a:b], log_scores["server_mixture"][a:b]))
        same_order += orders_agree(log_scores["local"][a:b], log_scores["server_mixture"][a:b])
    in_anomalous = np.repeat(used, lengths)
    n_anom = max(len(anomalous), 1)
    return {
        "null_score": opts.null_score,
        "generate_window": opts.generate_window,
        "alpha": opts.alpha,
        "pseudo_anomalous_videos": int(len(anomalous)),
        "videos": int(len(used)),
        "segments": int(z.size),
        "same_label_fraction": round(float((local == mixed).mean()), 4),
        "same_label_fraction_in_pseudo_anomalous_videos": round(
            float((local[in_anomalous] == mixed[in_anomalous]).mean()) if in_anomalous.any() else 1.0, 4),
        "same_window_fraction": round(same_window / n_anom, 4),
        "same_segment_order_fraction": round(same_order / n_anom, 4),
        "spearman_median": round(float(np.median(rhos)) if rhos else 1.0, 6),
        "quality": {"local": _quality(local, true_segments), "server_mixture": _quality(mixed, true_segments)},
        "null_means": [round(float(g.mean), 4) for g in nulls],
        "null_stds": [round(float(np.sqrt(g.var)), 4) for g in nulls],
    }


def run(args: NullCheckArgs) -> dict:
    from clapjax import pipeline
    from experiments import run as run_lib
    from experiments.config import RunConfig, validate

    report: dict = {"dataset": args.dataset, "split": args.split, "participants": args.participants,
                    "preset": args.preset, "seed": args.seed, "variants": {}}
    t0 = time.perf_counter()
    for variant in args.variants:
        resolved = validate(RunConfig(dataset=args.dataset, split=args.split, participants=args.participants,
                                      preset=args.preset, variant=variant, seed=args.seed, quiet=True))
        train_source, _ = run_lib.open_sources(resolved)
        ts = pipeline.load_training_set(train_source, resolved.split)
        if ts.true_segment_labels is None:
            raise ValueError("the check needs true segment labels (synthetic data)")
        report["variants"][variant] = compare(ts, resolved.pseudo_labels, np.asarray(ts.true_segment_labels))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def main(argv: Sequence[str] | None = None) -> dict:
    args = tyro.cli(NullCheckArgs, args=argv, prog="python -m experiments.null_check")
    report = run(args)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        from clapjax.report import rundir

        rundir.write_json(args.out, report)
    print(text)
    return report


def cli(argv: Sequence[str] | None = None) -> int:
    """Console entry point: one-line errors with exit status 2 (as ``experiments.run``)."""
    from experiments.run import describe_error

    try:
        main(argv)
    except Exception as e:  # noqa: BLE001 - describe_error decides what is user-facing
        message = describe_error(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
