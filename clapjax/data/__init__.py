"""Data: feature sources (real I3D files or the synthetic generator), frame
ground truth and validation.

Typical use::

    from clapjax import data, splits
    cfg = data.SyntheticConfig.preset("default")      # or real features:
    train = data.open_source("ucf", "train", synthetic=cfg)   # features_dir=...
    test = data.open_source("ucf", "test", synthetic=cfg)
    split = splits.load("ucf", "event", 13)
    feats, layout = train.read_many(split.participants[0])   # [S, crops, D], Layout
    gt = data.frame_ground_truth(test)                       # [16 * S_test] uint8
    store = data.PackedFeatures(train, split.participants[0])   # [S, crops, D], read on demand
"""

from clapjax.data.groundtruth import (
    INTERVAL_CONVENTION,
    frame_ground_truth,
    interval_labels,
    segment_labels_from_frames,
)
from clapjax.data.sources import (
    ConcatenatedSource,
    FeatureSource,
    NpyFilesSource,
    SourceBase,
    locate_feature_files,
    open_source,
    read_list_file,
    true_segment_labels,
)
from clapjax.data.store import PackedFeatures
from clapjax.data.synthetic import SyntheticConfig, SyntheticSource, shrink_split
from clapjax.data.validation import DataError, check_participants

__all__ = [
    "INTERVAL_CONVENTION",
    "ConcatenatedSource",
    "DataError",
    "FeatureSource",
    "NpyFilesSource",
    "PackedFeatures",
    "SourceBase",
    "SyntheticConfig",
    "SyntheticSource",
    "check_participants",
    "frame_ground_truth",
    "interval_labels",
    "locate_feature_files",
    "open_source",
    "read_list_file",
    "segment_labels_from_frames",
    "shrink_split",
    "true_segment_labels",
]
