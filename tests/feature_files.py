"""Small real-layout feature folders for command-line tests.

``write_ucf_features`` writes one ``<video>.npy`` per UCF-Crime video, as the
public releases do: every train-table video (short, ``train_segments`` each)
under ``train/`` and every test-table video under ``test/`` with its real
number of segments (so the frame ground truth fits), ``D = dim`` and one crop.
About 1,900 small files, written in well under a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clapjax import tables


def write_ucf_features(folder: Path, dim: int = 4, train_segments: int = 8, seed: int = 0) -> Path:
    """Writes the folder and returns it. Anomalous videos get a raised mean."""
    rng = np.random.default_rng(seed)
    for part, sub in (("train", "train"), ("test", "test")):
        out = Path(folder) / sub
        out.mkdir(parents=True, exist_ok=True)
        table = tables.load_table("ucf", part)
        for i, name in enumerate(table.names):
            m = train_segments if part == "train" else int(table.n_segments[i])
            x = rng.standard_normal((m, dim)).astype(np.float32)
            if table.anomalous[i]:
                x[m // 3: m // 3 + max(1, m // 4)] += 2.0
            np.save(out / f"{name}.npy", x)
    return Path(folder)


def video_file(folder: Path, part: str, index: int = 0) -> Path:
    """The file of the ``index``-th video of a part (table order)."""
    return Path(folder) / part / f"{tables.load_table('ucf', part).names[index]}.npy"
