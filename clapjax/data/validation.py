"""Checks with clear errors for feature files, videos and participant sets.

Every error names what is wrong and where: the video, the file and the field
(shape, dimension, crop count, value). Pickled ``.npy`` files are refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "DataError",
    "check_features",
    "check_participants",
    "check_video_indices",
    "finite_rows",
    "npy_header",
]

NONFINITE_MODES = ("error", "drop")


class DataError(ValueError):
    """Bad input data: the message names the video, file and field."""


def _where(video: str, file: str | Path | None) -> str:
    return f"video {video!r}" + (f" (file {file})" if file is not None else "")


def npy_header(path: str | Path, video: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an ``.npy`` file from its header (no data read).

    Raises:
      DataError: missing file, not an ``.npy`` file, or an object (pickle) dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{_where(video, path)}: feature file not found")
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                # Versions 2.0 and 3.0 share the header layout (3.0 allows
                # utf8 field names, irrelevant for numeric features).
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except (ValueError, EOFError) as err:
        raise DataError(f"{_where(video, path)}: not a valid .npy file ({err})") from None
    if dtype.hasobject:
        raise DataError(
            f"{_where(video, path)}: holds Python objects (pickle); clapjax never "
            "loads pickles (allow_pickle=False). Save the features as a numeric array."
        )
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise DataError(f"{_where(video, path)}: field dtype {dtype} is not a real number type")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        # np.load(mmap_mode="r") would fail later with "mmap length is greater than file size".
        raise DataError(
            f"{_where(video, path)}: truncated: its header says shape {tuple(shape)} {dtype} "
            f"({expected} bytes) but the file has {size} bytes (copy or extract it again)"
        )
    return tuple(int(d) for d in shape), dtype


def check_features(
    shape: tuple[int, ...],
    *,
    video: str,
    file: str | Path | None,
    crops: int | None,
    feature_dim: int | None,
) -> tuple[int, int, int]:
    """Checks a per-video feature shape ``(m, D)`` or ``(m, crops, D)``.

    Returns:
      ``(m, crops, D)`` (crops = 1 for 2-D features).

    Raises:
      DataError: wrong rank, 0 segments, wrong feature dimension or crop count.
    """
    if len(shape) == 2:
        m, c, d = shape[0], 1, shape[1]
    elif len(shape) == 3:
        m, c, d = shape
    else:
        raise DataError(
            f"{_where(video, file)}: field shape {shape}; expected (segments, D) or "
            "(segments, crops, D)"
        )
    if m == 0:
        raise DataError(f"{_where(video, file)}: the video has 0 segments")
    if feature_dim is not None and d != feature_dim:
        raise DataError(
            f"{_where(video, file)}: feature dimension {d} (shape {shape}); expected {feature_dim}"
        )
    if crops is not None and c != crops:
        raise DataError(
            f"{_where(video, file)}: crop count {c} (shape {shape}); expected {crops}"
        )
    return m, c, d


def finite_rows(
    features: np.ndarray, *, video: str, file: str | Path | None, nonfinite: str
) -> np.ndarray:
    """Handles NaN/inf in ``features [m, ...]`` according to ``nonfinite``.

    ``"error"`` raises naming the video, file and first bad segment; ``"drop"``
    removes the segments holding any non-finite value, with a warning.

    Returns:
      the features (a view when nothing is dropped).
    """
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
    ok = np.isfinite(features.reshape(features.shape[0], -1)).all(axis=1)
    if ok.all():
        return features
    bad = np.flatnonzero(~ok)
    if nonfinite == "error":
        raise DataError(
            f"{_where(video, file)}: {bad.size} segment(s) hold NaN or inf, first at "
            f"segment {int(bad[0])} (fix the features, or drop such segments: --nonfinite drop "
            "on the command line, nonfinite='drop' in open_source; training features only)"
        )
    if bad.size == ok.size:
        raise DataError(f"{_where(video, file)}: every segment holds NaN or inf")
    warnings.warn(
        f"{_where(video, file)}: dropped {bad.size} of {ok.size} segments holding NaN/inf "
        f"(first at segment {int(bad[0])})",
        stacklevel=3,
    )
    return features[ok]


def check_video_indices(indices: ArrayLike, names: Sequence[str], what: str = "source") -> np.ndarray:
    """Checks indices ``[n]`` into ``names``; returns them as int64.

    Raises:
      DataError: a non-integer, negative or out-of-range index.
    """
    arr = np.asarray(indices)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"video indices must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    bad = arr[(arr < 0) | (arr >= len(names))]
    if bad.size:
        raise DataError(
            f"video index {int(bad[0])} does not exist in the {what} "
            f"({len(names)} videos, valid 0..{len(names) - 1})"
        )
    return arr


def check_participants(
    participants: Sequence[ArrayLike | Sequence[int | str]],
    names: Sequence[str],
    what: str = "train table",
) -> tuple[np.ndarray, ...]:
    """Resolves participants' videos (indices or names) and checks them.

    Args:
      participants: K collections of video indices or video names.
      names: the videos they refer to (e.g. a table's or source's names).

    Returns:
      K int64 index arrays.

    Raises:
      DataError: an index or name that does not exist, a video listed twice,
        or a video held by two participants (naming both).
    """
    lookup = {n: i for i, n in enumerate(names)}
    owner: dict[int, int] = {}
    out = []
    for k, videos in enumerate(participants):
        videos = list(np.asarray(videos).reshape(-1)) if not isinstance(videos, (list, tuple)) else list(videos)
        idx = []
        for v in videos:
            if isinstance(v, (str, np.str_)):
                if v not in lookup:
                    raise DataError(f"participant {k}: video name {v!r} does not exist in the {what}")
                idx.append(lookup[str(v)])
            else:
                idx.append(v)
        arr = check_video_indices(np.asarray(idx, np.int64), names, what)
        for i in arr.tolist():
            if i in owner:
                if owner[i] == k:
                    raise DataError(f"participant {k} lists video {names[i]!r} (index {i}) twice")
                raise DataError(
                    f"video {names[i]!r} (index {i}) is held by participant {owner[i]} "
                    f"and participant {k}; a video belongs to one participant"
                )
            owner[i] = k
        out.append(arr)
    return tuple(out)
