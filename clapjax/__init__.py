"""clapjax: CLAP (CVPR 2024) unsupervised collaborative video anomaly detection in JAX.

Data flows one way: ``data`` (feature sources, synthetic generator, ground
truth) → ``statistics`` → ``vpl`` (video pseudo-labels) → ``null_model``
(participant summaries, server mixture) → ``spl`` (segment pseudo-labels,
refinement) → ``engine`` (federated rounds) → ``evaluation``; ``pipeline``
composes them and ``report`` writes run directories. The engine trains any
method of its interface: ``methods`` holds CLAP and the baselines C2FPL and GCL.
"""

from clapjax import (
    data,
    engine,
    evaluation,
    methods,
    model,
    null_model,
    options,
    packed,
    spl,
    splits,
    statistics,
    tables,
    vpl,
    windows,
)
from clapjax.data import SyntheticConfig, frame_ground_truth, open_source
from clapjax.engine import Engine, TrainOptions, federated_data, score_segments
from clapjax.evaluation import frame_metrics
from clapjax.methods import C2FPL, GCL, C2FPLOptions, Clap, GCLOptions
from clapjax.model import ModelOptions
from clapjax.null_model import Mixture, NullGaussian, participant_null, segment_scores_under_null, server_mixture
from clapjax.options import PseudoLabelOptions
from clapjax.packed import Layout, layout_from_lengths, pack
from clapjax.spl import generate_labels, refine_labels
from clapjax.splits import Split
from clapjax.statistics import compute_statistics, segment_magnitude, video_statistics
from clapjax.vpl import video_pseudo_labels
from clapjax.windows import window_argmax, window_argmin

__version__ = "0.1.0"

__all__ = [
    "C2FPL",
    "C2FPLOptions",
    "Clap",
    "Engine",
    "GCL",
    "GCLOptions",
    "Layout",
    "Mixture",
    "ModelOptions",
    "NullGaussian",
    "PseudoLabelOptions",
    "Split",
    "SyntheticConfig",
    "TrainOptions",
    "compute_statistics",
    "data",
    "engine",
    "evaluation",
    "federated_data",
    "frame_ground_truth",
    "frame_metrics",
    "generate_labels",
    "layout_from_lengths",
    "methods",
    "model",
    "null_model",
    "open_source",
    "options",
    "pack",
    "packed",
    "participant_null",
    "refine_labels",
    "score_segments",
    "segment_magnitude",
    "segment_scores_under_null",
    "server_mixture",
    "spl",
    "splits",
    "statistics",
    "tables",
    "video_pseudo_labels",
    "video_statistics",
    "vpl",
    "window_argmax",
    "window_argmin",
    "windows",
]
