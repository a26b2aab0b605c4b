"""Feature sources: one small protocol over real I3D files and the generator.

A source holds N videos (by default every video of a dataset table, in table
order, so split indices index it directly). Reading is per video or per batch,
never the whole dataset: ``.npy`` files are memory-mapped and only the rows of
the requested videos are copied, cast to float32. Crops are kept
(``[m, crops, D]``) or averaged (``crops="mean"`` -> ``[m, 1, D]``).

Layouts read:

* one file per video, ``(m, crops, D)`` or ``(m, D)``, named ``<video>.npy``
  or ``<video>_i3d.npy`` (the RTFM UCF-Crime release);
* one file per crop, ``<video>__<crop>.npy`` each ``(m, D)`` (the XD-Violence
  release and the 10-crop UCF-Crime release);
* one concatenated array ``(S, crops, D)`` or ``(S, D)`` plus ``[start, end)``
  row ranges per video (the reference code's layout).

Files are found under a features directory (searched recursively) by the
table's video names, or listed in a user list file (one path per line, the
``*.list`` convention of RTFM/XDVioDet).
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
    "ConcatenatedSource",
    "FeatureSource",
    "NpyFilesSource",
    "SourceBase",
    "locate_feature_files",
    "open_source",
    "read_list_file",
    "true_segment_labels",
]

CROP_MODES = ("keep", "mean")
_CROP_RE = re.compile(r"^(?P<name>.+)__(?P<crop>\d+)$")


@runtime_checkable
class FeatureSource(Protocol):
    """What every feature source offers (indices are positions in ``names``).

    Attributes:
      dataset: ``"ucf"`` or ``"xd"``.
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


class SourceBase(abc.ABC):
    """Shared behaviour: index checks, packing, crop averaging, table lookup.

    Subclasses set ``dataset, part, names, lengths, crops, feature_dim,
    table_index`` and implement ``_read(i) -> [m_i, crops, D] float32``.
    """

    dataset: str
    part: str
    names: tuple[str, ...]
    lengths: np.ndarray
    crops: int
    feature_dim: int
    #: ``[N] int64`` row of each video in the dataset table (-1 if unknown).
    table_index: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    @abc.abstractmethod
    def _read(self, i: int) -> np.ndarray:
        """Features of video ``i`` ``[m_i, crops, D] float32`` (index already checked)."""

    def read(self, i: int) -> np.ndarray:
        """Features of video ``i``: ``[m_i, crops, D] float32``."""
        (i,) = check_video_indices([i], self.names, self._what())
        return self._checked_read(int(i))

    def _checked_read(self, i: int) -> np.ndarray:
        out = self._read(i)
        if out.shape != (int(self.lengths[i]), self.crops, self.feature_dim):
            raise DataError(
                f"video {self.names[i]!r}: read shape {out.shape}, expected "
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

    def anomaly_intervals(self, i: int) -> tuple[tuple[int, int], ...]:
        """Annotated frame intervals of video ``i`` (from the table; test only)."""
        t = int(self.table_index[i])
        if t < 0:
            raise DataError(f"video {self.names[i]!r} is not in the {self.dataset} {self.part} table")
        return tables.load_table(self.dataset, self.part).anomaly_frames[t]

    def expected_frames(self, i: int) -> int | None:
        """Frames of video ``i``'s ground truth according to the table (None if unknown)."""
        t = int(self.table_index[i])
        if t < 0:
            return None
        return int(tables.load_table(self.dataset, self.part).n_frames[t])

    def _what(self) -> str:
        return f"{self.dataset} {self.part} source"


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


def read_list_file(
    list_file: str | Path, features_dir: str | Path | None = None
) -> dict[str, list[Path]]:
    """Parses a feature list file (one ``.npy`` path per line).

    Relative paths are taken relative to ``features_dir`` (or the list file's
    folder). A listed path that does not exist is looked up by file name in
    ``features_dir`` (list files often hold the authors' absolute paths).

    Returns:
      video name -> file paths (one whole-video file, or crop files in crop
      order), in the list's order of first appearance.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DataError(f"feature list file not found: {list_file}")
    base = Path(features_dir) if features_dir is not None else list_file.parent
    crops: dict[str, dict[int, Path]] = {}
    whole: dict[str, Path] = {}
    for line_no, raw in enumerate(list_file.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line)
        if not path.is_absolute():
            path = base / path
        if not path.exists() and features_dir is not None:
            path = Path(features_dir) / Path(line).name
        if path.suffix != ".npy":
            raise DataError(f"{list_file} line {line_no}: {line!r} is not an .npy file")
        stem = path.name[: -len(".npy")]
        m = _CROP_RE.match(stem)
        if m:
            name, crop = m.group("name"), int(m.group("crop"))
            if name in whole:
                raise DataError(f"{list_file} line {line_no}: video {name!r} is listed both as one file and per crop")
            if crop in crops.setdefault(name, {}):
                raise DataError(f"{list_file} line {line_no}: crop {crop} of video {name!r} is listed twice")
            crops[name][crop] = path
        else:
            name = stem[: -len("_i3d")] if stem.endswith("_i3d") else stem
            if name in whole or name in crops:
                raise DataError(f"{list_file} line {line_no}: video {name!r} is listed twice")
            whole[name] = path
    out: dict[str, list[Path]] = {}
    for name, path in whole.items():
        out[name] = [path]
    for name, by_crop in crops.items():
        out[name] = _ordered_crops(name, by_crop, str(list_file))
    return out


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
    """All ``.npy`` files under ``features_dir`` by file name (recursive)."""
    if not features_dir.is_dir():
        raise DataError(f"features directory not found: {features_dir}")
    index: dict[str, list[Path]] = {}
    for root, _, files in os.walk(features_dir):
        for f in files:
            if f.endswith(".npy"):
                index.setdefault(f, []).append(Path(root) / f)
    return index


def locate_feature_files(
    names: Sequence[str],
    features_dir: str | Path | None = None,
    list_file: str | Path | None = None,
) -> list[list[Path]]:
    """Finds each video's feature file(s).

    For every name, looks for ``<name>.npy``, ``<name>_i3d.npy`` or the crop
    files ``<name>__0.npy, <name>__1.npy, ...`` in ``features_dir`` (any
    subfolder), or takes the paths from ``list_file``.

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
        found = [p for p in (unique(f"{name}.npy", name), unique(f"{name}_i3d.npy", name)) if p]
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
                f"{name}.npy, {name}_i3d.npy and {name}__<crop>.npy)"
            )
    return out



def _check_source_modes(crops: str, nonfinite: str, part: str) -> None:
    """Validates the crop and non-finite handling options of a file source."""
    if crops not in CROP_MODES:
        raise ValueError(f"crops must be one of {CROP_MODES}, got {crops!r}")
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
    if nonfinite == "drop" and part != "train":
        raise ValueError(
            "nonfinite='drop' is only allowed for training features: dropping test "
            "segments would misalign the frame ground truth"
        )

class NpyFilesSource(SourceBase):
    """Per-video ``.npy`` files, memory-mapped, one file per video or per crop.

    Shapes are read from the file headers when the source is opened, so every
    missing file, wrong dimension or crop count is reported before training;
    feature values are read only by :meth:`read`.

    Args:
      files: per video, ``[path]`` (``(m, crops, D)`` or ``(m, D)``) or the crop
        files ``[crop0, crop1, ...]`` (each ``(m, D)``).
      names: video names (for errors and ground truth).
      dataset, part: what the videos are.
      table_index: ``[N]`` rows in the dataset table (``-1`` = not in it).
      crops: ``"keep"`` or ``"mean"``.
      num_crops, feature_dim: expected sizes (default: those of the first video;
        every video must agree).
      nonfinite: ``"error"`` (default) or ``"drop"`` (training only: segments
        holding NaN/inf are dropped with a warning; the whole source is scanned
        once when opened so that ``lengths`` are exact).
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
    ):
        _check_source_modes(crops, nonfinite, part)
        if len(files) != len(names):
            raise ValueError(f"{len(files)} file lists for {len(names)} videos")
        if not names:
            raise DataError("a feature source needs at least one video")
        self.dataset = dataset
        self.part = part
        self.names = tuple(str(n) for n in names)
        self.table_index = (
            np.full(len(names), -1, np.int64) if table_index is None else np.asarray(table_index, np.int64)
        )
        self.files = tuple(tuple(Path(p) for p in f) for f in files)
        self.crop_mode = crops
        self.nonfinite = nonfinite
        lengths = np.empty(len(names), np.int64)
        file_crops, dim = num_crops, feature_dim
        for i, (name, paths) in enumerate(zip(self.names, self.files)):
            m, c, d = self._header(name, paths, file_crops, dim)
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

    @staticmethod
    def _header(name, paths, crops, dim) -> tuple[int, int, int]:
        if len(paths) == 0:
            raise DataError(f"video {name!r}: no feature file")
        if len(paths) == 1:
            shape, _ = npy_header(paths[0], name)
            return check_features(shape, video=name, file=paths[0], crops=crops, feature_dim=dim)
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

    def _read(self, i: int) -> np.ndarray:
        name, paths = self.names[i], self.files[i]
        if len(paths) == 1:
            arr = np.load(paths[0], mmap_mode="r", allow_pickle=False)
            if arr.ndim == 2:
                arr = arr[:, None, :]
            out = _crop_reduce(arr, self.crop_mode)
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
          or each crop file in crop order), or None when rows cannot be read
          directly (Fortran-ordered arrays; ``nonfinite="drop"`` changes rows).
        """
        from clapjax.data.store import RowPiece, npy_data_layout

        if self.nonfinite != "error":
            return None
        pieces = []
        for path in self.files[i]:
            offset, shape, dtype, fortran = npy_data_layout(path)
            if fortran and len(shape) > 1:
                return None
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
      names, dataset, part, table_index, crops, nonfinite: as for
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


def open_source(
    dataset: str,
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
) -> SourceBase:
    """Opens the features of one part of a dataset.

    Exactly one of: ``synthetic`` (a :class:`clapjax.data.SyntheticConfig`),
    ``concatenated`` (+ ``ranges``), ``features_dir`` and/or ``list_file``.

    Args:
      dataset: ``"ucf"`` or ``"xd"``.
      part: ``"train"`` or ``"test"``.
      features_dir: folder holding per-video or per-crop ``.npy`` files.
      synthetic: generator configuration (the embedded default dataset).
      list_file: file listing the ``.npy`` paths (one per line).
      concatenated, ranges: one array and ``[N, 2]`` ``[start, end)`` rows per
        table video (table order).
      videos: restrict to these table videos (indices or names), e.g. one
        participant's own videos; the source's index ``i`` is then the position
        in ``videos`` and ``source.table_index`` maps back. Default: all.
      crops: ``"keep"`` -> ``[m, crops, D]``; ``"mean"`` -> ``[m, 1, D]``.
      nonfinite: ``"error"`` or ``"drop"`` (training only).
      num_crops, feature_dim: expected sizes, checked against every file
        (defaults: whatever the first video has, the same for all).
    """
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
        return SyntheticSource(ds, part, synthetic, videos=videos, crops=crops)
    idx = _resolve_videos(table, videos)
    names = [table.names[i] for i in idx]
    if concatenated is not None:
        if ranges is None:
            raise ValueError("concatenated= needs ranges= ([N, 2] [start, end) rows per table video)")
        if videos is not None:
            if isinstance(ranges, (str, Path)):
                npy_header(Path(ranges), "<ranges>")
                ranges = np.load(Path(ranges), allow_pickle=False)
            ranges = np.asarray(ranges)
            if ranges.ndim != 2 or ranges.shape[0] != len(table):
                raise DataError(
                    f"ranges: {ranges.shape[0] if ranges.ndim else 0} rows; expected one per "
                    f"{ds} {part} table video ({len(table)})"
                )
            ranges = ranges[idx]
        return ConcatenatedSource(
            concatenated, ranges, names, ds, part, table_index=idx, crops=crops,
            num_crops=num_crops, feature_dim=feature_dim, nonfinite=nonfinite,
        )
    files = locate_feature_files(names, features_dir, list_file)
    return NpyFilesSource(
        files, names, ds, part, table_index=idx, crops=crops, num_crops=num_crops,
        feature_dim=feature_dim, nonfinite=nonfinite,
    )
