"""Golden values of CLAP's federated training, to prove refactors bit-identical.

``python tests/golden/clap_golden.py`` computes, for every case of
:data:`CASES`, per-round losses / steps / label changes and SHA-256 digests of
the final parameters, labels and test scores, and writes them to
``clap_engine.json`` beside this file. The committed file was produced with
the engine *before* methods became pluggable (commit d274329), so
``tests/test_methods_clap.py`` checks that CLAP through the method interface
computes exactly what the engine computed before. When the synthetic
generator was recalibrated (issue 16) the file was made again the same way:
this script and the new ``clapjax/data/synthetic.py`` copied into a checkout
of d274329 (the generator produces the same features there as here), so the
comparison is still with the engine of d274329.

Only APIs that exist before and after that change are used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

if __name__ == "__main__":  # the devices of tests/conftest.py (sharded case), before JAX starts
    _flag = "--xla_force_host_platform_device_count=8"
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

GOLDEN = Path(__file__).with_name("clap_engine.json")


@dataclasses.dataclass(frozen=True)
class Case:
    """One training configuration.

    Attributes:
      name: key in the golden file.
      data: "tiny" (synthetic tiny preset, 3 participants x 2+2 videos, the
        whole pipeline) or "wide" (random features at D = 2048, the paper
        network at full width, 3 ragged participants).
      variant: train/model/pseudo-label preset.
      train: TrainOptions overrides.
    """

    name: str
    data: str
    variant: str = "paper"
    train: tuple = ()


CASES = (
    Case("tiny_fedavg_vmap", "tiny"),
    Case("tiny_fedavg_loop", "tiny", train=(("backend", "loop"),)),
    Case("tiny_fedavg_sharded", "tiny", train=(("backend", "sharded"),)),
    Case("tiny_fedavg_streaming", "tiny", train=(("streaming", True), ("chunk_steps", 2))),
    Case("tiny_fedprox", "tiny", train=(("aggregator", "fedprox"), ("mu", 0.1))),
    Case("tiny_scaffold", "tiny", train=(("aggregator", "scaffold"),)),
    Case("tiny_server_adam", "tiny", train=(("server_optimizer", "adam"), ("server_lr", 0.01))),
    Case("tiny_local", "tiny", train=(("setting", "local"),)),
    Case("tiny_centralized", "tiny", train=(("setting", "centralized"),)),
    Case("tiny_reference", "tiny", variant="reference", train=(("plr_start_round", 1),)),
    Case("tiny_adam_threefry", "tiny", train=(("optimizer", "adam"), ("lr", 0.001), ("prng_impl", "threefry2x32"))),
    Case("wide_fedavg_vmap", "wide"),
    Case("wide_fedavg_loop", "wide", train=(("backend", "loop"),)),
    Case("wide_reference_momentum", "wide", variant="reference", train=(("momentum", 0.9),)),
)


def _digest(tree) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def machine() -> dict:
    """Where the values were computed (XLA's CPU code depends on the CPU)."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = " ".join(sorted(f for f in line.split(":", 1)[1].split() if f.startswith("avx")))
                break
    except OSError:
        pass
    return {"machine": platform.machine(), "avx_flags": flags, "jax": jax.__version__,
            "devices": len(jax.devices())}


def _tiny_engine(case: Case):
    from clapjax import data, pipeline, splits
    from clapjax.engine.options import TrainOptions
    from clapjax.model import ModelOptions
    from clapjax.options import PseudoLabelOptions

    split = data.shrink_split(splits.load("ucf", "random", 5), 2)
    split = dataclasses.replace(split, participants=split.participants[:3],
                                participant_names=split.participant_names[:3])
    cfg = data.SyntheticConfig.preset("tiny")
    ts = pipeline.load_training_set(data.open_source("ucf", "train", synthetic=cfg), split)
    pl_opts = PseudoLabelOptions.preset(case.variant)
    pl = pipeline.pseudo_label(ts, pl_opts)
    opts = TrainOptions.preset(case.variant, rounds=3, batch_size=16, **dict(case.train))
    engine = pipeline.make_engine(ts, pl, ModelOptions.preset(case.variant), opts, pl_opts)
    test = data.open_source("ucf", "test", synthetic=cfg)
    test_x, _ = test.read_many(np.arange(40))
    return engine, test_x


def _wide_engine(case: Case):
    from clapjax import packed
    from clapjax.engine import Engine, federated_data
    from clapjax.engine.options import TrainOptions
    from clapjax.model import ModelOptions
    from clapjax.options import PseudoLabelOptions

    rng = np.random.default_rng(7)
    lengths = [[40, 25, 30], [70], [9, 12]]
    s = sum(map(sum, lengths))
    feats = np.abs(rng.normal(size=(s, 1, 2048))).astype(np.float32)
    labels = (rng.random(s) < 0.25).astype(np.float32)
    parts, lays, vls, start = [], [], [], 0
    for ls in lengths:
        parts.append(np.arange(start, start + sum(ls)))
        lays.append(packed.layout_from_lengths(ls))
        vls.append(np.arange(len(ls)) % 2 == 0)
        start += sum(ls)
    data = federated_data(feats, labels, parts, lays, vls)
    opts = TrainOptions.preset(case.variant, rounds=2, batch_size=32, local_epochs=2,
                               **{"plr_start_round": 1, **dict(case.train)})
    engine = Engine(data, ModelOptions.preset(case.variant), opts,
                    plr_options=PseudoLabelOptions.preset(case.variant))
    return engine, feats[:50]


def compute(case: Case) -> dict:
    """Trains ``case`` and returns its golden record."""
    from clapjax.engine.scoring import score_segments

    engine, test_x = (_tiny_engine if case.data == "tiny" else _wide_engine)(case)
    state = engine.init()
    rounds = []
    for _ in range(engine.opts.rounds):
        state, m = engine.run_round(state)
        rounds.append({"loss": [float(x).hex() for x in np.asarray(m.mean_loss, np.float32)],
                       "steps": [int(x) for x in m.steps],
                       "labels_changed": [int(x) for x in m.labels_changed]})
    if engine.opts.setting == "local":
        params = state.participant_params
        scores = [score_segments(engine.participant_params(state, k), test_x, engine.model_options)
                  for k in range(engine.num_participants)]
    else:
        params = engine.global_params(state)
        scores = score_segments(params, test_x, engine.model_options)
    return {"rounds": rounds, "params": _digest(params), "labels": _digest(state.labels),
            "server": _digest(state.server), "controls": _digest(state.client_controls),
            "test_scores": _digest(scores)}


def main(argv=None) -> int:
    out = {"machine": machine(), "cases": {c.name: compute(c) for c in CASES}}
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({len(out['cases'])} cases)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
