"""One participant's side of CLAP, as the ClientApp runs it (no ``flwr`` here).

A participant holds only its own videos. It

1. computes its video statistics, video pseudo-labels (VPL) and null Gaussian
   and releases only ``NullGaussian(Γ_k, Θ_k, M0_k)`` (:func:`summarise`);
2. turns the server's mixture into segment labels (:func:`initial_labels`);
3. every round, runs the engine's jitted local update from the global model,
   refines its labels with its own model (PLR) and releases only its parameter
   delta (and SCAFFOLD control-variate delta) with its segment count
   (:class:`LocalTrainer`).

Labels, video labels, magnitudes and control variates stay in the
participant's private state directory (:class:`ParticipantStore`) between
rounds: Flower runs every message in a fresh ClientApp process.

The local round reproduces ``clapjax.engine.Engine.run_round`` for one
participant: the same batch plan (seeded by ``(seed, round, partition_id,
epoch)``), the same dropout key schedule (``fold_in(fold_in(key(seed + 1),
round), partition_id)``), the same ``Executor`` and the same PLR.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clapjax import packed, pipeline, spl
from clapjax.engine import backends, data as data_lib, local, plr_gate
from clapjax.engine.local import ClientOutput
from clapjax.engine.options import TrainOptions
from clapjax.model import ModelOptions
from clapjax.null_model import Mixture, NullGaussian
from clapjax.options import PseudoLabelOptions
from clapjax.pipeline import TrainingSet
from clapjax.splits import Split

Params = Any


class Summary(NamedTuple):
    """Result of the local pseudo-labelling stages before communication.

    Attributes:
      null: what is sent: ``NullGaussian`` with scalar fields.
      video_labels: ``[N] bool`` VPL (kept private).
      z: ``[S] float32`` segment magnitudes (kept private).
    """

    null: NullGaussian
    video_labels: np.ndarray
    z: np.ndarray


def own_split(split: Split, partition_id: int) -> Split:
    """The split reduced to participant ``partition_id`` alone (what it knows)."""
    return dataclasses.replace(split, participants=(np.asarray(split.participants[partition_id], np.int64),),
                               participant_names=(split.participant_names[partition_id],))


def load_participant(source, split: Split, partition_id: int) -> TrainingSet:
    """Participant ``partition_id``'s videos as a one-participant training set
    (``clapjax.pipeline.load_training_set``; the source may hold only its videos)."""
    return pipeline.load_training_set(source, own_split(split, partition_id))


def summarise(data: TrainingSet, opts: PseudoLabelOptions) -> Summary:
    """Video statistics → VPL → null Gaussian (SPEC §2 steps 1-3), all local,
    with the stages of ``clapjax.pipeline`` (as ``experiments.run``)."""
    z, stats = pipeline.compute_statistics(data, opts)
    _, used, _ = pipeline.video_labels(data, stats, opts)
    (null,) = pipeline.null_summaries(data, z, used)
    return Summary(null, used, z)


def initial_labels(summary: Summary, data: TrainingSet, mixture: Mixture, opts: PseudoLabelOptions) -> np.ndarray:
    """``[S] float32`` segment pseudo-labels from the server mixture (Generate)."""
    return pipeline.segment_labels(data, summary.z, summary.video_labels, [mixture], opts)


class RoundResult(NamedTuple):
    """What one local round produced.

    Attributes:
      delta: ``θ_k − θ`` (released).
      control_delta: SCAFFOLD ``c_i⁺ − c_i`` (released; ``()`` otherwise).
      control: the new ``c_i`` (private). labels: ``[S]`` labels after PLR (private).
      steps, mean_loss, labels_changed: scalars (released as metrics).
    """

    delta: Params
    control_delta: Any
    control: Any
    labels: np.ndarray
    steps: int
    mean_loss: float
    labels_changed: int


def round_key(opts: TrainOptions, round_index: int, partition_id: int) -> jax.Array:
    """Participant ``partition_id``'s dropout key of a round (the engine's schedule)."""
    base = jax.random.key(opts.seed + 1, impl=opts.prng_impl)
    return jax.random.fold_in(jax.random.fold_in(base, round_index), partition_id)


class LocalTrainer:
    """The engine's local round for one participant.

    Args:
      data: the participant's data. partition_id: its index k in the split.
      video_labels: ``[N] bool`` its VPL (PLR scope).
      model_options, train_options, pl_options: configuration.
    """

    def __init__(self, data: TrainingSet, partition_id: int, video_labels: np.ndarray,
                 model_options: ModelOptions, train_options: TrainOptions, pl_options: PseudoLabelOptions):
        if train_options.backend not in ("vmap", "loop"):
            raise ValueError(f"a participant runs backend 'vmap' or 'loop', got {train_options.backend!r}")
        self.data, self.pid = data, int(partition_id)
        self.video_labels = jnp.asarray(np.asarray(video_labels, bool))
        self.model_options, self.opts, self.pl_options = model_options, train_options, pl_options
        self.num_rows = int(data.features.shape[0])
        if self.num_rows == 0:
            raise ValueError(f"participant {partition_id} has no segments")
        fns = local.client_fns(model_options, train_options)
        self.executor = backends.Executor(fns, train_options, model_options, stacked_start=False)
        self.features = self.executor.put_features(data.features)
        chunk = min(train_options.score_chunk, self.num_rows)
        n_chunks = -(-self.num_rows // chunk)
        rows, _ = data_lib.padded_rows([np.arange(self.num_rows)], n_chunks * chunk, 1)
        self.score_rows = rows.reshape(1, n_chunks, chunk)
        layout, opts = data.layout, pl_options
        self._refine = jax.jit(lambda s, y, v: jnp.where(
            layout.segment_mask, spl.refine_labels(s, y, layout, v, opts).astype(jnp.float32), 0.0))

    def plan(self, round_index: int) -> data_lib.BatchPlan:
        """This participant's batches, as the engine plans them for participant ``pid``."""
        parts = [np.zeros(0, np.int64)] * self.pid + [np.arange(self.num_rows, dtype=np.int64)]
        full = data_lib.make_plan(parts, self.opts.batch_size, self.opts.local_epochs, self.opts.shuffle,
                                  self.opts.seed, round_index)
        return data_lib.BatchPlan(*(a[self.pid : self.pid + 1] for a in full))

    def plr_active(self, round_index: int) -> bool:
        s = self.opts.plr_start_round
        return s is not None and round_index >= s

    def run_round(self, params: Params, labels: np.ndarray, control: Any, server_control: Any,
                  round_index: int) -> RoundResult:
        """Local epochs from the global ``params``, PLR (if active), deltas."""
        if labels.shape != (self.num_rows,):
            raise ValueError(f"participant {self.pid}: labels have shape {labels.shape}, expected ({self.num_rows},)")
        scaffold = self.opts.aggregator == "scaffold"
        stack = lambda tree: jax.tree.map(lambda a: jnp.asarray(a)[None], tree)  # noqa: E731
        rngs = round_key(self.opts, round_index, self.pid)[None]
        outputs: ClientOutput = self.executor.train(
            params, rngs, jnp.asarray(labels, jnp.float32)[None], stack(control) if scaffold else (),
            server_control if scaffold else (), self.plan(round_index), features_device=self.features)
        local_params = jax.tree.map(lambda a: a[0], outputs.params)
        new_labels = labels
        if self.plr_active(round_index):
            scores = self.executor.score(outputs.params, self.score_rows, self.features)[0, : self.num_rows]
            refine = True
            if self.opts.plr_start == "agreement":  # the engine's rule, on this participant's own rows
                mags = np.linalg.norm(np.asarray(self.data.features, np.float32).mean(axis=1), axis=1)
                refine = bool(plr_gate.agreement_gate(scores, jnp.asarray(labels, jnp.float32), jnp.asarray(mags),
                                                      jnp.ones(self.num_rows, bool))[0])
            if refine:
                new_labels = np.asarray(self._refine(scores, jnp.asarray(labels, jnp.float32),
                                                     self.video_labels), np.float32)
        delta = jax.tree.map(lambda a, b: np.asarray(a - b), local_params, params)
        if scaffold:
            new_control = jax.tree.map(lambda a: np.asarray(a[0]), outputs.control)
            control_delta = jax.tree.map(lambda a, b: np.asarray(a - b), new_control, control)
        else:
            new_control, control_delta = (), ()
        loss = float(np.asarray(outputs.mean_loss)[0])
        if not np.isfinite(loss):
            raise FloatingPointError(f"participant {self.pid}, round {round_index}: non-finite training loss")
        changed = int(np.sum(new_labels != labels))
        return RoundResult(delta, control_delta, new_control, new_labels, int(np.asarray(outputs.steps)[0]),
                           loss, changed)


# --------------------------------------------------------------------------- state


class ParticipantStore:
    """The participant's private state directory for one run.

    Holds the packed features cache, the summary (VPL, magnitudes), the
    current segment labels, the SCAFFOLD control variate and the number of
    completed rounds. Nothing in it is ever sent.
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    # Features cache: a participant reads its own videos once per run (memory-mapped after).
    def load_data(self, loader) -> TrainingSet:
        f, meta = self.dir / "features.npy", self.dir / "training_set.npz"
        if f.exists() and meta.exists():
            m = np.load(meta, allow_pickle=False)
            n, s = int(m["lengths"].size), int(m["lengths"].sum())
            return TrainingSet(
                features=np.load(f, mmap_mode="r"), layout=packed.layout_from_lengths(m["lengths"]),
                table_index=m["table_index"], video_names=tuple(str(x) for x in m["video_names"]),
                video_ranges=((0, n),), row_ranges=((0, s),),
                participant_names=tuple(str(x) for x in m["participant_names"]),
                true_video_labels=m["true_video_labels"],
                true_segment_labels=m["true_segment_labels"] if m["has_true_segments"] else None)
        data = loader()
        if data.num_participants != 1:
            raise ValueError(f"a participant's training set holds {data.num_participants} participants")
        _atomic_save(f, lambda p: np.save(p, np.asarray(data.features)))
        _atomic_save(meta, lambda p: np.savez(
            p, lengths=data.lengths, table_index=data.table_index, video_names=np.asarray(data.video_names, str),
            participant_names=np.asarray(data.participant_names, str), true_video_labels=data.true_video_labels,
            has_true_segments=data.true_segment_labels is not None,
            true_segment_labels=(data.true_segment_labels if data.true_segment_labels is not None
                                 else np.zeros(0, np.uint8))))
        return data

    def save_summary(self, summary: Summary) -> None:
        _atomic_save(self.dir / "summary.npz", lambda p: np.savez(
            p, video_labels=summary.video_labels, z=summary.z,
            null=np.array([summary.null.mean, summary.null.var, summary.null.count], np.float64)))

    def load_summary(self) -> Summary:
        path = self.dir / "summary.npz"
        if not path.exists():
            raise RuntimeError(
                f"{path} is missing: the server sent a training round before this participant's summary "
                f"(or the participant's state directory was cleared)"
            )
        s = np.load(path)
        mean, var, count = s["null"]
        return Summary(NullGaussian(np.float32(mean), np.float32(var), np.int32(count)),
                       s["video_labels"].astype(bool), s["z"].astype(np.float32))

    def save_round(self, rounds_done: int, labels: np.ndarray, control: Any) -> None:
        leaves = jax.tree.leaves(control)
        _atomic_save(self.dir / "state.npz", lambda p: np.savez(
            p, labels=labels, rounds_done=np.int64(rounds_done),
            **{f"control_{i}": np.asarray(x) for i, x in enumerate(leaves)}))

    def load_round(self) -> tuple[int, np.ndarray | None, list[np.ndarray]]:
        """``(rounds_done, labels or None, control leaves)``."""
        path = self.dir / "state.npz"
        if not path.exists():
            return 0, None, []
        s = np.load(path)
        leaves = [s[f"control_{i}"] for i in range(sum(k.startswith("control_") for k in s.files))]
        return int(s["rounds_done"]), s["labels"], leaves

    def write_info(self, info: dict) -> None:
        _atomic_save(self.dir / "info.json", lambda p: Path(p).write_text(json.dumps(info, indent=2)))


def _atomic_save(path: Path, write) -> None:
    # np.save / np.savez append their suffix unless the name already has it.
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    write(tmp)
    os.replace(tmp, path)
