"""Dataset tables: the real structure of UCF-Crime and XD-Violence as data.

The tables live in the repository's top-level ``splits/`` directory (plain CSV,
documented in ``splits/README.md``). They hold names, labels, per-video segment
counts and the test anomaly intervals; never feature values.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np

DATASETS = ("ucf", "xd")
_ALIASES = {
    "ucf": "ucf",
    "ucf-crime": "ucf",
    "ucfcrime": "ucf",
    "xd": "xd",
    "xd-violence": "xd",
    "xdviolence": "xd",
}
#: Feature layout of the standard I3D releases: (crops, feature dimension).
FEATURE_SHAPE = {"ucf": (10, 2048), "xd": (5, 1024)}
#: Frames per segment of the standard features.
FRAMES_PER_SEGMENT = 16
#: Meaning of ``start-end`` in each shipped test table: UCF-Crime inclusive
#: ``[start, end]`` (RTFM's ``make_gt_ucf.py``), XD-Violence half-open
#: ``[start, end)`` (the XD ground-truth scripts). See ``clapjax.data.groundtruth``.
INTERVAL_CONVENTION = {"ucf": "inclusive", "xd": "half_open"}


def splits_dir() -> Path:
    """Directory holding the tables and split files.

    ``CLAPJAX_SPLITS_DIR`` overrides the default, the repository's ``splits/``.
    """
    env = os.environ.get("CLAPJAX_SPLITS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "splits"


def canonical_dataset(dataset: str) -> str:
    """Maps ``ucf``/``UCF-Crime``/``xd``/``XD-Violence`` to ``ucf`` or ``xd``."""
    key = str(dataset).strip().lower().replace("_", "-")
    if key not in _ALIASES:
        raise ValueError(
            f"unknown dataset {dataset!r}; valid datasets: {', '.join(DATASETS)}"
        )
    return _ALIASES[key]


@dataclasses.dataclass(frozen=True, eq=False)
class VideoTable:
    """One part (train or test) of a dataset, one row per video, in list order.

    Attributes:
      dataset: ``"ucf"`` or ``"xd"`` (or a custom dataset's name, see
        :func:`clapjax.data.custom_dataset`).
      part: ``"train"`` or ``"test"``.
      names: ``[N]`` video names.
      classes: ``[N]`` event class (UCF) or label code (XD, ``"A"`` = normal).
      anomalous: ``[N] bool`` true video-level label.
      n_segments: ``[N] int64`` number of 16-frame segments.
      n_frames: ``[N] int64`` frames of the frame ground truth (test only,
        else ``16 * n_segments``).
      anomaly_frames: per video, a tuple of ``(start, end)`` 0-based frame
        intervals (test only; empty tuples for train and normal videos).
      source: where the table came from (for error messages).
      labels_known: whether ``anomalous`` holds true labels. False for a
        custom dataset whose training videos are unlabelled (CLAP never needs
        them; only the pseudo-label quality report and weak supervision do).
      interval_convention: ``"inclusive"`` or ``"half_open"`` meaning of
        ``anomaly_frames``; None = the dataset's
        :data:`clapjax.data.INTERVAL_CONVENTION`.
      video_frames: ``[N] int64`` true frame counts of the videos when known
        (an extraction manifest or an annotation file with frame counts),
        ``-1`` where unknown; None = unknown for all.
      segment_frames: per video, ``[m_i] int64`` frames covered by each
        feature row, for features compressed to a fixed number of segments
        (Sultani's 32); None = 16 frames per segment for every video.
      frame_truth: ``anomaly_frames`` are the true anomalous frames of every
        video, so true segment labels follow from them (custom datasets whose
        training videos are annotated). The shipped tables' training parts
        have no intervals (False).
    """

    dataset: str
    part: str
    names: tuple[str, ...]
    classes: tuple[str, ...]
    anomalous: np.ndarray
    n_segments: np.ndarray
    n_frames: np.ndarray
    anomaly_frames: tuple[tuple[tuple[int, int], ...], ...]
    source: str = ""
    labels_known: bool = True
    interval_convention: str | None = None
    video_frames: np.ndarray | None = None
    segment_frames: tuple[np.ndarray | None, ...] | None = None
    frame_truth: bool = False

    def __len__(self) -> int:
        return len(self.names)

    @property
    def total_segments(self) -> int:
        return int(self.n_segments.sum())

    @property
    def convention(self) -> str:
        """Meaning of ``anomaly_frames``: ``"inclusive"`` or ``"half_open"``."""
        if self.interval_convention is not None:
            return self.interval_convention
        return INTERVAL_CONVENTION[self.dataset]

    def frames_of_segments(self, i: int) -> np.ndarray:
        """``[m_i] int64`` frames covered by each feature row of video ``i``."""
        if self.segment_frames is not None and self.segment_frames[i] is not None:
            return np.asarray(self.segment_frames[i], np.int64)
        return np.full(int(self.n_segments[i]), FRAMES_PER_SEGMENT, np.int64)

    def true_frames(self, i: int) -> int | None:
        """True frame count of video ``i`` if known (manifest or annotation), else None."""
        if self.video_frames is None or int(self.video_frames[i]) < 0:
            return None
        return int(self.video_frames[i])

    def index_of(self, name: str) -> int:
        """Index of a video by name; a clear error if it does not exist."""
        lookup = self._name_index()
        if name not in lookup:
            raise KeyError(
                f"video {name!r} is not in the {self.dataset} {self.part} table "
                f"({self.source})"
            )
        return lookup[name]

    def _name_index(self) -> dict[str, int]:
        cache = self.__dict__.get("_name_cache")
        if cache is None:
            cache = {n: i for i, n in enumerate(self.names)}
            object.__setattr__(self, "_name_cache", cache)
        return cache


def _parse_intervals(text: str, where: str) -> tuple[tuple[int, int], ...]:
    text = text.strip()
    if not text:
        return ()
    out = []
    for piece in text.split(";"):
        try:
            start, end = (int(v) for v in piece.split("-"))
        except ValueError as err:
            raise ValueError(f"{where}: bad anomaly interval {piece!r}") from err
        if end < start:
            raise ValueError(f"{where}: anomaly interval {piece!r} ends before it starts")
        out.append((start, end))
    return tuple(out)


_TABLE_CACHE: dict[tuple[str, str, str], VideoTable] = {}


def load_table(dataset: str, part: str = "train") -> VideoTable:
    """Loads ``splits/<dataset>/<part>_videos.csv``.

    Args:
      dataset: ``"ucf"`` or ``"xd"`` (aliases accepted).
      part: ``"train"`` or ``"test"``.
    """
    ds = canonical_dataset(dataset)
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', got {part!r}")
    path = splits_dir() / ds / f"{part}_videos.csv"
    key = (ds, part, str(path))
    if key in _TABLE_CACHE:
        return _TABLE_CACHE[key]
    if not path.is_file():
        raise FileNotFoundError(f"dataset table not found: {path}")
    class_col = "class" if ds == "ucf" else "labels"
    names, classes, anomalous, n_seg, n_frames, intervals = [], [], [], [], [], []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        for row_no, row in enumerate(reader):
            where = f"{path.name} row {row_no + 2} ({row.get('name', '?')})"
            if int(row["index"]) != row_no:
                raise ValueError(f"{where}: index {row['index']} is out of order")
            names.append(row["name"])
            classes.append(row[class_col])
            anomalous.append(row["anomalous"] == "1")
            m = int(row["n_segments"])
            if m <= 0:
                raise ValueError(f"{where}: n_segments must be positive, got {m}")
            n_seg.append(m)
            n_frames.append(int(row["n_frames"]) if "n_frames" in row else 16 * m)
            intervals.append(_parse_intervals(row.get("anomaly_frames", "") or "", where))
    table = VideoTable(
        dataset=ds,
        part=part,
        names=tuple(names),
        classes=tuple(classes),
        anomalous=np.asarray(anomalous, dtype=bool),
        n_segments=np.asarray(n_seg, dtype=np.int64),
        n_frames=np.asarray(n_frames, dtype=np.int64),
        anomaly_frames=tuple(intervals),
        source=str(path.relative_to(splits_dir().parent))
        if splits_dir().parent in path.parents
        else str(path),
    )
    _TABLE_CACHE[key] = table
    return table
