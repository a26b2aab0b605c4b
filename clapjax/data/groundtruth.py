"""Frame ground truth of the test set, checked against the features.

Frame labels are ``[F] uint8`` (1 = anomalous), per video in list order. A
video of ``m`` segments has ``16 m`` frames of ground truth (16 frames per
segment), except for features compressed to a fixed number of segments
(Sultani's 32), whose rows cover the frames the table's ``segment_frames``
give (:func:`clapjax.data.sultani_segment_frames`). Three origins:

* the test table's annotated intervals (default; shipped tables, or a
  custom dataset's annotations);
* a user's concatenated ground-truth ``.npy`` (e.g. ``gt-ucf.npy``);
* a folder of per-video ground-truth files ``<video>.npy``.

A user's file is checked against the annotated intervals (when the table has
them) and the videos that disagree are named (:func:`compare_ground_truth`):
an all-zero ground truth of an anomalous video, or a file concatenated in
another video order, are refused by default.

Interval convention (what ``start-end`` in the table means). Intervals are
0-based; the tables keep the numbers of the official annotations; the frame
labels follow the ground truth files every published number is computed
against:

* UCF-Crime: ``inclusive`` 0-based frames ``[start, end]``, as RTFM's
  ``make_gt_ucf.py`` builds the common ``gt-ucf.npy`` from the official
  annotation (Sultani's MATLAB evaluation reads the same numbers 1-based:
  one frame later).
* XD-Violence: ``half_open`` ``[start, end)``, as the XD ground truth scripts
  (e.g. ``make_gt_xd.py`` of VadCLIP, MGFN's ``gt-xd``) build it.
* custom datasets: the table's ``interval_convention`` (annotation readers
  convert 1-based files such as UCSD's ``.mat`` to 0-based).

End-of-video rule (checked on the real tables). Feature extraction drops or
pads the incomplete last 16-frame clip of a video, so annotations (made on
the full video) can reach up to 15 frames past ``n_frames = 16 * m``: in UCF
two intervals end exactly at ``n_frames`` (Assault006, Shooting046), in XD 88
intervals end 0..15 frames past it. Frames in that dropped tail are clipped.
An interval whose last frame lies 16 or more frames past the end, or that
starts at or after ``n_frames``, is an error naming the video: annotation and
features disagree. When the video's true frame count is known (an extraction
manifest, or an annotation file with frame counts) the limits are taken
from it instead; an interval lying wholly in the frames the extractor
dropped is clipped away with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from clapjax import tables
from clapjax.data.validation import DataError, npy_header
from clapjax.tables import FRAMES_PER_SEGMENT, INTERVAL_CONVENTION

__all__ = [
    "GT_CHECKS",
    "INTERVAL_CONVENTION",
    "compare_ground_truth",
    "frame_ground_truth",
    "interval_labels",
    "segment_labels_from_frames",
    "video_frame_labels",
]

#: Frames of the dropped incomplete last clip an interval may reach into.
MAX_TAIL_FRAMES = FRAMES_PER_SEGMENT - 1
#: What to do when a user's ground truth disagrees with the annotations.
GT_CHECKS = ("error", "warn", "off")
#: Frames around an annotated interval boundary where a user's ground truth
#: may differ (other conventions, segment-resolution ground truth files).
BOUNDARY_TOLERANCE = FRAMES_PER_SEGMENT
#: Disagreeing videos named in full in a message.
_NAMED = 5


def interval_labels(
    intervals: Sequence[tuple[int, int]],
    n_frames: int,
    convention: str,
    video: str = "?",
    true_frames: int | None = None,
) -> np.ndarray:
    """Frame labels ``[n_frames] uint8`` of one video from ``(start, end)`` intervals.

    Args:
      intervals: annotated frame intervals (0-based).
      n_frames: frames of the video's features (``16 * m``, or the frames the
        compressed segments cover).
      convention: ``"inclusive"`` ([start, end]) or ``"half_open"`` ([start, end)).
      video: name used in errors.
      true_frames: the video's true frame count when known; intervals are then
        checked against it rather than against ``n_frames``.

    Raises:
      DataError: an interval outside the video beyond the documented tail rule.
    """
    if convention not in ("inclusive", "half_open"):
        raise ValueError(f"convention must be 'inclusive' or 'half_open', got {convention!r}")
    labels = np.zeros(int(n_frames), np.uint8)
    limit = int(n_frames) if true_frames is None else max(int(true_frames), int(n_frames))
    for start, end in intervals:
        stop = end + 1 if convention == "inclusive" else end  # exclusive end
        if start < 0 or stop < start:
            raise DataError(f"video {video!r}: bad anomaly interval {start}-{end}")
        if start >= limit:
            what = (f"the video's {true_frames} frames" if true_frames is not None else
                    f"the features ({n_frames} frames = 16 x {n_frames // 16} segments)")
            raise DataError(
                f"video {video!r}: anomaly interval {start}-{end} starts after the last frame of {what}"
            )
        if stop - 1 > limit - 1 + MAX_TAIL_FRAMES:
            raise DataError(
                f"video {video!r}: anomaly interval {start}-{end} ({convention}) runs "
                f"{stop - limit} frames past the {limit} frames of the "
                f"{'video' if true_frames is not None else 'features'}; only the dropped "
                f"incomplete last clip (<= {MAX_TAIL_FRAMES} frames) is tolerated. Features and "
                "annotation disagree (wrong video or missing segments)"
            )
        if start >= n_frames:
            warnings.warn(
                f"video {video!r}: anomaly interval {start}-{end} lies wholly in the last "
                f"{limit - int(n_frames)} frames that have no features (dropped incomplete clip); "
                "it is not evaluated",
                stacklevel=2,
            )
            continue
        labels[start : min(stop, n_frames)] = 1
    return labels


def video_frame_labels(table: tables.VideoTable, t: int, video: str | None = None) -> np.ndarray:
    """``[n_frames] uint8`` frame labels of table row ``t`` from its intervals."""
    name = table.names[t] if video is None else video
    return interval_labels(
        table.anomaly_frames[t], int(table.n_frames[t]), table.convention, name, table.true_frames(t)
    )


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


def _fmt_intervals(intervals, convention: str) -> str:
    if not intervals:
        return "normal"
    sep = "-" if convention == "inclusive" else ".."
    return "annotated " + ";".join(f"{s}{sep}{e}" for s, e in intervals)


def _runs(labels: np.ndarray, limit: int = 3) -> str:
    """``a-b;c-d`` inclusive runs of ones (at most ``limit``)."""
    idx = np.flatnonzero(np.diff(np.r_[0, labels.astype(np.int8), 0]))
    pairs = [(int(a), int(b) - 1) for a, b in zip(idx[::2], idx[1::2])]
    text = ";".join(f"{a}-{b}" for a, b in pairs[:limit])
    return text + (f";... ({len(pairs)} runs)" if len(pairs) > limit else "")


def compare_ground_truth(
    labels: ArrayLike,
    reference: ArrayLike,
    frames: ArrayLike,
    names: Sequence[str],
    intervals: Sequence[Sequence[tuple[int, int]]],
    convention: str = "inclusive",
) -> list[str]:
    """Videos whose frame labels disagree with their annotated intervals.

    A frame may differ within :data:`BOUNDARY_TOLERANCE` frames of an
    annotated interval's start or end (ground truth files built with another
    convention, or at segment resolution, differ there); any other differing
    frame makes the video disagree, and so does a video that is anomalous in
    one and normal in the other (however short its interval).

    Args:
      labels: ``[F]`` the user's frame labels (list order).
      reference: ``[F]`` the labels the annotations give.
      frames: ``[N]`` frames per video.
      names: ``[N]`` video names.
      intervals: per video, its annotated intervals (for messages and tolerance).
      convention: of ``intervals`` (``"inclusive"`` or ``"half_open"``).

    Returns:
      one description per disagreeing video (empty when all agree), e.g.
      ``"'Abuse028_x264' (annotated 165-240; ground truth all 0)"``.
    """
    labels = np.asarray(labels).reshape(-1)
    reference = np.asarray(reference).reshape(-1)
    ends = np.cumsum(np.asarray(frames, np.int64))
    starts = ends - np.asarray(frames, np.int64)
    out = []
    for i, name in enumerate(names):
        a, b = int(starts[i]), int(ends[i])
        user, ref = labels[a:b], reference[a:b]
        diff = user != ref
        if not diff.any():
            continue
        allowed = np.zeros(b - a, bool)
        for s, e in intervals[i]:
            stop = e + 1 if convention == "inclusive" else e
            for edge in (s, stop):
                allowed[max(0, edge - BOUNDARY_TOLERANCE) : max(0, edge + BOUNDARY_TOLERANCE)] = True
        if not (diff & ~allowed).any() and ref.any() == user.any():
            continue
        ann = _fmt_intervals(intervals[i], convention)
        if ref.any() and not user.any():
            why = "ground truth all 0"
        elif user.any() and not ref.any():
            why = f"ground truth marks {int(user.sum())} frames anomalous ({_runs(user)})"
        else:
            why = f"ground truth anomalous at {_runs(user)}, {int((diff & ~allowed).sum())} frames off"
        out.append(f"{name!r} ({ann}; {why})")
    return out


class _VideoView:
    """What frame_ground_truth needs of a source or a table, per video."""

    def __init__(self, source):
        if isinstance(source, tables.VideoTable):
            t = source
            self.names = t.names
            self.lengths = np.asarray(t.n_segments, np.int64)
            self.intervals = lambda i: t.anomaly_frames[i]
            self.expected = lambda i: int(t.n_frames[i])
            self.segment_frames = t.frames_of_segments
            self.true_frames = t.true_frames
            self.convention = t.convention
            self.where = t.source or f"the {t.dataset} {t.part} table"
        else:
            self.names = source.names
            self.lengths = np.asarray(source.lengths, np.int64)
            self.intervals = source.anomaly_intervals
            self.expected = source.expected_frames
            seg = getattr(source, "segment_frames", None)
            self.segment_frames = seg if seg is not None else (
                lambda i: np.full(int(self.lengths[i]), FRAMES_PER_SEGMENT, np.int64))
            self.true_frames = getattr(source, "true_frames", lambda i: None)
            table = getattr(source, "table", None)
            if table is not None:
                self.convention = table.convention
                self.where = table.source or f"the {table.dataset} {table.part} table"
            else:
                self.convention = INTERVAL_CONVENTION[tables.canonical_dataset(source.dataset)]
                self.where = f"the {source.dataset} {source.part} annotations"

    def frames(self) -> np.ndarray:
        return np.asarray([int(np.sum(self.segment_frames(i))) for i in range(len(self.names))], np.int64)


def _reference(view: _VideoView, frames: np.ndarray, convention: str) -> np.ndarray:
    parts = []
    for i, name in enumerate(view.names):
        want = view.expected(i)
        if want is not None and want != frames[i]:
            raise DataError(
                f"video {name!r}: features have {int(view.lengths[i])} segments "
                f"({int(frames[i])} frames) but the table's frame ground truth has "
                f"{want} frames (field n_frames); the features do not match the "
                "annotated video"
            )
        parts.append(interval_labels(view.intervals(i), int(frames[i]), convention, name,
                                     view.true_frames(i)))
    return np.concatenate(parts)


def frame_ground_truth(
    source,
    gt: str | Path | ArrayLike | None = None,
    *,
    convention: str | None = None,
    check: str = "error",
) -> np.ndarray:
    """Frame labels ``[F] uint8`` of a test source's videos, in source order.

    Args:
      source: a test :class:`FeatureSource` (its ``lengths`` and segment
        frames fix ``F``: ``16 S`` unless the features are compressed), or a
        :class:`clapjax.tables.VideoTable` (lengths from the table).
      gt: ``None`` -> from the table's intervals (or the generator's, for a
        shortened synthetic source); a path to a concatenated ``.npy``; a
        folder with one ``<video>.npy`` per video; or a concatenated array.
      convention: interval convention; default the table's (for the shipped
        tables :data:`INTERVAL_CONVENTION` of the dataset).
      check: a user ``gt`` is compared with the annotated intervals (when the
        source has them): ``"error"`` (default) refuses a disagreement naming
        the videos, ``"warn"`` warns, ``"off"`` skips the comparison.

    Raises:
      DataError: a length mismatch between features and ground truth (naming
        the video), an interval outside its video, labels other than 0/1, or
        (``check="error"``) videos whose ground truth disagrees with the
        annotations.
    """
    if check not in GT_CHECKS:
        raise ValueError(f"check must be one of {GT_CHECKS}, got {check!r}")
    view = _VideoView(source)
    names, lengths = view.names, view.lengths
    conv = convention or view.convention
    frames = view.frames()
    if gt is None:
        return _reference(view, frames, conv)
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
        labels = np.concatenate(parts)
        where = f"folder {folder}"
    else:
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
                f"({int(lengths.sum())} segments); {detail}. The ground truth is never truncated"
            )
    if check != "off":
        try:
            intervals = [view.intervals(i) for i in range(len(names))]
        except DataError:
            intervals = None  # videos outside any annotated table: nothing to compare with
        if intervals is not None:
            try:
                reference = _reference(view, frames, conv)
            except DataError as err:
                # The features are not the annotated videos' (e.g. another
                # extraction): the user's ground truth is the only truth.
                warnings.warn(f"{where}: not compared with the annotated intervals ({err})", stacklevel=2)
            else:
                bad = compare_ground_truth(labels, reference, frames, names, intervals, conv)
                if bad:
                    _disagreement(bad, len(names), where, view.where, check)
    return labels


def _disagreement(bad: list[str], n: int, where: str, reference: str, check: str) -> None:
    shown = ", ".join(bad[:_NAMED]) + (f", ... and {len(bad) - _NAMED} more" if len(bad) > _NAMED else "")
    hint = (" Most videos disagree: was the file concatenated in another video order? It must "
            "follow the test list order." if len(bad) > n // 2 and n > 1 else "")
    msg = (f"{where}: the ground truth disagrees with the annotated intervals of {reference} for "
           f"{len(bad)} of {n} videos: {shown}.{hint} (a deliberately different ground truth: "
           "check='warn', --ground-truth-check warn)")
    if check == "error":
        raise DataError(msg)
    warnings.warn(msg, stacklevel=3)
