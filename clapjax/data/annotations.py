"""Readers of temporal anomaly annotations: Sultani's text format and UCSD's ``.mat``.

Every reader returns :class:`Annotations`: per video its class, whether it is
anomalous and its anomalous frame intervals, **0-based**, in the convention
the object states (``"inclusive"`` ``[start, end]`` or ``"half_open"``
``[start, end)``). Formats:

* ``sultani``: ``name class s1 e1 s2 e2`` per line (Sultani et al., CVPR 2018,
  ``Temporal_Anomaly_Annotation.txt``; any even number of interval values,
  ``-1 -1`` for none; ``name`` may carry a folder and ``.mp4``). Read
  0-based inclusive, as RTFM's ``make_gt_ucf.py`` builds ``gt-ucf.npy`` and
  as the UCF-Crime table of this project holds them.
* ``sultani_frames``: ``path frames class s1 e1 s2 e2`` (the same with the
  video's frame count, e.g. UR-DMU's ``UCF_Annotation.txt``); the frame
  count is kept in :attr:`VideoAnnotation.frames`.
* ``ucsd_mat``: UCSD Ped1/Ped2's ``.mat`` (variable ``gt``: a 1 x N cell of
  ``[start; end]`` columns, several columns for several ranges), **1-based
  inclusive** (MATLAB) ranges, converted to 0-based on reading. The file
  holds no names: entry ``k`` (1-based) annotates the video whose name ends
  in the number ``k`` (``01``, ``Test001``, ``ped2_1`` ...), see
  :meth:`Annotations.find`.

``convention=`` overrides the format's default (``"inclusive"``,
``"half_open"`` or ``"inclusive_1based"``) for files written another way.
Errors name the file and line (or entry) and the field.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from clapjax.data.sources import video_name_from_path
from clapjax.data.validation import DataError

__all__ = [
    "ANNOTATION_CONVENTIONS",
    "ANNOTATION_FORMATS",
    "Annotations",
    "VideoAnnotation",
    "merge_annotations",
    "read_annotations",
]

ANNOTATION_FORMATS = ("auto", "sultani", "sultani_frames", "ucsd_mat")
ANNOTATION_CONVENTIONS = ("auto", "inclusive", "half_open", "inclusive_1based")
_DEFAULT_CONVENTION = {"sultani": "inclusive", "sultani_frames": "inclusive", "ucsd_mat": "inclusive_1based"}
_INT = re.compile(r"^-?\d+$")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


@dataclasses.dataclass(frozen=True)
class VideoAnnotation:
    """One annotated video.

    Attributes:
      name: video name (folder and extension stripped).
      label: class as written (``"Normal"`` for normal UCF videos; ``""`` when
        the format has none).
      anomalous: the video holds an anomaly (intervals, or a non-normal class).
      intervals: 0-based anomalous frame intervals in the file's convention.
      frames: the video's frame count when the file gives it, else None.
      where: file and line (or entry) for messages.
    """

    name: str
    label: str
    anomalous: bool
    intervals: tuple[tuple[int, int], ...]
    frames: int | None
    where: str


@dataclasses.dataclass(frozen=True)
class Annotations:
    """Annotated videos of one (or several merged) annotation files.

    Attributes:
      videos: name (or entry number for ``ucsd_mat``) -> annotation, in file order.
      convention: ``"inclusive"`` or ``"half_open"`` (intervals are 0-based).
      format: the format read.
      source: the file(s) read.
      numbered: entries are numbers, matched to video names by their trailing
        number (``ucsd_mat``).
    """

    videos: dict[str, VideoAnnotation]
    convention: str
    format: str
    source: str
    numbered: bool = False

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.videos)

    def find(self, name: str) -> VideoAnnotation | None:
        """The annotation of video ``name`` (by name, or by trailing number for numbered files)."""
        hit = self.videos.get(name)
        if hit is not None or not self.numbered:
            return hit
        m = _TRAILING_NUMBER.search(name)
        return None if m is None else self.videos.get(str(int(m.group(1))))

    def resolve(self, names: Iterable[str]) -> dict[str, VideoAnnotation]:
        """``{name: annotation}`` for the given video names that are annotated.

        Raises:
          DataError: two videos matching one numbered entry.
        """
        out, owner = {}, {}
        for name in names:
            ann = self.find(name)
            if ann is None:
                continue
            if ann.name in owner:
                raise DataError(
                    f"{ann.where}: annotates both video {owner[ann.name]!r} and video {name!r} "
                    "(entries are matched by the number a video name ends in); rename one"
                )
            owner[ann.name] = name
            out[name] = ann
        return out


def _is_normal(label: str) -> bool:
    return "normal" in label.lower()


def _convert(value_pairs, convention: str, where: str):
    """Validated 0-based pairs in ``"inclusive"``/``"half_open"`` from raw file pairs."""
    out = []
    for s, e in value_pairs:
        if s == -1 and e == -1:
            continue
        if s < 0 or e < 0:
            raise DataError(f"{where}: interval {s} {e}: one bound is -1 (use -1 -1 for none)")
        if convention == "inclusive_1based":
            if s < 1:
                raise DataError(f"{where}: interval {s}-{e} starts at frame {s}; 1-based frames start at 1")
            s, e = s - 1, e - 1
        if e < s or (convention == "half_open" and e == s):
            raise DataError(f"{where}: interval {s}-{e} ends before it starts")
        out.append((int(s), int(e)))
    return tuple(out)


def _detect_text_format(path: Path, lines: list[tuple[int, list[str]]]) -> str:
    first_no, tokens = lines[0]
    if len(tokens) >= 3 and _INT.match(tokens[1]) and not _INT.match(tokens[2]):
        return "sultani_frames"
    if len(tokens) >= 2 and not _INT.match(tokens[1]):
        return "sultani"
    raise DataError(
        f"{path} line {first_no}: cannot tell the annotation format from {' '.join(tokens[:4])!r}; "
        "expected 'name class s1 e1 s2 e2' (sultani) or 'name frames class s1 e1 ...' "
        "(sultani_frames), or pass format="
    )


def _read_text(path: Path, fmt: str, convention: str) -> Annotations:
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a text annotation file ({err})") from None
    lines = [(no, raw.split()) for no, raw in enumerate(text.splitlines(), start=1)
             if raw.strip() and not raw.lstrip().startswith("#")]
    if not lines:
        raise DataError(f"{path}: the annotation file is empty")
    if fmt == "auto":
        fmt = _detect_text_format(path, lines)
    conv = _DEFAULT_CONVENTION[fmt] if convention == "auto" else convention
    head = 3 if fmt == "sultani_frames" else 2
    videos: dict[str, VideoAnnotation] = {}
    for no, tokens in lines:
        where = f"{path} line {no}"
        if len(tokens) < head:
            raise DataError(f"{where}: {len(tokens)} fields; expected {head} before the intervals")
        name = video_name_from_path(tokens[0])
        frames = None
        if fmt == "sultani_frames":
            if not _INT.match(tokens[1]) or int(tokens[1]) <= 0:
                raise DataError(f"{where}: video {name!r}: field frames {tokens[1]!r} is not a positive integer")
            frames = int(tokens[1])
        label = tokens[head - 1]
        values = tokens[head:]
        if any(not _INT.match(v) for v in values):
            bad = next(v for v in values if not _INT.match(v))
            raise DataError(f"{where}: video {name!r}: interval field {bad!r} is not an integer")
        if len(values) % 2:
            raise DataError(f"{where}: video {name!r}: {len(values)} interval values; they come in start end pairs")
        ints = [int(v) for v in values]
        intervals = _convert(zip(ints[::2], ints[1::2]), conv, f"{where}: video {name!r}")
        if intervals and _is_normal(label):
            raise DataError(f"{where}: video {name!r} has class {label!r} but anomaly intervals")
        if frames is not None:
            for s, e in intervals:
                if s >= frames:
                    raise DataError(
                        f"{where}: video {name!r}: interval {s}-{e} starts after the video's {frames} frames"
                    )
        if name in videos:
            raise DataError(f"{where}: video {name!r} is annotated twice (also {videos[name].where})")
        videos[name] = VideoAnnotation(name, label, bool(intervals) or not _is_normal(label),
                                       intervals, frames, where)
    stored = "inclusive" if conv == "inclusive_1based" else conv
    return Annotations(videos, stored, fmt, str(path))


def _read_mat(path: Path, convention: str) -> Annotations:
    try:
        import scipy.io
    except ImportError as err:  # scikit-learn depends on scipy
        raise DataError(f"{path}: reading .mat annotations needs scipy ({err})") from None
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=False)
    except (ValueError, TypeError, OSError, NotImplementedError) as err:
        raise DataError(f"{path}: not a readable MATLAB .mat file ({err})") from None
    if "gt" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path}: no variable 'gt' (holds {keys}); UCSD annotations are a 1 x N cell 'gt'")
    cells = mat["gt"].reshape(-1)
    conv = _DEFAULT_CONVENTION["ucsd_mat"] if convention == "auto" else convention
    videos: dict[str, VideoAnnotation] = {}
    for k, cell in enumerate(cells, start=1):
        where = f"{path} entry gt{{{k}}}"
        arr = np.asarray(cell)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise DataError(f"{where}: field dtype {arr.dtype}; expected numeric [start; end] ranges")
        arr = arr.astype(np.int64)  # the file stores uint8: no arithmetic on it
        if arr.size == 0:
            pairs = []
        elif arr.ndim == 2 and arr.shape[0] == 2:
            pairs = list(zip(arr[0].tolist(), arr[1].tolist()))
        elif arr.ndim == 2 and arr.shape[1] == 2:
            pairs = list(zip(arr[:, 0].tolist(), arr[:, 1].tolist()))
        else:
            raise DataError(f"{where}: field shape {arr.shape}; expected 2 x K [start; end] ranges")
        intervals = _convert(pairs, conv, where)
        videos[str(k)] = VideoAnnotation(str(k), "", bool(intervals), intervals, None, where)
    stored = "inclusive" if conv == "inclusive_1based" else conv
    return Annotations(videos, stored, "ucsd_mat", str(path), numbered=True)


def read_annotations(
    path: str | Path, format: str = "auto", convention: str = "auto"
) -> Annotations:
    """Reads a temporal annotation file (see the module docstring for formats).

    Args:
      path: the file (``.mat`` -> ``ucsd_mat``; text -> detected from the
        first line: ``sultani`` or ``sultani_frames``).
      format: one of :data:`ANNOTATION_FORMATS`.
      convention: one of :data:`ANNOTATION_CONVENTIONS`; ``auto`` = the
        format's (sultani: 0-based inclusive; ucsd_mat: 1-based inclusive).

    Raises:
      DataError: a missing or malformed file, naming the file, line and field.
    """
    if format not in ANNOTATION_FORMATS:
        raise ValueError(f"format must be one of {ANNOTATION_FORMATS}, got {format!r}")
    if convention not in ANNOTATION_CONVENTIONS:
        raise ValueError(f"convention must be one of {ANNOTATION_CONVENTIONS}, got {convention!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    if format == "ucsd_mat" or (format == "auto" and path.suffix.lower() == ".mat"):
        return _read_mat(path, convention)
    return _read_text(path, format, convention)


def merge_annotations(parts: Sequence[Annotations]) -> Annotations:
    """One :class:`Annotations` from several files (same convention).

    Raises:
      DataError: different conventions, two numbered files, or a video
        annotated in two files with different intervals.
    """
    if not parts:
        raise ValueError("merge_annotations needs at least one Annotations")
    if len(parts) == 1:
        return parts[0]
    conv = parts[0].convention
    videos: dict[str, VideoAnnotation] = {}
    for p in parts:
        if p.convention != conv:
            raise DataError(
                f"{p.source}: intervals are {p.convention} but {parts[0].source}'s are {conv}; "
                "annotation files of one run must share a convention"
            )
        if p.numbered:
            raise DataError(f"{p.source}: a numbered (.mat) annotation file cannot be merged with others")
        for name, ann in p.videos.items():
            old = videos.get(name)
            if old is not None and (old.intervals != ann.intervals or old.anomalous != ann.anomalous):
                raise DataError(
                    f"video {name!r}: annotated differently in {old.where} and {ann.where}"
                )
            if old is not None and old.frames is not None and ann.frames is None:
                continue
            videos[name] = ann
    fmt = "+".join(sorted({p.format for p in parts}))
    return Annotations(videos, conv, fmt, " + ".join(p.source for p in parts))
