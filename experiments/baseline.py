"""The trivial feature-norm scorer, and σ/H by true label, on a run's test frames.

Also the two references every run reports beside its AUC (``summary.json``
``"references"`` and the final line): :func:`feature_norm_metrics` (the
floor: rank segments by the norm of their feature, no training) and, on
synthetic data, :func:`oracle_metrics` (the ceiling: a supervised linear
scorer trained on the true segment labels of the run's training videos).

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


#: At most this many training segments enter the oracle's fit (whole videos,
#: evenly spaced over the run's training videos): enough for a linear scorer
#: of ``D <= 1024`` inputs, and a few CPU-seconds.
ORACLE_SEGMENTS = 50_000


def segment_norms(features, chunk: int = 65_536) -> np.ndarray:
    """``[S] float64`` L2 norm of each segment's crop-mean feature.

    Args:
      features: ``[S, C, D]`` features (an array, or a ``PackedFeatures``
        store read in chunks of ``chunk`` rows, so a streamed test set is never
        held whole).
    """
    n = len(features)
    out = np.empty(n, np.float64)
    for a in range(0, n, chunk):
        block = np.asarray(features[a:min(n, a + chunk)], np.float64)
        out[a:a + block.shape[0]] = np.linalg.norm(block.mean(axis=1), axis=1)
    return out


def feature_norm_metrics(test) -> dict[str, Any]:
    """Frame AUC / APs of the feature-norm scorer on an ``EvalSet`` (the floor).

    The scorer CLAP's pseudo-labels start from (magnitudes), with no training
    and no labels: a trained model that does not beat it has learnt nothing
    the magnitudes did not already say.
    """
    from clapjax import evaluation

    m = evaluation.frame_metrics(segment_norms(test.features), test.lengths, test.ground_truth,
                                 test.names, test.segment_frames)
    return {"scorer": "feature_norm", **m}


def oracle_metrics(train_source, train_videos: np.ndarray, test, seed: int = 0,
                   max_segments: int = ORACLE_SEGMENTS) -> dict[str, Any] | None:
    """Frame AUC / APs of a supervised linear oracle on ``test`` (the ceiling), or None.

    A logistic regression (scikit-learn, L2 ``C=1``, on features standardised
    by the training mean and std) on the crop-mean features and TRUE segment
    labels of the run's training videos (whole videos, evenly spaced, at
    most ``max_segments`` segments), scored on the test set. Only sources
    that know the true segment labels of every picked training video have
    one; None otherwise (``experiments.run`` asks for it on synthetic data only).

    Args:
      train_source: the run's training feature source.
      train_videos: ``[N] int`` source indices of the run's training videos.
      test: the run's ``EvalSet``.
    """
    from sklearn.linear_model import LogisticRegression

    from clapjax import evaluation

    labels_of = getattr(train_source, "true_segment_labels", None)
    if labels_of is None:
        return None
    vids = np.unique(np.asarray(train_videos, np.int64))
    lengths = np.asarray(train_source.lengths, np.int64)[vids]
    stride = max(1, int(np.ceil(lengths.sum() / max_segments)))
    pick = vids[::stride]
    labels = [labels_of(int(i)) for i in pick]
    if any(lab is None for lab in labels):  # e.g. a real source without training annotations
        return None
    X = np.concatenate([np.asarray(train_source.read(int(i)), np.float64).mean(axis=1) for i in pick])
    y = np.concatenate([np.asarray(lab) for lab in labels])
    if y.min() == y.max():
        return None
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    model = LogisticRegression(max_iter=300, random_state=seed).fit((X - mu) / sd, y)
    n = len(test.features)
    scores = np.empty(n, np.float64)
    for a in range(0, n, 65_536):
        block = np.asarray(test.features[a:min(n, a + 65_536)], np.float64).mean(axis=1)
        scores[a:a + block.shape[0]] = model.decision_function((block - mu) / sd)
    m = evaluation.frame_metrics(scores, test.lengths, test.ground_truth, test.names, test.segment_frames)
    return {"scorer": "supervised_linear_oracle", **m, "train_videos": int(pick.size),
            "train_segments": int(y.size)}


def references(train_source, train_videos: np.ndarray, test, seed: int = 0,
               oracle: bool = True) -> dict[str, Any]:
    """``{"feature_norm": ..., "oracle": ... or None}`` for a run (see the module
    docstring); ``oracle=False`` leaves the oracle out (None)."""
    return {"feature_norm": feature_norm_metrics(test),
            "oracle": oracle_metrics(train_source, train_videos, test, seed) if oracle else None}


def feature_norm_report(argv: Sequence[str]) -> dict[str, Any]:
    """The feature-norm metrics and σ/H summary for the run ``argv`` describes."""
    from clapjax import evaluation, packed, pipeline, statistics
    from experiments import run
    from experiments.config import validate

    resolved = validate(run.parse(list(argv)))
    _, test_source = run.open_sources(resolved)
    c = resolved.config
    test = pipeline.load_test_set(test_source, c.ground_truth, c.ground_truth_check)
    scores = segment_norms(test.features)  # float64, as the run's floor (feature_norm_metrics)
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
