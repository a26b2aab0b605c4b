"""Frame ground truth of the test set, checked against the features.

Frame labels are ``[F] uint8`` (1 = anomalous), per video in list order,
``16 * m_i`` frames per video (16 frames per segment). Three origins:

* the test table's annotated intervals (default);
* a user's concatenated ground-truth ``.npy`` (e.g. ``gt-ucf.npy``);
* a folder of per-video ground-truth files ``<video>.npy``.

Interval convention (what ``start-end`` in the table means). The tables keep
the numbers of the official annotations; the frame labels follow the ground
truth files every published number is computed against:

* UCF-Crime: ``inclusive`` 0-based frames ``[start, end]``, as RTFM's
  ``make_gt_ucf.py`` builds the common ``gt-ucf.npy`` from the official
  annotation.
* XD-Violence: ``half_open`` ``[start, end)``, as the XD ground truth scripts
  (e.g. ``make_gt_xd.py`` of VadCLIP, MGFN's ``gt-xd``) build it.

End-of-video rule (checked on the real tables). Feature extraction drops the
incomplete last 16-frame clip of a video, so annotations (made on the full
video) can reach up to 15 frames past ``n_frames = 16 * m``: in UCF two
intervals end exactly at ``n_frames`` (Assault006, Shooting046), in XD 88
intervals end 0..15 frames past it. Frames in that dropped tail are clipped.
An interval whose last frame lies 16 or more frames past the end, or that
starts at or after ``n_frames``, is an error naming the video: annotation and
features disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from clapjax import tables
from clapjax.data.validation import DataError, npy_header
from clapjax.tables import FRAMES_PER_SEGMENT

__all__ = [
    "INTERVAL_CONVENTION",
    "frame_ground_truth",
    "interval_labels",
    "segment_labels_from_frames",
]

#: Meaning of ``start-end`` in each dataset's test table.
INTERVAL_CONVENTION = {"ucf": "inclusive", "xd": "half_open"}
#: Frames of the dropped incomplete last clip an interval may reach into.
MAX_TAIL_FRAMES = FRAMES_PER_SEGMENT - 1


def interval_labels(
    intervals: Sequence[tuple[int, int]],
    n_frames: int,
    convention: str,
    video: str = "?",
) -> np.ndarray:
    """Frame labels ``[n_frames] uint8`` of one video from ``(start, end)`` intervals.

    Args:
      intervals: annotated frame intervals (0-based).
      n_frames: frames of the video's features (``16 * m``).
      convention: ``"inclusive"`` ([start, end]) or ``"half_open"`` ([start, end)).
      video: name used in errors.

    Raises:
      DataError: an interval outside the video beyond the documented tail rule.
    """
    if convention not in ("inclusive", "half_open"):
        raise ValueError(f"convention must be 'inclusive' or 'half_open', got {convention!r}")
    labels = np.zeros(int(n_frames), np.uint8)
    for start, end in intervals:
        stop = end + 1 if convention == "inclusive" else end  # exclusive end
        if start < 0 or stop < start:
            raise DataError(f"video {video!r}: bad anomaly interval {start}-{end}")
        if start >= n_frames:
            raise DataError(
                f"video {video!r}: anomaly interval {start}-{end} starts after the last "
                f"frame of the features ({n_frames} frames = 16 x {n_frames // 16} segments)"
            )
        if stop - 1 > n_frames - 1 + MAX_TAIL_FRAMES:
            raise DataError(
                f"video {video!r}: anomaly interval {start}-{end} ({convention}) runs "
                f"{stop - n_frames} frames past the {n_frames} frames of the features; "
                f"only the dropped incomplete last clip (<= {MAX_TAIL_FRAMES} frames) is "
                "tolerated. Features and annotation disagree (wrong video or missing segments)"
            )
        labels[start : min(stop, n_frames)] = 1
    return labels


def segment_labels_from_frames(frames: ArrayLike) -> np.ndarray:
    """``[16 m]`` frame labels -> ``[m] uint8``: a segment is anomalous iff any frame is."""
    frames = np.asarray(frames).reshape(-1)
    if frames.size % FRAMES_PER_SEGMENT:
        raise ValueError(f"{frames.size} frames is not a multiple of {FRAMES_PER_SEGMENT}")
    return frames.reshape(-1, FRAMES_PER_SEGMENT).any(axis=1).astype(np.uint8)


def _as_labels(values: np.ndarray, where: str) -> np.ndarray:
    if values.ndim != 1:
        raise DataError(f"{where}: field shape {values.shape}; frame labels must be 1-D")
    if not np.isin(values, (0, 1)).all():
        bad = values[~np.isin(values, (0, 1))][0]
        raise DataError(f"{where}: frame label {bad.item()!r}; labels must be 0 or 1")
    return values.astype(np.uint8)


def _load_npy(path: Path, video: str) -> np.ndarray:
    npy_header(path, video)  # refuses pickles, missing files
    return np.load(path, allow_pickle=False)


def frame_ground_truth(
    source,
    gt: str | Path | ArrayLike | None = None,
    *,
    convention: str | None = None,
) -> np.ndarray:
    """Frame labels ``[F] uint8`` of a test source's videos, in source order.

    Args:
      source: a test :class:`FeatureSource` (its ``lengths`` fix ``F = 16 S``),
        or a :class:`clapjax.tables.VideoTable` (lengths from the table).
      gt: ``None`` -> from the table's intervals (or the generator's, for a
        shortened synthetic source); a path to a concatenated ``.npy``; a
        folder with one ``<video>.npy`` per video; or a concatenated array.
      convention: interval convention; default :data:`INTERVAL_CONVENTION` of
        the dataset.

    Raises:
      DataError: a length mismatch between features and ground truth (naming
        the video), an interval outside its video, labels other than 0/1.
    """
    if isinstance(source, tables.VideoTable):
        names, lengths = source.names, source.n_segments
        intervals = lambda i: source.anomaly_frames[i]  # noqa: E731
        expected = lambda i: int(source.n_frames[i])  # noqa: E731
        dataset = source.dataset
    else:
        names, lengths = source.names, np.asarray(source.lengths, np.int64)
        intervals = source.anomaly_intervals
        expected = source.expected_frames
        dataset = source.dataset
    frames = FRAMES_PER_SEGMENT * lengths
    if gt is None:
        conv = convention or INTERVAL_CONVENTION[tables.canonical_dataset(dataset)]
        parts = []
        for i, name in enumerate(names):
            want = expected(i)
            if want is not None and want != frames[i]:
                raise DataError(
                    f"video {name!r}: features have {int(lengths[i])} segments "
                    f"({int(frames[i])} frames) but the table's frame ground truth has "
                    f"{want} frames (field n_frames); the features do not match the "
                    "annotated video"
                )
            parts.append(interval_labels(intervals(i), int(frames[i]), conv, name))
        return np.concatenate(parts)
    if isinstance(gt, (str, Path)) and Path(gt).is_dir():
        folder = Path(gt)
        parts = []
        for i, name in enumerate(names):
            path = folder / f"{name}.npy"
            if not path.is_file():
                raise DataError(f"video {name!r}: ground-truth file not found: {path}")
            lab = _as_labels(_load_npy(path, name).reshape(-1), f"video {name!r} (file {path})")
            if lab.size != frames[i]:
                raise DataError(
                    f"video {name!r} (file {path}): {lab.size} frame labels but the features "
                    f"have {int(lengths[i])} segments = {int(frames[i])} frames"
                )
            parts.append(lab)
        return np.concatenate(parts)
    if isinstance(gt, (str, Path)):
        path = Path(gt)
        values = _load_npy(path, "<all test videos>")
        where = f"file {path}"
    else:
        values = np.asarray(gt)
        where = "ground truth"
    labels = _as_labels(values.reshape(-1) if values.ndim == 1 else values, where)
    total = int(frames.sum())
    if labels.size != total:
        ends = np.cumsum(frames)
        if labels.size > total:
            detail = f"{labels.size - total} frames more than the features, after the last video {names[-1]!r}"
        else:
            i = int(np.searchsorted(ends, labels.size, side="right"))
            detail = (
                f"it ends {int(ends[i] - labels.size)} frames short of the end of video "
                f"{names[i]!r} (index {i})"
            )
        raise DataError(
            f"{where}: {labels.size} frame labels but the test features have {total} frames "
            f"(16 x {int(lengths.sum())} segments); {detail}. The ground truth is never truncated"
        )
    return labels
