"""Your own dataset: a folder of extracted features, your video lists and annotations.

:func:`custom_dataset` turns a features folder (the extractor's
``<video>.npy`` files and ``manifest.json``, any layout
:mod:`clapjax.data.sources` reads, or Sultani's C3D text files), optional
train/test video lists and temporal annotations (Sultani's text format, with
or without frame counts, or UCSD's ``.mat``; :mod:`clapjax.data.annotations`)
into a train and a test :class:`clapjax.tables.VideoTable` plus their feature
sources. Everything the shipped UCF-Crime/XD-Violence tables hold comes from
the data here: segment counts and the feature dimension from the files,
labels and intervals from the annotations, frame counts from the features
(segments x 16), checked against the video's true frame count when a
manifest or the annotation file records it. Splits come from
:func:`clapjax.splits.random_split` (or ``event_split``, ``from_file``) on
the train table.

Which videos are which:

* test videos: ``test_list``; else every video in ``test_features_dir``;
  else every annotated video that has features (annotated videos without
  features are reported). Every test video must be annotated.
* training videos: ``train_list``; else every video in ``features_dir`` that
  is not a test video (``transductive=True``: every video, test videos
  included; CLAP never reads labels in training). Training labels, when the
  annotations cover every training video, are used for reports and weak
  supervision only.

Segments and frames. Clip features (one row per 16-frame clip: this
project's extractor, the I3D releases) cover ``16 m`` frames; the extractor
drops the incomplete last clip, releases that pad it have ``ceil(F / 16)``
rows. Features compressed to a fixed number of segments (Sultani's 32
segments per video, averaged from the clip features) map to frames through
their clips: :func:`sultani_segment_frames`. ``segment_frames="auto"`` treats
a video as compressed when its true frame count ``F`` is known and its row
count is neither ``floor(F/16)`` nor ``ceil(F/16)``; all compressed videos
must then share one segment count.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from clapjax import tables
from clapjax.data.annotations import Annotations, VideoAnnotation, merge_annotations, read_annotations
from clapjax.data.sources import (
    _CROP_RE,
    NpyFilesSource,
    check_compatible,
    video_name_from_path,
)
from clapjax.data.validation import DataError
from clapjax.tables import FRAMES_PER_SEGMENT

__all__ = [
    "SEGMENT_FRAME_MODES",
    "CustomDataset",
    "ManifestEntry",
    "custom_dataset",
    "read_manifest",
    "read_video_list",
    "scan_features",
    "sultani_segment_frames",
]

SEGMENT_FRAME_MODES = ("auto", "clips", "sultani")
MANIFEST = "manifest.json"
_NUMBER = re.compile(r"^-?\d+(\.\d*)?([eE][-+]?\d+)?$")


# ------------------------------------------------------------------ segment -> frames


def sultani_segment_frames(n_segments: int, n_frames: int, video: str = "?") -> np.ndarray:
    """Frames covered by each segment of a video compressed Sultani's way.

    Sultani et al. (``Save_C3DFeatures_32Segments.m``) average the video's
    ``n = floor(F / 16)`` clip features into ``M`` segments with clip
    boundaries ``b = round(linspace(1, n, M + 1))`` (MATLAB rounding, half
    away from zero): segment ``j`` averages clips ``b_j .. b_{j+1} - 1``, or
    clip ``b_j`` alone when that range is empty (short videos, ``n < M``).
    Their evaluation (``Evaluate_Anomaly_Detector.m``) writes segment ``j``'s
    score onto those clips' frames in segment order, so a later segment
    overwrites an earlier one on a shared clip. This function returns that
    assignment as frame counts: segment ``j`` owns frames
    ``[16 (b_j - 1), 16 (b_{j+1} - 1))`` (zero frames when a later segment
    starts on the same clip), and the last segment also owns the last clip
    and the ``F - 16 n`` leftover frames (the original evaluation leaves the
    last clip at score 0 and repeats that 0 over the leftover frames, an
    artefact not reproduced).

    Checked on the real files: in Sultani's text features of the 10 shared
    UCF-Crime test videos, the segments this rule says average the same
    single clip hold identical rows (e.g. 5 pairs for Normal_Videos_006,
    450 frames, 28 clips).

    Args:
      n_segments: ``M`` rows of the compressed features (32 in Sultani's release).
      n_frames: ``F`` frames of the video.
      video: name for errors.

    Returns:
      ``[M] int64`` frames per segment, summing to ``F``.

    Raises:
      DataError: a video shorter than one clip.
    """
    m, f = int(n_segments), int(n_frames)
    clips = f // FRAMES_PER_SEGMENT
    if m < 1 or clips < 1:
        raise DataError(f"video {video!r}: {f} frames hold no 16-frame clip; nothing to compress into {m} segments")
    j = np.arange(m + 1, dtype=np.int64)
    # round((n - 1) j / M) with halves away from zero, in exact integers.
    b = 1 + (2 * (clips - 1) * j + m) // (2 * m)
    starts = FRAMES_PER_SEGMENT * (b[:-1] - 1)
    stops = np.r_[starts[1:], f]
    return (stops - starts).astype(np.int64)


def _clip_rows_ok(m: int, frames: int) -> bool:
    """``m`` rows are one per 16-frame clip of ``frames`` (last clip dropped or padded)."""
    return m in (frames // FRAMES_PER_SEGMENT, -(-frames // FRAMES_PER_SEGMENT))


# ------------------------------------------------------------------ files


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    """One video of an extraction manifest (``manifest.json``).

    Attributes:
      frames: decoded frames of the video.
      segments: feature rows (16-frame clips).
      dropped: frames of the incomplete last clip that was dropped.
      fps: frame rate (None if not recorded).
    """

    frames: int | None
    segments: int | None
    dropped: int | None
    fps: float | None


def _pick(entry: dict, keys: Sequence[str]):
    for k in keys:
        if k in entry and entry[k] is not None:
            return entry[k]
    return None


def read_manifest(path: str | Path) -> dict[str, ManifestEntry]:
    """Per-video entries of an extraction manifest.

    Accepts ``{"videos": {name: entry}}``, ``{"videos": [{"name": ..., ...}]}``
    or ``{name: entry}``; an entry's fields are ``frames`` (or ``n_frames``),
    ``segments`` (``n_segments``, ``clips``), ``dropped_frames``
    (``dropped``) and ``fps``. A name may be a path (``a/b.mp4`` -> ``b``).

    Raises:
      DataError: unreadable JSON or an entry whose ``frames`` is not
        ``16 x segments + dropped`` (naming the manifest and video).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the manifest ({err})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    videos = data.get("videos", data) if isinstance(data, dict) else None
    if isinstance(videos, list):
        items = []
        for k, e in enumerate(videos):
            name = _pick(e, ("name", "video", "path", "file")) if isinstance(e, dict) else None
            if name is None:
                raise DataError(f"{path}: videos[{k}] has no field 'name'")
            items.append((str(name), e))
    elif isinstance(videos, dict):
        items = [(str(k), e) for k, e in videos.items() if isinstance(e, dict)]
    else:
        raise DataError(f"{path}: expected a JSON object with per-video entries ('videos')")
    out: dict[str, ManifestEntry] = {}
    for raw_name, e in items:
        name = video_name_from_path(raw_name)
        where = f"{path}: video {name!r}"

        def as_int(keys, field):
            v = _pick(e, keys)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 0:
                raise DataError(f"{where}: field {field} {v!r} is not a non-negative integer")
            return int(v)

        frames = as_int(("frames", "n_frames", "num_frames"), "frames")
        segments = as_int(("segments", "n_segments", "clips", "num_segments"), "segments")
        dropped = as_int(("dropped_frames", "dropped", "n_dropped"), "dropped_frames")
        fps = _pick(e, ("fps", "frame_rate"))
        if frames is not None and segments is not None and dropped is not None:
            if frames != FRAMES_PER_SEGMENT * segments + dropped:
                raise DataError(
                    f"{where}: frames {frames} != 16 x {segments} segments + {dropped} dropped frames"
                )
        if frames is None and segments is not None and dropped is not None:
            frames = FRAMES_PER_SEGMENT * segments + dropped
        out[name] = ManifestEntry(frames, segments, dropped, None if fps is None else float(fps))
    return out


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _is_text_features(path: Path) -> bool:
    """A ``.txt`` whose first non-empty line is at least two numbers (Sultani's format)."""
    try:
        with open(path, "rb") as fh:
            for raw in fh:
                tokens = raw.split()
                if tokens:
                    return len(tokens) >= 2 and all(_NUMBER.match(t.decode("ascii", "replace")) for t in tokens[:8])
    except OSError:
        return False
    return False


def scan_features(features_dir: str | Path) -> dict[str, list[Path]]:
    """Every video's feature file(s) under a folder (recursive), by video name.

    Recognises ``<video>.npy``, ``<video>_i3d.npy``, crop files
    ``<video>__<c>.npy`` and Sultani's text files ``<video>.txt`` /
    ``<video>_C.txt`` (a ``.txt`` counts only when its first line is numbers).
    Names are returned in natural order (``v2`` before ``v10``).

    Raises:
      DataError: a missing folder, no feature files, a video with two files
        or both layouts, or crop files not numbered ``0..C-1``.
    """
    root = Path(features_dir)
    if not root.is_dir():
        raise DataError(f"features directory not found: {root}")
    whole: dict[str, Path] = {}
    crops: dict[str, dict[int, Path]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix not in (".npy", ".txt"):
            continue
        if path.suffix == ".txt" and not _is_text_features(path):
            continue
        stem = path.name[: -len(path.suffix)]
        m = _CROP_RE.match(stem) if path.suffix == ".npy" else None
        if m:
            name, c = m.group("name"), int(m.group("crop"))
            if name in whole:
                raise DataError(f"video {name!r}: both {whole[name]} and crop file {path} exist; keep one layout")
            if c in crops.setdefault(name, {}):
                raise DataError(f"video {name!r}: two crop-{c} files: {crops[name][c]} and {path}")
            crops[name][c] = path
        else:
            name = video_name_from_path(path)
            if name in crops:
                raise DataError(f"video {name!r}: both crop files and {path} exist; keep one layout")
            if name in whole:
                raise DataError(f"video {name!r}: two feature files: {whole[name]} and {path}; keep one")
            whole[name] = path
    out: dict[str, list[Path]] = {n: [p] for n, p in whole.items()}
    for name, by_crop in crops.items():
        if sorted(by_crop) != list(range(len(by_crop))):
            missing = sorted(set(range(max(by_crop) + 1)) - set(by_crop))
            raise DataError(f"video {name!r}: crop file(s) {', '.join(f'{name}__{c}.npy' for c in missing)} missing under {root}")
        out[name] = [by_crop[c] for c in sorted(by_crop)]
    if not out:
        raise DataError(
            f"{root}: no feature files (<video>.npy, <video>_i3d.npy, <video>__<crop>.npy or "
            "Sultani's <video>.txt)"
        )
    return {n: out[n] for n in sorted(out, key=_natural_key)}


def read_video_list(path: str | Path) -> list[str]:
    """Video names of a list file, in order.

    One video per line; the first field (whitespace- or comma-separated) is a
    name or a path (``Abuse/Abuse001_x264.mp4``, ``feats/v1_i3d.npy``,
    ``v1__3.npy``: folder, extension and feature suffixes are stripped, crop
    files of one video count once). ``#`` starts a comment line. So the
    UCF-Crime ``Anomaly_Train.txt``, RTFM/UR-DMU ``.list`` files and the
    released CLAP code's ``path,start,end`` lists all work as video lists.

    Raises:
      DataError: a missing or empty file, or a video listed twice (naming
        both lines).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"video list not found: {path}")
    names: list[str] = []
    seen: dict[str, int] = {}
    crop_of: set[str] = set()
    for no, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        token = re.split(r"[\s,]", line, maxsplit=1)[0]
        name = video_name_from_path(token)
        m = _CROP_RE.match(name)
        if m:
            name = m.group("name")
            if name in crop_of:
                continue
            crop_of.add(name)
        if name in seen:
            raise DataError(f"{path} line {no}: video {name!r} is listed twice (also line {seen[name]})")
        seen[name] = no
        names.append(name)
    if not names:
        raise DataError(f"{path}: the video list is empty")
    return names


# ------------------------------------------------------------------ the dataset


@dataclasses.dataclass(frozen=True, eq=False)
class CustomDataset:
    """A custom dataset: tables and feature sources of its train and test parts.

    Attributes:
      train_table, test_table: the parts' :class:`~clapjax.tables.VideoTable`.
      train, test: their feature sources (``source.table`` is the table).
      annotations: the merged annotations read.
      notes: what a user should know about how the data were read (compressed
        segments, transductive training, annotated videos without features...).
    """

    train_table: tables.VideoTable
    test_table: tables.VideoTable
    train: NpyFilesSource
    test: NpyFilesSource
    annotations: Annotations
    notes: tuple[str, ...]

    def describe(self) -> dict:
        """A JSON-able summary (recorded in a run's ``config.json``)."""
        def part(t: tables.VideoTable, src) -> dict:
            comp = [] if t.segment_frames is None else [
                t.names[i] for i, s in enumerate(t.segment_frames) if s is not None]
            return {"videos": len(t), "segments": int(t.n_segments.sum()),
                    "anomalous": int(t.anomalous.sum()) if t.labels_known else None,
                    "labels_known": t.labels_known, "compressed_videos": len(comp),
                    "names": list(t.names)}

        return {
            "name": self.train_table.dataset,
            "feature_dim": int(self.train.feature_dim),
            "crops": int(self.train.file_crops),
            "layout": self.train.layout,
            "annotations": {"source": self.annotations.source, "format": self.annotations.format,
                            "convention": self.annotations.convention},
            "train": part(self.train_table, self.train),
            "test": part(self.test_table, self.test),
            "notes": list(self.notes),
        }


def _manifest_of(folder: Path | None) -> dict[str, ManifestEntry]:
    """Every ``manifest.json`` under ``folder`` (several extraction runs), merged."""
    if folder is None:
        return {}
    out: dict[str, ManifestEntry] = {}
    where: dict[str, Path] = {}
    for path in sorted(folder.rglob(MANIFEST)):
        for name, entry in read_manifest(path).items():
            if name in out and out[name] != entry:
                raise DataError(f"video {name!r}: {where[name]} and {path} record different extractions")
            out[name], where[name] = entry, path
    return out


def _frames_known(name: str, manifest: dict[str, ManifestEntry], ann: VideoAnnotation | None,
                  m: int, file: Path) -> int | None:
    """The video's true frame count from its manifest entry and/or annotation (must agree)."""
    entry = manifest.get(name)
    frames = None if entry is None else entry.frames
    if entry is not None and entry.segments is not None and entry.segments != m:
        raise DataError(
            f"video {name!r} (file {file}): {m} segments but the extraction manifest records "
            f"{entry.segments}; the features and the manifest are from different runs"
        )
    if ann is not None and ann.frames is not None:
        if frames is not None and frames != ann.frames:
            raise DataError(
                f"video {name!r}: the extraction manifest records {frames} frames but {ann.where} "
                f"gives {ann.frames}; is it the same video?"
            )
        frames = ann.frames
    return frames


def _segment_counts(names, lengths, frames, files, mode: str, part: str,
                    require_frames: bool = True, compressed_counts: frozenset = frozenset()):
    """Per video: frames-per-segment array (None = 16 each, or unknown when
    ``require_frames`` is False and a compressed video has no frame count) and
    the compressed segment counts.

    ``auto``: a video whose row count is neither clip count of its known frame
    count is compressed; all such videos must share one count ``M``, and every
    video with ``M`` rows (or a count in ``compressed_counts``, decided by the
    other part) is then compressed too: a 505-frame video compressed to 32
    segments has ``ceil(505 / 16) = 32`` rows by coincidence.
    """
    lengths = [int(m) for m in lengths]
    if mode == "sultani":
        compressed = set(lengths)
    elif mode == "clips":
        compressed = set()
    else:
        seen: dict[int, str] = {}
        for name, m, f in zip(names, lengths, frames):
            if f is not None and not _clip_rows_ok(m, f):
                seen.setdefault(m, name)
        if len(seen) > 1:
            (m1, n1), (m2, n2) = list(seen.items())[:2]
            raise DataError(
                f"{part} videos {n1!r} ({m1} segments) and {n2!r} ({m2} segments) match neither their "
                "16-frame clip counts nor one fixed segment count; pass --segment-frames clips or "
                "sultani to say how the features were made"
            )
        compressed = set(seen) | set(compressed_counts)
    out: list[np.ndarray | None] = []
    for name, m, f, file in zip(names, lengths, frames, files):
        if m not in compressed:
            if f is not None and not _clip_rows_ok(m, f):
                raise DataError(
                    f"video {name!r} (file {file}): {m} segments but the video has {f} frames = "
                    f"{f // FRAMES_PER_SEGMENT} full 16-frame clips; features compressed to a fixed "
                    "number of segments? pass segment_frames='sultani' (--segment-frames sultani)"
                )
            out.append(None)
            continue
        if f is None and not require_frames:
            out.append(None)
            continue
        if f is None:
            raise DataError(
                f"video {name!r} (file {file}): compressed segments map to frames through the "
                "video's frame count, which nothing records: give an annotation file with frame "
                "counts (name frames class s1 e1 ...) or the extraction manifest"
            )
        out.append(sultani_segment_frames(m, f, name))
    return out, compressed if mode != "clips" else set()


def _open(names, files, part, crops, layout, nonfinite, manifest, dataset):
    expected = None
    if manifest:  # -1: unknown (resolve_layout skips such videos)
        expected = np.asarray([manifest[n].segments if n in manifest and manifest[n].segments
                               is not None else -1 for n in names], np.int64)
    return NpyFilesSource(
        files, names, dataset, part, table_index=np.arange(len(names)), crops=crops,
        nonfinite=nonfinite, layout=layout, expected_lengths=expected,
    )


def custom_dataset(
    features_dir: str | Path,
    *,
    annotations: str | Path | Sequence[str | Path] = (),
    train_list: str | Path | None = None,
    test_list: str | Path | None = None,
    test_features_dir: str | Path | None = None,
    transductive: bool = False,
    crops: str = "keep",
    layout: str = "auto",
    segment_frames: str = "auto",
    annotation_format: str = "auto",
    annotation_convention: str = "auto",
    nonfinite: str = "error",
    name: str = "custom",
) -> CustomDataset:
    """Builds a dataset from a features folder, video lists and annotations.

    Args:
      features_dir: folder of feature files (any layout of
        :func:`scan_features`), searched recursively; the extractor's
        ``manifest.json`` files there give each video's frame count.
      annotations: one or several annotation files
        (:func:`clapjax.data.read_annotations`); they must cover every test video.
      train_list, test_list: video lists (:func:`read_video_list`).
      test_features_dir: a separate folder of test features (default:
        ``features_dir``).
      transductive: train on every video of ``features_dir``, test videos
        included (unlabelled; e.g. a handful of CCTV clips).
      crops: ``"keep"`` or ``"mean"``.
      layout: axis order of 3-D files (``"auto"``, ``"segments_first"``,
        ``"crops_first"``); auto decides from the manifest's segment counts.
      segment_frames: ``"auto"``, ``"clips"`` (one row per 16-frame clip) or
        ``"sultani"`` (fixed-count compressed segments); see the module docstring.
      annotation_format, annotation_convention: passed to ``read_annotations``.
      nonfinite: ``"error"`` or ``"drop"`` (training features only).
      name: the dataset's name (tables, messages, run directories).

    Raises:
      DataError: naming the file, video and field of any inconsistency.
    """
    if segment_frames not in SEGMENT_FRAME_MODES:
        raise ValueError(f"segment_frames must be one of {SEGMENT_FRAME_MODES}, got {segment_frames!r}")
    features_dir = Path(features_dir)
    test_dir = Path(test_features_dir) if test_features_dir is not None else None
    ann_paths = [annotations] if isinstance(annotations, (str, Path)) else list(annotations)
    if not ann_paths:
        raise DataError(
            "a custom dataset needs annotations of its test videos (--annotations FILE: Sultani's "
            "'name class s1 e1 s2 e2' text format or UCSD's .mat)"
        )
    ann = merge_annotations([read_annotations(p, annotation_format, annotation_convention) for p in ann_paths])
    notes: list[str] = []
    all_feats = scan_features(features_dir)
    test_feats = scan_features(test_dir) if test_dir is not None else all_feats
    manifest = _manifest_of(features_dir)
    test_manifest = _manifest_of(test_dir) if test_dir is not None else manifest

    # -- which videos
    if test_list is not None:
        test_names = read_video_list(test_list)
        missing = [n for n in test_names if n not in test_feats]
        if missing:
            raise DataError(
                f"test video {missing[0]!r} ({test_list}) has no feature file under "
                f"{test_dir or features_dir}" + (f" ({len(missing)} such videos)" if len(missing) > 1 else "")
            )
    elif test_dir is not None:
        test_names = list(test_feats)
    else:
        resolved = ann.resolve(all_feats)
        test_names = [n for n in all_feats if n in resolved]
        if not test_names:
            raise DataError(
                f"no video under {features_dir} is annotated in {ann.source}; name the test videos "
                "with --test-list (or --test-features-dir)"
            )
        lacking = len(ann) - len(test_names)
        if lacking:
            notes.append(f"{lacking} annotated videos have no features and are not tested")
    by_test = ann.resolve(test_names)
    unannotated = [n for n in test_names if n not in by_test]
    if unannotated:
        raise DataError(
            f"test video {unannotated[0]!r} (file {test_feats[unannotated[0]][0]}) has no annotation "
            f"in {ann.source}" + (f" ({len(unannotated)} such videos)" if len(unannotated) > 1 else "")
            + "; every test video needs its anomaly intervals (normal videos: -1 -1)"
        )
    if train_list is not None:
        train_names = read_video_list(train_list)
        missing = [n for n in train_names if n not in all_feats]
        if missing:
            raise DataError(
                f"training video {missing[0]!r} ({train_list}) has no feature file under {features_dir}"
                + (f" ({len(missing)} such videos)" if len(missing) > 1 else "")
            )
    elif transductive:
        train_names = list(all_feats)
    else:
        test_set = set(test_names) if test_dir is None else set()
        train_names = [n for n in all_feats if n not in test_set]
        if not train_names:
            raise DataError(
                f"every video under {features_dir} is a test video, so none is left for training; "
                "pass --train-list FILE, or --transductive to train (unlabelled) on the test videos"
            )
    overlap = sorted(set(train_names) & set(test_names))
    if overlap:
        notes.append(
            f"transductive: {len(overlap)} of {len(test_names)} test videos are also training videos "
            "(unlabelled; CLAP never reads labels in training)"
        )

    # -- features (headers only)
    train = _open(train_names, [all_feats[n] for n in train_names], "train", crops, layout,
                  nonfinite, manifest, name)
    test = _open(test_names, [test_feats[n] for n in test_names], "test", crops, layout,
                 "error", test_manifest, name)
    check_compatible(train, test)

    # -- test table
    test_frames = [_frames_known(n, test_manifest, by_test[n], int(m), test_feats[n][0])
                   for n, m in zip(test_names, test.lengths)]
    test_counts, compressed = _segment_counts(
        test_names, test.lengths, test_frames, [test_feats[n][0] for n in test_names], segment_frames, "test")
    if compressed:
        notes.append(
            f"{sum(c is not None for c in test_counts)} test videos hold {sorted(compressed)} "
            "compressed segments; they map to frames through their clips (Sultani's rule)")
    for n, a in by_test.items():
        if a.anomalous and not a.intervals:
            raise DataError(
                f"test video {n!r}: {a.where} marks it anomalous (class {a.label!r}) but gives no "
                "anomaly interval; its frame ground truth would be all normal"
            )
    test_table = _make_table(name, "test", test_names, test.lengths, by_test, test_frames,
                             test_counts, ann, labels_known=True, frame_truth=True)
    from clapjax.data.groundtruth import video_frame_labels

    with warnings.catch_warnings():  # errors now; notes once, when the ground truth is built
        warnings.simplefilter("ignore", UserWarning)
        for t in range(len(test_table)):  # every interval checked against its video
            video_frame_labels(test_table, t)

    # -- train table
    by_train = ann.resolve(train_names)
    known = len(by_train) == len(train_names)
    if by_train and not known:
        notes.append(
            f"{len(by_train)} of {len(train_names)} training videos are annotated; training labels "
            "are treated as unknown (no VPL accuracy, no weak supervision)")
    # nonfinite="drop" shortens videos, so rows no longer map to the video's frames:
    # their frame counts are then treated as unknown (no true segment labels).
    train_frames = ([None] * len(train_names) if nonfinite == "drop" else
                    [_frames_known(n, manifest, by_train.get(n), int(m), all_feats[n][0])
                     for n, m in zip(train_names, train.lengths)])
    train_counts, train_comp = _segment_counts(
        train_names, train.lengths, train_frames, [all_feats[n][0] for n in train_names],
        segment_frames, "train", require_frames=False, compressed_counts=frozenset(compressed))
    # Training videos of a compressed segment count whose frame count is unknown
    # cannot be mapped to frames: their true segment labels stay unknown.
    unmappable = [n for n, m, f in zip(train_names, train.lengths.tolist(), train_frames)
                  if f is None and (m in compressed | train_comp or segment_frames == "sultani")]
    frame_truth = known and not unmappable and all(
        a.intervals or not a.anomalous for a in by_train.values())
    if known and unmappable:
        notes.append(
            f"{len(unmappable)} training videos look compressed but no frame count is recorded; "
            "true segment labels unknown (video labels known)")
    train_table = _make_table(name, "train", train_names, train.lengths, by_train, train_frames,
                              train_counts, ann, labels_known=known, frame_truth=frame_truth)
    train.table, test.table = train_table, test_table
    return CustomDataset(train_table, test_table, train, test, ann, tuple(notes))


def _make_table(name, part, names, lengths, by_name, frames, counts, ann: Annotations,
                labels_known: bool, frame_truth: bool) -> tables.VideoTable:
    n = len(names)
    lengths = np.asarray(lengths, np.int64)
    anomalous = np.asarray([bool(by_name[v].anomalous) if v in by_name else False for v in names], bool)
    classes = tuple(by_name[v].label if v in by_name else "" for v in names)
    intervals = tuple(by_name[v].intervals if v in by_name else () for v in names)
    n_frames = np.asarray(
        [int(c.sum()) if c is not None else FRAMES_PER_SEGMENT * int(m) for c, m in zip(counts, lengths)],
        np.int64)
    video_frames = np.asarray([-1 if f is None else int(f) for f in frames], np.int64)
    return tables.VideoTable(
        dataset=name, part=part, names=tuple(names), classes=classes,
        anomalous=anomalous if labels_known else np.zeros(n, bool),
        n_segments=lengths, n_frames=n_frames, anomaly_frames=intervals,
        source=f"{name} {part} videos (annotations {ann.source})",
        labels_known=labels_known, interval_convention=ann.convention,
        video_frames=video_frames,
        segment_frames=None if all(c is None for c in counts) else tuple(counts),
        frame_truth=frame_truth,
    )

