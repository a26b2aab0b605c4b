"""clapjax: CLAP (CVPR 2024) unsupervised collaborative video anomaly detection in JAX."""

from clapjax import packed, splits, tables
from clapjax.packed import Layout, layout_from_lengths, pack
from clapjax.splits import Split

__version__ = "0.1.0"

__all__ = [
    "Layout",
    "Split",
    "layout_from_lengths",
    "pack",
    "packed",
    "splits",
    "tables",
]
