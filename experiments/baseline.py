"""The trivial feature-norm scorer, and σ/H by true label, on a run's test frames.

``python -m experiments.baseline <the flags of experiments.run>`` reads the
same test videos and frame ground truth a run of ``experiments.run`` with
those flags would (``--dataset custom ...`` included), scores every segment by
the L2 norm of its crop-mean feature (no training, no labels) and prints one
JSON object: the frame AUC and both APs of that scorer, and the per-video
statistics ``σ`` and ``H`` (CLAP's VPL inputs, with the ``--variant``'s
options) of the normal and the anomalous test videos, and the same metrics of
a random scorer (uniform segment scores drawn with ``--seed``). They are the
yardsticks a result on real features is read against.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

import numpy as np


def feature_norm_report(argv: Sequence[str]) -> dict[str, Any]:
    """The feature-norm metrics and σ/H summary for the run ``argv`` describes."""
    from clapjax import evaluation, packed, pipeline, statistics
    from experiments import run
    from experiments.config import validate

    resolved = validate(run.parse(list(argv)))
    _, test_source = run.open_sources(resolved)
    c = resolved.config
    test = pipeline.load_test_set(test_source, c.ground_truth, c.ground_truth_check)
    scores = np.linalg.norm(test.features.mean(axis=1), axis=1)
    metrics = evaluation.frame_metrics(scores, test.lengths, test.ground_truth, test.names,
                                       test.segment_frames)
    rand = np.random.default_rng(c.seed).random(scores.shape[0])
    random_metrics = evaluation.frame_metrics(rand, test.lengths, test.ground_truth, test.names,
                                              test.segment_frames)
    layout = packed.layout_from_lengths(test.lengths)
    stats = statistics.compute_statistics(test.features, layout, resolved.pseudo_labels).stats
    counts = (test.segment_frames if test.segment_frames is not None
              else np.full(int(test.lengths.sum()), 16, np.int64))
    video_of_row = np.repeat(np.arange(test.lengths.size), test.lengths)
    frames_per_video = np.bincount(video_of_row, weights=counts, minlength=test.lengths.size).astype(np.int64)
    ends = np.cumsum(frames_per_video)
    anomalous = np.asarray([test.ground_truth[e - f:e].any() for f, e in zip(frames_per_video, ends)])

    def summary(mask: np.ndarray) -> dict[str, Any]:
        if not mask.any():
            return {"videos": 0}
        s = stats[mask]
        return {"videos": int(mask.sum()),
                "sigma_mean": float(s[:, 0].mean()), "sigma_std": float(s[:, 0].std()),
                "entropy_mean": float(s[:, 1].mean()), "entropy_std": float(s[:, 1].std())}

    return {
        "scorer": "feature_norm (L2 norm of the crop-mean feature of each segment)",
        "dataset": c.dataset,
        "test_videos": len(test.names),
        "test_frames": int(test.ground_truth.size),
        "anomalous_frames": int(test.ground_truth.sum()),
        **metrics,
        "random": {"scorer": f"uniform random segment scores (seed {c.seed})", **random_metrics},
        "statistics": {"variant": c.variant, "normal": summary(~anomalous),
                       "anomalous": summary(anomalous)},
    }


def main(argv: Sequence[str] | None = None) -> int:
    from clapjax.data import DataError
    from clapjax.report.rundir import RunDirError
    from experiments.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        out = feature_norm_report(argv)
    except (ConfigError, RunDirError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
