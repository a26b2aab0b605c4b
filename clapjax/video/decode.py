"""Video input: finding videos, decoding (PyAV) or reading frame folders, resizing, clips and crops.

Preprocessing (the convention of the I3D feature releases of the video-anomaly
literature, ``GowthamGottimukkala/I3D_Feature_Extraction_resnet``
``extract_features.py``, the extractor RTFM's README points to; DeepMind's
``kinetics-i3d`` for the pixel scale):

* every frame, RGB, is resized so that its short side is 256 pixels (aspect
  ratio kept, long side rounded; PIL Lanczos, the ``Image.ANTIALIAS`` filter
  of that extractor, which resizes to a fixed 340x256: the same size within
  one pixel for 4:3 video);
* clips are 16 consecutive frames, non-overlapping (frames ``16 i … 16 i + 15``);
  the incomplete last clip is dropped and the number of frames it held is
  recorded;
* crops are 224x224: ``1`` = centre; ``5`` = top-left, top-right, centre,
  bottom-left, bottom-right; ``10`` = those five, then the same five on the
  horizontally flipped frames (that extractor's ``oversample_data`` order);
  the centre crop starts at ``((H - 224) // 2, (W - 224) // 2)`` (16, 58 on
  256x341, as its ``16:240, 58:282``);
* pixels stay uint8 here; the network scales them to [-1, 1] (``x / 127.5 - 1``,
  :func:`clapjax.video.i3d.scale_pixels`).

Inputs: video files decoded with PyAV (any container/codec FFmpeg reads), or
folders of frame images (``jpg``/``jpeg``/``png``/``bmp``/``tif``, in natural
order of their names, as UCSD Ped2, ShanghaiTech and Avenue ship them).
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "CLIP_FRAMES",
    "CROP_MODES",
    "CROP_SIZE",
    "IMAGE_SUFFIXES",
    "SHORT_SIDE",
    "VIDEO_SUFFIXES",
    "VideoError",
    "VideoInput",
    "VideoReader",
    "crop_clip",
    "crop_names",
    "find_videos",
    "resize_short_side",
]

CLIP_FRAMES = 16
SHORT_SIDE = 256
CROP_SIZE = 224
CROP_MODES = (1, 5, 10)
#: Names of the crops of the 10-crop mode, in output order (1 crop: ``center``; 5: the first five).
CROP_NAMES_10 = ("top_left", "top_right", "center", "bottom_left", "bottom_right",
                 "flip_top_left", "flip_top_right", "flip_center", "flip_bottom_left",
                 "flip_bottom_right")
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg",
                            ".wmv", ".flv", ".ts", ".3gp"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


class VideoError(ValueError):
    """A video that cannot be used: the message starts with its file or folder."""


def crop_names(crops: int) -> tuple[str, ...]:
    """Names of the crops in output order for ``crops`` in :data:`CROP_MODES`."""
    if crops not in CROP_MODES:
        raise ValueError(f"crops must be one of {CROP_MODES}, got {crops}")
    return ("center",) if crops == 1 else CROP_NAMES_10[:crops]


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


@dataclasses.dataclass(frozen=True)
class VideoInput:
    """One video to extract.

    Attributes:
      name: output name (``<name>.npy``): the file's stem or the frame folder's name.
      path: the video file or the frame folder.
      kind: ``"file"`` (decoded with PyAV) or ``"frames"`` (a folder of images).
    """

    name: str
    path: Path
    kind: str


def _image_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: _natural_key(p.name))


def find_videos(paths: Sequence[str | Path]) -> list[VideoInput]:
    """Expands the command line's paths into videos.

    A video file is one video. A folder that directly holds image files is one
    video (its frames). Any other folder is searched recursively for video files
    and frame folders, in natural order of names.

    Raises:
      VideoError: a path that does not exist, is neither a video file nor a
        folder, a folder with no videos, or two videos with the same name.
    """
    out: list[VideoInput] = []

    def visit(path: Path, top: bool) -> None:
        if path.is_file():
            if path.suffix.lower() in VIDEO_SUFFIXES or top:
                out.append(VideoInput(path.stem, path, "file"))
            return
        if _image_files(path):
            out.append(VideoInput(path.name, path, "frames"))
            return
        for child in sorted(path.iterdir(), key=lambda p: _natural_key(p.name)):
            if child.is_dir() or child.suffix.lower() in VIDEO_SUFFIXES:
                visit(child, False)

    for p in paths:
        path = Path(p)
        if not path.exists():
            raise VideoError(f"{path}: no such file or folder")
        before = len(out)
        visit(path, True)
        if len(out) == before:
            raise VideoError(f"{path}: no video files or frame folders in it "
                             f"(videos: {', '.join(sorted(VIDEO_SUFFIXES))}; frames: "
                             f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    seen: dict[str, Path] = {}
    for v in out:
        if v.name in seen:
            raise VideoError(f"{v.path}: same output name {v.name!r} as {seen[v.name]} "
                             f"(outputs are <name>.npy in one folder; extract them separately)")
        seen[v.name] = v.path
    return out


def resize_short_side(image, short_side: int = SHORT_SIDE) -> np.ndarray:
    """PIL image -> ``[H', W', 3]`` uint8 RGB with ``min(H', W') == short_side`` (Lanczos)."""
    from PIL import Image

    w, h = image.size
    if h <= w:
        size = (max(short_side, round(w * short_side / h)), short_side)
    else:
        size = (short_side, max(short_side, round(h * short_side / w)))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image.resize(size, Image.Resampling.LANCZOS))


def crop_clip(clip: np.ndarray, crops: int, size: int = CROP_SIZE) -> np.ndarray:
    """The crops of one clip (see the module docstring for the order).

    Args:
      clip: ``[T, H, W, 3]`` uint8, ``H, W >= size``.
      crops: 1, 5 or 10.

    Returns:
      ``[crops, T, size, size, 3]`` uint8.
    """
    names = crop_names(crops)
    _, h, w, _ = clip.shape
    cy, cx = (h - size) // 2, (w - size) // 2
    corners = {"top_left": (0, 0), "top_right": (0, w - size), "center": (cy, cx),
               "bottom_left": (h - size, 0), "bottom_right": (h - size, w - size)}
    flipped = clip[:, :, ::-1] if crops == 10 else None
    out = np.empty((crops, clip.shape[0], size, size, 3), np.uint8)
    for i, name in enumerate(names):
        src = clip
        if name.startswith("flip_"):
            src, name = flipped, name[len("flip_"):]
        y, x = corners[name]
        out[i] = src[:, y:y + size, x:x + size]
    return out


@dataclasses.dataclass
class VideoReader:
    """Reads one video as 16-frame uint8 clips resized to short side 256.

    Iterate :meth:`clips`; afterwards ``frames`` (frames read), ``fps``
    (``None`` for frame folders) and ``dropped_frames`` are set.

    Raises (from :meth:`open` and :meth:`clips`):
      VideoError: unreadable or empty video, an unreadable frame image, or
        frames of different sizes.
    """

    video: VideoInput
    clip_frames: int = CLIP_FRAMES
    frames: int = 0
    fps: float | None = None
    dropped_frames: int = 0
    expected_frames: int | None = None

    def open(self) -> "VideoReader":
        """Checks that the video can be opened and estimates its frame count (cheap)."""
        if self.video.kind == "frames":
            files = _image_files(self.video.path)
            if not files:
                raise VideoError(f"{self.video.path}: no frame images in the folder")
            self.expected_frames = len(files)
            return self
        import av

        try:
            with av.open(str(self.video.path)) as container:
                if not container.streams.video:
                    raise VideoError(f"{self.video.path}: no video stream (is it a video file?)")
                stream = container.streams.video[0]
                self.expected_frames = int(stream.frames) or None
                rate = stream.average_rate or stream.guessed_rate
                self.fps = float(Fraction(rate)) if rate else None
        except av.error.FFmpegError as err:
            raise VideoError(f"{self.video.path}: cannot open the video ({_av_message(err)})") from None
        return self

    def _frames(self) -> Iterator:
        if self.video.kind == "frames":
            from PIL import Image, UnidentifiedImageError

            for f in _image_files(self.video.path):
                try:
                    with Image.open(f) as im:
                        im.load()
                        yield im
                except (OSError, UnidentifiedImageError) as err:
                    raise VideoError(f"{f}: unreadable frame image ({err})") from None
            return
        import av

        try:
            with av.open(str(self.video.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    yield frame.to_image()
        except av.error.FFmpegError as err:
            raise VideoError(f"{self.video.path}: decoding failed after {self.frames} frames "
                             f"({_av_message(err)})") from None

    def clips(self) -> Iterator[np.ndarray]:
        """Yields ``[clip_frames, H', W', 3]`` uint8 clips (short side 256) in order."""
        buf: np.ndarray | None = None
        k = 0
        for image in self._frames():
            frame = resize_short_side(image)
            if buf is None:
                buf = np.empty((self.clip_frames,) + frame.shape, np.uint8)
            elif frame.shape != buf.shape[1:]:
                raise VideoError(f"{self.video.path}: frame {self.frames} is "
                                 f"{frame.shape[1]}x{frame.shape[0]} after resizing, earlier "
                                 f"frames {buf.shape[2]}x{buf.shape[1]} (frames of different sizes)")
            buf[k] = frame
            k += 1
            self.frames += 1
            if k == self.clip_frames:
                yield buf
                buf = np.empty_like(buf)
                k = 0
        self.dropped_frames = k
        if self.frames < self.clip_frames:
            what = "no frames" if self.frames == 0 else f"only {self.frames} frames"
            raise VideoError(f"{self.video.path}: {what}, fewer than one {self.clip_frames}-frame "
                             f"clip (empty or truncated video)")


def _av_message(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)
