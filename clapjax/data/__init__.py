"""Data: feature sources (real feature files or the synthetic generator),
annotations, custom datasets, frame ground truth and validation.

Typical use::

    from clapjax import data, splits
    cfg = data.SyntheticConfig.preset("default")      # or real features:
    train = data.open_source("ucf", "train", synthetic=cfg)   # features_dir=...
    test = data.open_source("ucf", "test", synthetic=cfg)
    split = splits.load("ucf", "event", 13)
    feats, layout = train.read_many(split.participants[0])   # [S, crops, D], Layout
    gt = data.frame_ground_truth(test)                       # [16 * S_test] uint8
    store = data.PackedFeatures(train, split.participants[0])   # [S, crops, D], read on demand

Your own features and annotations::

    ds = data.custom_dataset("features/", annotations="annotations.txt")
    split = splits.random_split(ds.train_table, 3, seed=0)
    gt = data.frame_ground_truth(ds.test)
"""

from clapjax.data.annotations import (
    ANNOTATION_CONVENTIONS,
    ANNOTATION_FORMATS,
    Annotations,
    VideoAnnotation,
    merge_annotations,
    read_annotations,
)
from clapjax.data.custom import (
    SEGMENT_FRAME_MODES,
    CustomDataset,
    ManifestEntry,
    custom_dataset,
    read_manifest,
    read_video_list,
    scan_features,
    sultani_segment_frames,
)
from clapjax.data.groundtruth import (
    GT_CHECKS,
    INTERVAL_CONVENTION,
    compare_ground_truth,
    frame_ground_truth,
    interval_labels,
    segment_labels_from_frames,
    video_frame_labels,
)
from clapjax.data.sources import (
    FEATURE_LAYOUTS,
    ConcatenatedSource,
    FeatureSource,
    NpyFilesSource,
    SourceBase,
    check_compatible,
    locate_feature_files,
    open_source,
    read_list_file,
    read_ranges_list,
    resolve_layout,
    true_segment_labels,
    video_name_from_path,
)
from clapjax.data.store import PackedFeatures
from clapjax.data.synthetic import SyntheticConfig, SyntheticSource, shrink_split
from clapjax.data.validation import DataError, check_participants

__all__ = [
    "ANNOTATION_CONVENTIONS",
    "ANNOTATION_FORMATS",
    "FEATURE_LAYOUTS",
    "GT_CHECKS",
    "INTERVAL_CONVENTION",
    "SEGMENT_FRAME_MODES",
    "Annotations",
    "ConcatenatedSource",
    "CustomDataset",
    "DataError",
    "FeatureSource",
    "ManifestEntry",
    "NpyFilesSource",
    "PackedFeatures",
    "SourceBase",
    "SyntheticConfig",
    "SyntheticSource",
    "VideoAnnotation",
    "check_compatible",
    "check_participants",
    "compare_ground_truth",
    "custom_dataset",
    "frame_ground_truth",
    "interval_labels",
    "locate_feature_files",
    "merge_annotations",
    "open_source",
    "read_annotations",
    "read_list_file",
    "read_manifest",
    "read_ranges_list",
    "read_video_list",
    "resolve_layout",
    "scan_features",
    "segment_labels_from_frames",
    "shrink_split",
    "sultani_segment_frames",
    "true_segment_labels",
    "video_frame_labels",
    "video_name_from_path",
]
