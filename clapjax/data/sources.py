"""Feature sources: one small protocol over real feature files and the generator.

A source holds N videos (by default every video of a dataset table, in table
order, so split indices index it directly). Reading is per video or per batch,
never the whole dataset: ``.npy`` files are memory-mapped and only the rows of
the requested videos are copied, cast to float32. Crops are kept
(``[m, crops, D]``) or averaged (``crops="mean"`` -> ``[m, 1, D]``).

Layouts read (each tested on tiny files in exactly that layout):

* one file per video, ``(m, crops, D)`` or ``(m, D)``, named ``<video>.npy``
  or ``<video>_i3d.npy`` (the RTFM UCF-Crime release; this project's
  extractor); the crops-first variant ``(crops, m, D)`` is recognised from
  the segment counts the dataset table (or an extraction manifest) gives for
  each video, never from the first file (see :func:`resolve_layout`);
* one file per crop, ``<video>__<crop>.npy`` each ``(m, D)`` (the XD-Violence
  release and the 10-crop UCF-Crime release);
* Sultani et al.'s C3D text files ``<video>.txt`` / ``<video>_C.txt`` (one
  segment per line, e.g. 32 x 4096);
* feature list files: one path per line (the ``*.list`` files of RTFM,
  UR-DMU and XDVioDet; relative or absolute, whole-video or per-crop files);
* one concatenated array ``(S, crops, D)`` or ``(S, D)`` plus ``[start, end)``
  row ranges per video: an ``[N, 2]`` array, or the released CLAP code's list
  file of ``path,start,end`` lines (:func:`read_ranges_list`).

Files are found under a features directory (searched recursively) by the
table's video names, or listed in a list file. Only the videos a source is
opened for need files (``videos=``).
"""

from __future__ import annotations

import abc
import os
import re
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike

from clapjax import tables
from clapjax.data.validation import (
    DataError,
    NONFINITE_MODES,
    check_features,
    check_video_indices,
    finite_rows,
    npy_header,
)
from clapjax.packed import Layout, layout_from_lengths

__all__ = [
    "FEATURE_LAYOUTS",
    "ConcatenatedSource",
    "FeatureSource",
    "NpyFilesSource",
    "SourceBase",
    "check_compatible",
    "locate_feature_files",
    "open_source",
    "read_list_file",
    "read_ranges_list",
    "resolve_layout",
    "true_segment_labels",
    "video_name_from_path",
]

CROP_MODES = ("keep", "mean")
#: Axis order of 3-D per-video files: ``auto`` (from known segment counts),
#: ``(m, crops, D)`` or ``(crops, m, D)``.
FEATURE_LAYOUTS = ("auto", "segments_first", "crops_first")
_CROP_RE = re.compile(r"^(?P<name>.+)__(?P<crop>\d+)$")
#: File suffixes of the features of one whole video, most specific first.
_WHOLE_SUFFIXES = ("_i3d.npy", ".npy", "_C.txt", ".txt")
#: Extensions stripped from names in list and annotation files.
_VIDEO_EXTS = (".npy", ".txt", ".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg")


@runtime_checkable
class FeatureSource(Protocol):
    """What every feature source offers (indices are positions in ``names``).

    Attributes:
      dataset: ``"ucf"``, ``"xd"`` or the name of a custom dataset.
      part: ``"train"`` or ``"test"``.
      names: ``[N]`` video names.
      lengths: ``[N] int64`` segments per video.
      crops: crops per segment as returned by ``read`` (1 with ``crops="mean"``).
      feature_dim: ``D``.
    """

    dataset: str
    part: str
    names: tuple[str, ...]
    lengths: np.ndarray
    crops: int
    feature_dim: int

    def read(self, i: int) -> np.ndarray:
        """Features of video ``i``: ``[m_i, crops, D] float32``."""
        ...

    def read_many(self, indices: ArrayLike) -> tuple[np.ndarray, Layout]:
        """Packed features ``[S, crops, D] float32`` of videos in the given order."""
        ...


def true_segment_labels(source: FeatureSource, i: int) -> np.ndarray | None:
    """``[m_i] uint8`` true segment labels if the source knows them, else None."""
    fn = getattr(source, "true_segment_labels", None)
    return None if fn is None else fn(i)


def video_name_from_path(path: str | Path) -> str:
    """Video name of a feature, video or list entry path.

    Strips the folder, a video/feature extension and the feature suffixes
    ``_i3d`` and ``_C`` (Sultani's text files); a crop suffix ``__<c>`` is
    kept (see :func:`read_list_file`). ``Abuse/Abuse001_x264.mp4`` ->
    ``Abuse001_x264``.
    """
    name = Path(str(path).strip()).name
    low = name.lower()
    for ext in _VIDEO_EXTS:
        if low.endswith(ext):
            name = name[: -len(ext)]
            if ext == ".npy" and name.endswith("_i3d"):
                name = name[: -len("_i3d")]
            elif ext == ".txt" and name.endswith("_C"):
                name = name[: -len("_C")]
            break
    return name


class SourceBase(abc.ABC):
    """Shared behaviour: index checks, packing, crop averaging, table lookup.

    Subclasses set ``dataset, part, names, lengths, crops, feature_dim,
    table_index, table`` and implement ``_read(i) -> [m_i, crops, D] float32``.
    """

    dataset: str
    part: str
    names: tuple[str, ...]
    lengths: np.ndarray
    crops: int
    feature_dim: int
    #: ``[N] int64`` row of each video in ``table`` (-1 if not in it).
    table_index: np.ndarray
    #: The dataset table the videos belong to (None: names only).
    table: tables.VideoTable | None = None

    def __len__(self) -> int:
        return len(self.names)

    @abc.abstractmethod
    def _read(self, i: int) -> np.ndarray:
        """Features of video ``i`` ``[m_i, crops, D] float32`` (index already checked)."""

    def file_of(self, i: int) -> str:
        """The (first) file holding video ``i``'s features, for messages."""
        return "<generated>"

    def read(self, i: int) -> np.ndarray:
        """Features of video ``i``: ``[m_i, crops, D] float32``."""
        (i,) = check_video_indices([i], self.names, self._what())
        return self._checked_read(int(i))

    def _checked_read(self, i: int) -> np.ndarray:
        out = self._read(i)
        if out.shape != (int(self.lengths[i]), self.crops, self.feature_dim):
            raise DataError(
                f"video {self.names[i]!r} (file {self.file_of(i)}): read shape {out.shape}, expected "
                f"{(int(self.lengths[i]), self.crops, self.feature_dim)}"
            )
        return out

    def read_many(self, indices: ArrayLike) -> tuple[np.ndarray, Layout]:
        """Packed ``[S, crops, D] float32`` features of ``indices`` (in that order) and their layout."""
        idx = check_video_indices(indices, self.names, self._what())
        if idx.size == 0:
            raise DataError("read_many needs at least one video index")
        lengths = self.lengths[idx]
        out = np.empty((int(lengths.sum()), self.crops, self.feature_dim), np.float32)
        row = 0
        for i, m in zip(idx.tolist(), lengths.tolist()):
            out[row : row + m] = self._checked_read(i)
            row += m
        return out, layout_from_lengths(lengths)

    def index_of(self, name: str) -> int:
        """Position of a video by name; a clear error if it is not in the source."""
        lookup = self.__dict__.get("_lookup")
        if lookup is None:
            lookup = {n: i for i, n in enumerate(self.names)}
            self.__dict__["_lookup"] = lookup
        if name not in lookup:
            raise DataError(f"video {name!r} is not in this {self._what()}")
        return lookup[name]

    def _table_row(self, i: int) -> int:
        t = int(self.table_index[i])
        if t < 0 or self.table is None:
            raise DataError(f"video {self.names[i]!r} is not in the {self.dataset} {self.part} table")
        return t

    def anomaly_intervals(self, i: int) -> tuple[tuple[int, int], ...]:
        """Annotated 0-based frame intervals of video ``i`` (from the table; test only)."""
        return self.table.anomaly_frames[self._table_row(i)]

    def expected_frames(self, i: int) -> int | None:
        """Frames of video ``i``'s ground truth according to the table (None if unknown)."""
        if self.table is None or int(self.table_index[i]) < 0:
            return None
        return int(self.table.n_frames[int(self.table_index[i])])

    def segment_frames(self, i: int) -> np.ndarray:
        """``[m_i] int64`` frames covered by each feature row of video ``i`` (16 unless compressed)."""
        t = int(self.table_index[i])
        if self.table is None or t < 0 or self.table.segment_frames is None or self.table.segment_frames[t] is None:
            return np.full(int(self.lengths[i]), tables.FRAMES_PER_SEGMENT, np.int64)
        return self.table.frames_of_segments(t)

    def true_frames(self, i: int) -> int | None:
        """True frame count of video ``i`` when a manifest or annotation gives it."""
        if self.table is None or int(self.table_index[i]) < 0:
            return None
        return self.table.true_frames(int(self.table_index[i]))

    def true_segment_labels(self, i: int) -> np.ndarray | None:
        """``[m_i] uint8`` true segment labels when the table has intervals for
        this video's part (custom datasets with annotated training videos);
        None otherwise."""
        if self.table is None or not self.table.frame_truth:
            return None
        t = self._table_row(i)
        from clapjax.data.groundtruth import video_frame_labels

        frames = video_frame_labels(self.table, t, self.names[i])
        counts = self.table.frames_of_segments(t)
        if frames.size != int(counts.sum()):
            return None
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        out = np.zeros(counts.size, np.uint8)
        nz = counts > 0
        out[nz] = np.maximum.reduceat(frames, starts[nz]) if frames.size else 0
        return out

    def _what(self) -> str:
        return f"{self.dataset} {self.part} source"


def check_compatible(train: FeatureSource, test: FeatureSource) -> None:
    """Checks that train and test features can be used together, before any work.

    The feature dimension and crop count come from the data; a model trained
    on one cannot score the other.

    Raises:
      DataError: one line naming a file of each side and both values.
    """
    def where(src) -> str:
        fn = getattr(src, "file_of", None)
        return fn(0) if fn is not None else f"{src.dataset} {src.part} source"

    if int(train.feature_dim) != int(test.feature_dim):
        raise DataError(
            f"feature dimension: training features have D={train.feature_dim} (file {where(train)}) "
            f"but test features have D={test.feature_dim} (file {where(test)}); train and test "
            "features must come from the same extractor"
        )
    if int(train.crops) != int(test.crops):
        raise DataError(
            f"crop count: training features have {train.crops} crops (file {where(train)}) but "
            f"test features have {test.crops} (file {where(test)}); extract both with the same "
            "crop mode, or pass crops='mean' (--crops mean) to average them"
        )


def _crop_reduce(arr: np.ndarray, mode: str) -> np.ndarray:
    """``[m, C, D]`` -> ``[m, C, D]`` (keep) or ``[m, 1, D]`` (mean), float32."""
    if mode == "mean":
        return arr.mean(axis=1, keepdims=True, dtype=np.float32)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _resolve_videos(
    table: tables.VideoTable, videos: ArrayLike | Sequence[str] | None
) -> np.ndarray:
    if videos is None:
        return np.arange(len(table), dtype=np.int64)
    vids = list(videos)
    if not vids:
        raise DataError("videos= is empty; a feature source needs at least one video")
    if vids and isinstance(vids[0], (str, np.str_)):
        out = []
        for v in vids:
            try:
                out.append(table.index_of(str(v)))
            except KeyError as err:
                raise DataError(str(err.args[0])) from None
        idx = np.asarray(out, np.int64)
    else:
        idx = check_video_indices(np.asarray(vids), table.names, f"{table.dataset} {table.part} table")
    uniq, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"video {table.names[int(uniq[counts > 1][0])]!r} is requested twice")
    return idx


# ------------------------------------------------------------------ list files


def _list_lines(list_file: Path) -> list[tuple[int, str]]:
    if not list_file.is_file():
        raise DataError(f"feature list file not found: {list_file}")
    try:
        text = list_file.read_text()
    except UnicodeDecodeError as err:
        raise DataError(f"{list_file}: not a text file ({err})") from None
    out = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append((line_no, line))
    return out


_RANGE_LINE = re.compile(r"^(?P<path>[^,]+),\s*(?P<start>-?\d+)\s*,\s*(?P<end>-?\d+)\s*$")


def read_list_file(
    list_file: str | Path, features_dir: str | Path | None = None
) -> dict[str, list[Path]]:
    """Parses a feature list file (one feature path per line).

    The ``*.list`` convention of RTFM, UR-DMU and XDVioDet: the first
    whitespace-separated field of a line is a ``.npy`` (or Sultani ``.txt``)
    path, a whole-video file (``<video>.npy``, ``<video>_i3d.npy``) or one
    crop of a video (``<video>__<c>.npy``, crops listed on consecutive or any
    lines). Relative paths are taken relative to ``features_dir`` (or the
    list file's folder). A listed path that does not exist is looked up by
    file name in ``features_dir`` (list files often hold the authors'
    absolute paths).

    Returns:
      video name -> file paths (one whole-video file, or crop files in crop
      order), in the list's order of first appearance.

    Raises:
      DataError: naming the list file and line: a non-feature path, a video
        listed twice or both whole and per crop, missing crop numbers, or a
        ``path,start,end`` line (that is the concatenated layout:
        :func:`read_ranges_list`).
    """
    list_file = Path(list_file)
    base = Path(features_dir) if features_dir is not None else list_file.parent
    crops: dict[str, dict[int, Path]] = {}
    whole: dict[str, Path] = {}
    order: list[str] = []
    index: dict[str, list[Path]] | None = None
    for line_no, line in _list_lines(list_file):
        if _RANGE_LINE.match(line):
            raise DataError(
                f"{list_file} line {line_no}: {line!r} is a 'path,start,end' line of the "
                "concatenated layout (the released CLAP code's list); pass it as the ranges "
                "of the concatenated array (ranges=LIST, --concatenated ARRAY --ranges LIST)"
            )
        token = line.split()[0]
        path = Path(token)
        if not path.is_absolute():
            path = base / path
        if not path.exists() and features_dir is not None:
            # The authors' path: find the file by name under features_dir (any subfolder).
            index = _index_dir(Path(features_dir)) if index is None else index
            hits = index.get(Path(token).name, [])
            if len(hits) > 1:
                raise DataError(
                    f"{list_file} line {line_no}: {len(hits)} files named {Path(token).name} under "
                    f"{features_dir} ({hits[0]}, {hits[1]}, ...); keep one"
                )
            path = hits[0] if hits else Path(features_dir) / Path(token).name
        if path.suffix not in (".npy", ".txt"):
            raise DataError(f"{list_file} line {line_no}: {token!r} is not an .npy or .txt feature file")
        stem = path.name[: -len(path.suffix)]
        m = _CROP_RE.match(stem)
        if m and path.suffix == ".npy":
            name, crop = m.group("name"), int(m.group("crop"))
            if name in whole:
                raise DataError(f"{list_file} line {line_no}: video {name!r} is listed both as one file and per crop")
            if crop in crops.setdefault(name, {}):
                raise DataError(f"{list_file} line {line_no}: crop {crop} of video {name!r} is listed twice")
            crops[name][crop] = path
        else:
            name = video_name_from_path(path)
            if name in whole or name in crops:
                raise DataError(f"{list_file} line {line_no}: video {name!r} is listed twice")
            whole[name] = path
        if name not in order:
            order.append(name)
    if not order:
        raise DataError(f"{list_file}: the list holds no feature files")
    out: dict[str, list[Path]] = {}
    for name in order:
        out[name] = [whole[name]] if name in whole else _ordered_crops(name, crops[name], str(list_file))
    return out


def read_ranges_list(list_file: str | Path) -> tuple[list[str], np.ndarray]:
    """Parses the released CLAP code's list of ``path,start,end`` lines.

    Each line names one video (by the file name in ``path``) and its
    ``[start, end)`` rows in ONE concatenated feature array (e.g.
    ``list/UCF_Train_ten_crop_i3d_complete_V1.txt`` with ``concat_UCF.npy``).

    Returns:
      ``(names [N], ranges [N, 2] int64)`` in list order.

    Raises:
      DataError: a line that is not ``path,start,end``, ``end <= start``, or a
        video listed twice (naming the file and line).
    """
    list_file = Path(list_file)
    names, ranges, seen = [], [], {}
    for line_no, line in _list_lines(list_file):
        m = _RANGE_LINE.match(line)
        if not m:
            raise DataError(
                f"{list_file} line {line_no}: {line!r} is not 'path,start,end' (the released "
                "CLAP code's list of [start, end) rows in one concatenated array)"
            )
        name = video_name_from_path(m.group("path"))
        start, end = int(m.group("start")), int(m.group("end"))
        if start < 0 or end <= start:
            raise DataError(f"{list_file} line {line_no}: video {name!r}: bad row range [{start}, {end})")
        if name in seen:
            raise DataError(f"{list_file} line {line_no}: video {name!r} is listed twice (also line {seen[name]})")
        seen[name] = line_no
        names.append(name)
        ranges.append((start, end))
    if not names:
        raise DataError(f"{list_file}: the list holds no videos")
    return names, np.asarray(ranges, np.int64)


def _ordered_crops(name: str, by_crop: dict[int, Path], where: str) -> list[Path]:
    expected = list(range(len(by_crop)))
    if sorted(by_crop) != expected:
        missing = sorted(set(range(max(by_crop) + 1)) - set(by_crop))
        raise DataError(
            f"video {name!r}: crop file(s) {', '.join(f'{name}__{c}.npy' for c in missing)} "
            f"missing in {where} (crops must be numbered 0..C-1)"
        )
    return [by_crop[c] for c in expected]


def _index_dir(features_dir: Path) -> dict[str, list[Path]]:
    """All ``.npy``/``.txt`` files under ``features_dir`` by file name (recursive)."""
    if not features_dir.is_dir():
        raise DataError(f"features directory not found: {features_dir}")
    index: dict[str, list[Path]] = {}
    seen: set[str] = set()
    # Symlinked subfolders (e.g. train/ -> /data/ucf/train) are followed; a
    # link cycle is walked once.
    for root, dirs, files in os.walk(features_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        for f in files:
            if f.endswith((".npy", ".txt")):
                index.setdefault(f, []).append(Path(root) / f)
    return index


def locate_feature_files(
    names: Sequence[str],
    features_dir: str | Path | None = None,
    list_file: str | Path | None = None,
) -> list[list[Path]]:
    """Finds each video's feature file(s).

    For every name, looks for ``<name>.npy``, ``<name>_i3d.npy``, the crop
    files ``<name>__0.npy, <name>__1.npy, ...`` or Sultani's text file
    ``<name>.txt`` / ``<name>_C.txt`` in ``features_dir`` (any subfolder), or
    takes the paths from ``list_file``. Only the named videos need files.

    Raises:
      DataError: a video with no file, or with several candidate files.
    """
    if list_file is not None:
        listed = read_list_file(list_file, features_dir)
        out = []
        for name in names:
            if name not in listed:
                raise DataError(f"video {name!r}: no feature file listed in {list_file}")
            out.append(listed[name])
        return out
    if features_dir is None:
        raise DataError("pass features_dir= or list_file= to locate feature files")
    features_dir = Path(features_dir)
    index = _index_dir(features_dir)

    def unique(fname: str, name: str) -> Path | None:
        hits = index.get(fname)
        if not hits:
            return None
        if len(hits) > 1:
            raise DataError(
                f"video {name!r}: {len(hits)} files named {fname} under {features_dir} "
                f"({hits[0]}, {hits[1]}, ...); keep one"
            )
        return hits[0]

    out = []
    for name in names:
        found = [p for p in (unique(f"{name}{s}", name) for s in _WHOLE_SUFFIXES) if p]
        crop_files: dict[int, Path] = {}
        c = 0
        while (p := unique(f"{name}__{c}.npy", name)) is not None:
            crop_files[c] = p
            c += 1
        if found and crop_files:
            raise DataError(
                f"video {name!r}: both a whole-video file ({found[0]}) and crop files "
                f"({crop_files[0]}) exist under {features_dir}; keep one layout"
            )
        if len(found) > 1:
            raise DataError(f"video {name!r}: both {found[0].name} and {found[1].name} exist; keep one")
        if found:
            out.append(found)
        elif crop_files:
            out.append([crop_files[k] for k in sorted(crop_files)])
        else:
            raise DataError(
                f"video {name!r}: feature file not found under {features_dir} (looked for "
                f"{name}.npy, {name}_i3d.npy, {name}__<crop>.npy and {name}.txt)"
            )
    return out


def _check_source_modes(crops: str, nonfinite: str, part: str, layout: str = "auto") -> None:
    """Validates the crop, layout and non-finite handling options of a file source."""
    if crops not in CROP_MODES:
        raise ValueError(f"crops must be one of {CROP_MODES}, got {crops!r}")
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
    if layout not in FEATURE_LAYOUTS:
        raise ValueError(f"layout must be one of {FEATURE_LAYOUTS}, got {layout!r}")
    if nonfinite == "drop" and part != "train":
        raise ValueError(
            "nonfinite='drop' is only allowed for training features: dropping test "
            "segments would misalign the frame ground truth"
        )


# ------------------------------------------------------------------ file shapes


def _text_header(path: Path, video: str) -> tuple[int, int]:
    """``(rows, columns)`` of a whitespace-separated text feature file (no parsing of values)."""
    if not path.is_file():
        raise DataError(f"video {video!r} (file {path}): feature file not found")
    rows, cols = 0, None
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                rows += 1
                if cols is None:
                    cols = len(raw.split())
    if rows == 0:
        raise DataError(f"video {video!r} (file {path}): the video has 0 segments (empty text file)")
    return rows, int(cols)


def _load_text(path: Path, video: str, shape: tuple[int, int]) -> np.ndarray:
    try:
        arr = np.loadtxt(path, dtype=np.float32, ndmin=2)
    except ValueError as err:
        raise DataError(f"video {video!r} (file {path}): not a numeric feature table ({err})") from None
    if arr.shape != shape:
        raise DataError(f"video {video!r} (file {path}): field shape {arr.shape}; expected {shape} (file changed?)")
    return arr


def _raw_shape(path: Path, video: str) -> tuple[int, ...]:
    if path.suffix == ".txt":
        return _text_header(path, video)
    return npy_header(path, video)[0]


def resolve_layout(
    shapes: Sequence[tuple[int, ...]],
    names: Sequence[str],
    files: Sequence[str | Path],
    expected_lengths: ArrayLike | None,
    layout: str = "auto",
) -> str:
    """The axis order of 3-D per-video files: ``segments_first`` or ``crops_first``.

    ``auto`` decides from the known segment count ``m`` of every video (the
    dataset table, or an extraction manifest), never from one file: a 3-D
    file ``(a, b, D)`` votes "segments first" when only ``a == m`` and
    "crops first" when only ``b == m``; ``a == b == m`` is ambiguous and
    votes for nothing, nor does a file matching neither (features of another
    extraction). All votes must agree; the other files follow them. Without
    any vote ``auto`` means ``segments_first`` (the RTFM release and every
    extractor of this project), unless some file is ambiguous; a crops-first
    file read that way shows up as a crop count that varies between videos,
    and that error names the fix.

    Raises:
      DataError: files voting for both layouts, or ambiguous files and no
        vote; each names the video and file, with the fix.
    """
    if layout != "auto":
        return layout
    if expected_lengths is None:
        return "segments_first"
    expected = np.asarray(expected_lengths, np.int64)
    votes: dict[str, tuple[str, str]] = {}
    ambiguous = None
    for shape, name, file, m in zip(shapes, names, files, expected.tolist()):
        if len(shape) != 3 or m < 0:
            continue
        a, b = shape[0], shape[1]
        if a == m and b == m:
            ambiguous = ambiguous or (name, str(file), shape)
            continue
        if a == m:
            votes.setdefault("segments_first", (name, str(file)))
        elif b == m:
            votes.setdefault("crops_first", (name, str(file)))
        if len(votes) > 1:
            (n1, f1), (n2, f2) = votes["segments_first"], votes["crops_first"]
            raise DataError(
                f"mixed feature layouts: video {n1!r} (file {f1}) is (segments, crops, D) but "
                f"video {n2!r} (file {f2}) is (crops, segments, D) by their known segment "
                "counts; convert the files to one layout"
            )
    if votes:
        return next(iter(votes))
    if ambiguous is not None:
        name, file, shape = ambiguous
        raise DataError(
            f"video {name!r} (file {file}): field shape {tuple(shape)} is ambiguous (both leading "
            f"axes equal its {shape[0]} known segments) and no other video decides the layout; "
            "pass layout='segments_first' or 'crops_first' (--feature-layout)"
        )
    return "segments_first"


class NpyFilesSource(SourceBase):
    """Per-video feature files, memory-mapped, one file per video or per crop.

    Reads ``.npy`` files (memory-mapped) and Sultani's ``.txt`` files (parsed
    when read). Shapes come from the file headers when the source is opened,
    so every missing file, wrong dimension or crop count is reported before
    training; feature values are read only by :meth:`read`.

    Args:
      files: per video, ``[path]`` (``(m, crops, D)``, ``(crops, m, D)`` or
        ``(m, D)``) or the crop files ``[crop0, crop1, ...]`` (each ``(m, D)``).
      names: video names (for errors and ground truth).
      dataset, part: what the videos are.
      table_index: ``[N]`` rows in ``table`` (``-1`` = not in it).
      crops: ``"keep"`` or ``"mean"``.
      num_crops, feature_dim: expected sizes (default: those of the data;
        every video must agree).
      nonfinite: ``"error"`` (default) or ``"drop"`` (training only: segments
        holding NaN/inf are dropped with a warning; the whole source is scanned
        once when opened so that ``lengths`` are exact).
      layout: axis order of 3-D files (:data:`FEATURE_LAYOUTS`, see
        :func:`resolve_layout`).
      expected_lengths: ``[N]`` known segment counts (``-1`` unknown) that
        ``layout="auto"`` decides from; default: the table's ``n_segments``.
      table: the dataset table of ``table_index``.
    """

    def __init__(
        self,
        files: Sequence[Sequence[str | Path]],
        names: Sequence[str],
        dataset: str,
        part: str,
        table_index: ArrayLike | None = None,
        crops: str = "keep",
        num_crops: int | None = None,
        feature_dim: int | None = None,
        nonfinite: str = "error",
        *,
        layout: str = "auto",
        expected_lengths: ArrayLike | None = None,
        table: tables.VideoTable | None = None,
    ):
        _check_source_modes(crops, nonfinite, part, layout)
        if len(files) != len(names):
            raise ValueError(f"{len(files)} file lists for {len(names)} videos")
        if not names:
            raise DataError("a feature source needs at least one video")
        self.dataset = dataset
        self.part = part
        self.names = tuple(str(n) for n in names)
        self.table = table
        self.table_index = (
            np.full(len(names), -1, np.int64) if table_index is None else np.asarray(table_index, np.int64)
        )
        self.files = tuple(tuple(Path(p) for p in f) for f in files)
        self.crop_mode = crops
        self.nonfinite = nonfinite
        if expected_lengths is None and table is not None and (self.table_index >= 0).all():
            expected_lengths = table.n_segments[self.table_index]
        for name, paths in zip(self.names, self.files):
            if len(paths) == 0:
                raise DataError(f"video {name!r}: no feature file")
        raw = [_raw_shape(paths[0], name) if len(paths) == 1 else None
               for name, paths in zip(self.names, self.files)]
        self.layout = resolve_layout(
            [s for s in raw if s is not None],
            [n for n, s in zip(self.names, raw) if s is not None],
            [p[0] for p, s in zip(self.files, raw) if s is not None],
            None if expected_lengths is None else np.asarray(expected_lengths)[[s is not None for s in raw]],
            layout,
        )
        self._shapes = raw
        lengths = np.empty(len(names), np.int64)
        file_crops, dim = num_crops, feature_dim
        for i, (name, paths) in enumerate(zip(self.names, self.files)):
            m, c, d = self._header(name, paths, raw[i], file_crops, dim)
            if file_crops is None:
                file_crops = c
            if dim is None:
                dim = d
            lengths[i] = m
        self.file_crops = int(file_crops)
        self.feature_dim = int(dim)
        self.crops = 1 if crops == "mean" else self.file_crops
        self.lengths = lengths
        if nonfinite == "drop":
            # One pass so that lengths account for dropped segments.
            self.lengths = np.asarray([self._read(i).shape[0] for i in range(len(names))], np.int64)

    def file_of(self, i: int) -> str:
        return str(self.files[i][0])

    def _header(self, name, paths, raw, crops, dim) -> tuple[int, int, int]:
        if len(paths) == 1:
            shape = tuple(raw)
            if len(shape) == 3 and self.layout == "crops_first":
                shape = (shape[1], shape[0], shape[2])
            try:
                return check_features(shape, video=name, file=paths[0], crops=crops, feature_dim=dim)
            except DataError as err:
                if "crop count" in str(err) and len(shape) == 3 and self.layout == "segments_first":
                    raise DataError(
                        f"{err}; if the files are (crops, segments, D), pass layout='crops_first' "
                        "(--feature-layout crops-first)"
                    ) from None
                raise
        if crops is not None and len(paths) != crops:
            raise DataError(
                f"video {name!r}: crop count {len(paths)} (files {paths[0].name} ...); expected {crops}"
            )
        m0 = None
        for p in paths:
            shape, _ = npy_header(p, name)
            if len(shape) != 2:
                raise DataError(f"video {name!r} (file {p}): field shape {shape}; a crop file must be (segments, D)")
            m, _, d = check_features(shape, video=name, file=p, crops=None, feature_dim=dim)
            dim = d if dim is None else dim
            if m0 is None:
                m0 = m
            elif m != m0:
                raise DataError(
                    f"video {name!r} (file {p}): {m} segments but crop file {paths[0].name} has {m0}"
                )
        return int(m0), len(paths), int(dim)

    def _load_whole(self, i: int) -> np.ndarray:
        path = self.files[i][0]
        if path.suffix == ".txt":
            arr = _load_text(path, self.names[i], tuple(self._shapes[i]))
        else:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.ndim == 2:
            return arr[:, None, :]
        if self.layout == "crops_first":
            return arr.transpose(1, 0, 2)
        return arr

    def _read(self, i: int) -> np.ndarray:
        name, paths = self.names[i], self.files[i]
        if len(paths) == 1:
            out = _crop_reduce(self._load_whole(i), self.crop_mode)
        else:
            maps = [np.load(p, mmap_mode="r", allow_pickle=False) for p in paths]
            if self.crop_mode == "mean":
                acc = np.zeros(maps[0].shape, np.float32)
                for mp in maps:
                    acc += mp
                out = (acc / np.float32(len(maps)))[:, None, :]
            else:
                out = np.empty((maps[0].shape[0], len(maps), maps[0].shape[1]), np.float32)
                for c, mp in enumerate(maps):
                    out[:, c, :] = mp
        file = paths[0]
        if len(paths) > 1 and self.nonfinite == "error":
            bad = ~np.isfinite(out.reshape(out.shape[0], -1)).all(axis=1)
            if bad.any():
                # Name the crop file that holds the first bad value.
                j = int(np.flatnonzero(bad)[0])
                if self.crop_mode == "keep":
                    file = paths[int(np.flatnonzero(~np.isfinite(out[j]).all(axis=1))[0])]
                else:
                    file = next(p for p in paths if not np.isfinite(
                        np.load(p, mmap_mode="r", allow_pickle=False)[j]).all())
        return finite_rows(out, video=name, file=file, nonfinite=self.nonfinite)

    # -- direct row access (streaming; see clapjax.data.store) ----------------
    def row_pieces(self, i: int):
        """Where video ``i``'s rows sit in its file(s), for reading rows without the whole video.

        Returns:
          one :class:`clapjax.data.store.RowPiece` per file (a whole-video file,
          or each crop file in crop order; a crops-first ``(crops, m, D)`` file
          is one piece per crop), or None when rows cannot be read directly
          (text files, Fortran-ordered arrays; ``nonfinite="drop"`` changes rows).
        """
        from clapjax.data.store import RowPiece, npy_data_layout

        if self.nonfinite != "error":
            return None
        pieces = []
        for path in self.files[i]:
            if path.suffix != ".npy":
                return None
            offset, shape, dtype, fortran = npy_data_layout(path)
            if fortran and len(shape) > 1:
                return None
            if len(shape) == 3 and self.layout == "crops_first":
                c, m, d = shape
                row = d * dtype.itemsize
                pieces += [RowPiece(str(path), offset + k * m * row, row, 1, dtype) for k in range(c)]
                continue
            crops = shape[1] if len(shape) == 3 else 1
            stride = crops * shape[-1] * dtype.itemsize
            pieces.append(RowPiece(str(path), offset, stride, crops, dtype))
        return pieces


class ConcatenatedSource(SourceBase):
    """One concatenated ``(S, crops, D)`` / ``(S, D)`` array plus ``[start, end)`` ranges.

    The array is memory-mapped (``np.load(mmap_mode="r")``); reading a video
    copies only its rows.

    Args:
      array: path of the ``.npy`` array.
      ranges: ``[N, 2]`` int ``[start, end)`` rows per video, or a path to such
        an ``.npy`` file.
      names, dataset, part, table_index, crops, nonfinite, table: as for
        :class:`NpyFilesSource`.
    """

    def __init__(
        self,
        array: str | Path,
        ranges: ArrayLike | str | Path,
        names: Sequence[str],
        dataset: str,
        part: str,
        table_index: ArrayLike | None = None,
        crops: str = "keep",
        num_crops: int | None = None,
        feature_dim: int | None = None,
        nonfinite: str = "error",
        *,
        table: tables.VideoTable | None = None,
    ):
        _check_source_modes(crops, nonfinite, part)
        self.path = Path(array)
        shape, _ = npy_header(self.path, "<all videos>")
        if len(shape) == 2:
            shape3 = (shape[0], 1, shape[1])
        elif len(shape) == 3:
            shape3 = shape
        else:
            raise DataError(f"file {self.path}: field shape {shape}; expected (S, D) or (S, crops, D)")
        if isinstance(ranges, (str, Path)):
            rpath = Path(ranges)
            npy_header(rpath, "<ranges>")  # missing file, pickles
            ranges = np.load(rpath, allow_pickle=False)
            rwhere = f"file {rpath}"
        else:
            rwhere = "ranges"
        ranges = np.asarray(ranges)
        if ranges.ndim != 2 or ranges.shape[1] != 2 or not np.issubdtype(ranges.dtype, np.integer):
            raise DataError(f"{rwhere}: field ranges must be an [N, 2] integer array, got {ranges.shape} {ranges.dtype}")
        if ranges.shape[0] != len(names):
            raise DataError(f"{rwhere}: {ranges.shape[0]} ranges for {len(names)} videos")
        self.ranges = ranges.astype(np.int64)
        for i, (s, e) in enumerate(self.ranges):
            if e == s:
                raise DataError(f"video {names[i]!r} ({rwhere} row {i}): the video has 0 segments")
            if s < 0 or e < s or e > shape3[0]:
                raise DataError(
                    f"video {names[i]!r} ({rwhere} row {i}): range [{s}, {e}) is outside "
                    f"the {shape3[0]} rows of {self.path}"
                )
        if feature_dim is not None and shape3[2] != feature_dim:
            raise DataError(f"file {self.path}: feature dimension {shape3[2]}; expected {feature_dim}")
        if num_crops is not None and shape3[1] != num_crops:
            raise DataError(f"file {self.path}: crop count {shape3[1]}; expected {num_crops}")
        self.dataset, self.part = dataset, part
        self.names = tuple(str(n) for n in names)
        self.table = table
        self.table_index = (
            np.full(len(names), -1, np.int64) if table_index is None else np.asarray(table_index, np.int64)
        )
        self.crop_mode = crops
        self.nonfinite = nonfinite
        self.file_crops = int(shape3[1])
        self.feature_dim = int(shape3[2])
        self.crops = 1 if crops == "mean" else self.file_crops
        self.lengths = self.ranges[:, 1] - self.ranges[:, 0]
        self._array = None
        if nonfinite == "drop":
            self.lengths = np.asarray([self._read(i).shape[0] for i in range(len(names))], np.int64)

    def file_of(self, i: int) -> str:
        return str(self.path)

    def _mmap(self) -> np.ndarray:
        if self._array is None:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
            self._array = arr[:, None, :] if arr.ndim == 2 else arr
        return self._array

    def _read(self, i: int) -> np.ndarray:
        s, e = self.ranges[i]
        out = _crop_reduce(self._mmap()[s:e], self.crop_mode)
        return finite_rows(out, video=self.names[i], file=self.path, nonfinite=self.nonfinite)

    # -- direct row access (streaming; see clapjax.data.store) ----------------
    def row_pieces(self, i: int):
        """Where video ``i``'s rows sit in the array (one
        :class:`clapjax.data.store.RowPiece`), or None when they cannot be read
        directly (Fortran order; ``nonfinite="drop"``)."""
        from clapjax.data.store import RowPiece, npy_data_layout

        if self.nonfinite != "error":
            return None
        offset, shape, dtype, fortran = npy_data_layout(self.path)
        if fortran and len(shape) > 1:
            return None
        crops = shape[1] if len(shape) == 3 else 1
        stride = crops * shape[-1] * dtype.itemsize
        return [RowPiece(str(self.path), offset + int(self.ranges[i][0]) * stride, stride, crops, dtype)]


def _is_ranges_list(path: Path) -> bool:
    """True for a text list of ``path,start,end`` lines (not an ``.npy`` array)."""
    if path.suffix == ".npy" or not path.is_file():
        return False
    lines = _list_lines(path)
    return bool(lines) and _RANGE_LINE.match(lines[0][1]) is not None


def _table_ranges(
    table: tables.VideoTable, idx: np.ndarray, ranges: ArrayLike | str | Path
) -> np.ndarray:
    """``[len(idx), 2]`` rows of the chosen table videos from table-wide ranges or a CLAP list."""
    if isinstance(ranges, (str, Path)) and _is_ranges_list(Path(ranges)):
        names, rows = read_ranges_list(ranges)
        lookup = {n: r for n, r in zip(names, rows)}
        out = np.empty((idx.size, 2), np.int64)
        for j, t in enumerate(idx.tolist()):
            name = table.names[t]
            if name not in lookup:
                raise DataError(f"video {name!r}: not listed in {ranges}")
            out[j] = lookup[name]
            m = int(lookup[name][1] - lookup[name][0])
            if m != int(table.n_segments[t]):
                raise DataError(
                    f"video {name!r} ({ranges}): rows [{lookup[name][0]}, {lookup[name][1]}) hold {m} "
                    f"segments but {table.source} gives {int(table.n_segments[t])}; the list does "
                    "not belong to these features"
                )
        return out
    if isinstance(ranges, (str, Path)):
        npy_header(Path(ranges), "<ranges>")
        ranges = np.load(Path(ranges), allow_pickle=False)
    ranges = np.asarray(ranges)
    if ranges.ndim != 2 or ranges.shape[0] != len(table):
        raise DataError(
            f"ranges: {ranges.shape[0] if ranges.ndim else 0} rows; expected one per "
            f"{table.dataset} {table.part} table video ({len(table)})"
        )
    return ranges[idx]


def open_source(
    dataset: str | tables.VideoTable,
    part: str = "train",
    features_dir: str | Path | None = None,
    synthetic=None,
    *,
    list_file: str | Path | None = None,
    concatenated: str | Path | None = None,
    ranges: ArrayLike | str | Path | None = None,
    videos: ArrayLike | Sequence[str] | None = None,
    crops: str = "keep",
    nonfinite: str = "error",
    num_crops: int | None = None,
    feature_dim: int | None = None,
    layout: str = "auto",
) -> SourceBase:
    """Opens the features of one part of a dataset.

    Exactly one of: ``synthetic`` (a :class:`clapjax.data.SyntheticConfig`),
    ``concatenated`` (+ ``ranges``), ``features_dir`` and/or ``list_file``.
    Only the files of the chosen ``videos`` are needed.

    Args:
      dataset: ``"ucf"`` or ``"xd"``, or a :class:`clapjax.tables.VideoTable`
        (e.g. of a custom dataset; ``part`` must match it).
      part: ``"train"`` or ``"test"``.
      features_dir: folder holding per-video, per-crop or text feature files.
      synthetic: generator configuration (the embedded default dataset).
      list_file: a ``.list`` file naming the feature files (one per line).
      concatenated, ranges: one array and the ``[start, end)`` rows of the
        videos: an ``[N_table, 2]`` array (or ``.npy``) in table order, or
        the released CLAP code's ``path,start,end`` list file.
      videos: restrict to these table videos (indices or names), e.g. one
        participant's own videos or the videos of a run; the source's index
        ``i`` is then the position in ``videos`` and ``source.table_index``
        maps back. Default: all.
      crops: ``"keep"`` -> ``[m, crops, D]``; ``"mean"`` -> ``[m, 1, D]``.
      nonfinite: ``"error"`` or ``"drop"`` (training only).
      num_crops, feature_dim: expected sizes, checked against every file
        (defaults: whatever the data hold, the same for all videos).
      layout: axis order of 3-D per-video files (:func:`resolve_layout`).
    """
    if isinstance(dataset, tables.VideoTable):
        table = dataset
        if table.part != part:
            raise ValueError(f"the table is the {table.part} part; part={part!r} was requested")
        ds = table.dataset
    else:
        ds = tables.canonical_dataset(dataset)
        table = tables.load_table(ds, part)
    if nonfinite == "drop" and part != "train":
        raise ValueError(
            "nonfinite='drop' is only allowed for training features: dropping test "
            "segments would misalign the frame ground truth"
        )
    chosen = [x is not None for x in (synthetic, concatenated, features_dir or list_file)]
    if sum(chosen) != 1:
        raise ValueError(
            "pass exactly one feature origin: synthetic=SyntheticConfig.preset(...), "
            "concatenated=... (+ ranges=...), or features_dir=/list_file="
        )
    if synthetic is not None:
        from clapjax.data.synthetic import SyntheticSource

        if nonfinite != "error" or num_crops is not None or feature_dim is not None:
            raise ValueError("nonfinite/num_crops/feature_dim apply to real features; set sizes in SyntheticConfig")
        if ds not in tables.DATASETS or table is not tables.load_table(ds, part):
            raise ValueError("synthetic features exist for the shipped ucf/xd tables only")
        return SyntheticSource(ds, part, synthetic, videos=videos, crops=crops)
    idx = _resolve_videos(table, videos)
    names = [table.names[i] for i in idx]
    if concatenated is not None:
        if ranges is None:
            raise ValueError("concatenated= needs ranges= ([N, 2] [start, end) rows per table video, or a path,start,end list)")
        return ConcatenatedSource(
            concatenated, _table_ranges(table, idx, ranges), names, ds, part, table_index=idx,
            crops=crops, num_crops=num_crops, feature_dim=feature_dim, nonfinite=nonfinite,
            table=table,
        )
    files = locate_feature_files(names, features_dir, list_file)
    return NpyFilesSource(
        files, names, ds, part, table_index=idx, crops=crops, num_crops=num_crops,
        feature_dim=feature_dim, nonfinite=nonfinite, layout=layout, table=table,
    )
