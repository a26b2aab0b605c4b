"""CLAP end to end as a one-way composition of the library's stages.

    data → statistics → VPL → null model → server mixture → SPL
         → rounds (+ PLR) → evaluation

Each stage is a function of the previous stages' outputs (host numpy arrays
plus the packed :class:`~clapjax.packed.Layout`), so a deployment (e.g. a
Flower client) can call the participant-side stages on its own data and the
server-side ones on the summaries it receives. ``experiments.run`` drives
these functions and adds the run directory and progress output.

Participants' videos are packed participant after participant into ONE
feature array ``[S, C, D]``; participant ``k`` owns the contiguous videos
``video_ranges[k]`` and rows ``row_ranges[k]``. That array is either held in
memory (``in_memory=True``) or a :class:`~clapjax.data.store.PackedFeatures`
that reads rows from the feature files on demand (streaming): statistics,
pseudo-labels, training rounds (``TrainOptions.streaming``) and test scoring
then read chunk by chunk and never hold all features; both give the same
numbers. Everything per video (σ, H,
VPL, windows) is computed per participant, exactly as in the federated
algorithm; only the null summaries ``(Γ_k, Θ_k, M0_k)`` cross participants.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, NamedTuple, Protocol, Sequence

import jax
import numpy as np

from clapjax import evaluation, null_model, packed, spl, statistics, vpl
from clapjax.engine import Engine, EngineState, FederatedData, aligned_array, federated_data
from clapjax.engine.options import TrainOptions
from clapjax.engine.scoring import score_segments
from clapjax.model import ModelOptions
from clapjax.options import PseudoLabelOptions
from clapjax.packed import Layout
from clapjax.splits import Split

NULL_MODELS = ("server_mixture", "local")
#: Rows per host chunk of the statistics driver. Its default (64 MiB of rows)
#: makes every video longer than D pay for a 64 MiB buffer; ~1k rows is
#: several times faster on CPU for typical video lengths (measured on the
#: default synthetic preset).
STATISTICS_CHUNK_ROWS = 1024


# ------------------------------------------------------------------ progress


class StageHandle(Protocol):
    def update(self, done: int | None = None, advance: int = 1) -> None: ...


class Progress(Protocol):
    """Anything with ``stage(name, total)`` returning a context manager
    (e.g. :class:`clapjax.report.progress.Reporter`)."""

    def stage(self, name: str, total: int | None = None) -> contextlib.AbstractContextManager: ...


class _Silent:
    def update(self, done: int | None = None, advance: int = 1) -> None:
        pass


class SilentProgress:
    """A :class:`Progress` that reports nothing."""

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[_Silent]:
        yield _Silent()


# ------------------------------------------------------------------ data


class TrainingSet(NamedTuple):
    """All participants' training videos packed participant after participant.

    Attributes:
      features: ``[S, C, D] float32``: an in-memory array, or a
        :class:`~clapjax.data.store.PackedFeatures` read on demand.
      layout: packed layout of the ``N`` videos (participant order).
      table_index: ``[N] int64`` train-table row of each packed video.
      video_names: ``[N]`` names.
      video_ranges: K ``(start, stop)`` video ranges, one per participant.
      row_ranges: K ``(start, stop)`` row ranges, one per participant.
      participant_names: K names.
      true_video_labels: ``[N] bool`` true video labels (the dataset table's), or
        None when unknown (a custom dataset with unlabelled training videos).
      true_segment_labels: ``[S] uint8`` true segment labels, or None when unknown.
    """

    features: Any
    layout: Layout
    table_index: np.ndarray
    video_names: tuple[str, ...]
    video_ranges: tuple[tuple[int, int], ...]
    row_ranges: tuple[tuple[int, int], ...]
    participant_names: tuple[str, ...]
    true_video_labels: np.ndarray
    true_segment_labels: np.ndarray | None

    @property
    def num_participants(self) -> int:
        return len(self.video_ranges)

    @property
    def lengths(self) -> np.ndarray:
        """``[N] int64`` segments per video."""
        return np.asarray(self.layout.lengths, np.int64)

    def participant_layout(self, k: int) -> Layout:
        """Participant ``k``'s own (unpadded) layout; row j = its j-th row."""
        a, b = self.video_ranges[k]
        return packed.layout_from_lengths(self.lengths[a:b])

    def participant_rows(self, k: int) -> np.ndarray:
        """``[n_k] int64`` rows of participant ``k`` in the shared array."""
        a, b = self.row_ranges[k]
        return np.arange(a, b, dtype=np.int64)

    def participant_features(self, k: int):
        """Participant ``k``'s rows ``[n_k, C, D]`` without reading them (a view)."""
        from clapjax.data.store import row_range

        return row_range(self.features, *self.row_ranges[k])

    @property
    def in_memory(self) -> bool:
        return isinstance(self.features, np.ndarray)


class EvalSet(NamedTuple):
    """Test features and frame ground truth (list order).

    Attributes:
      features: ``[S_test, C, D] float32``: in memory, or a
        :class:`~clapjax.data.store.PackedFeatures` read on demand.
      lengths: ``[N_test] int64``.
      names: ``[N_test]`` video names.
      ground_truth: ``[16 · S_test] uint8`` frame labels (``[sum(segment_frames)]``
        for compressed features).
      segment_frames: ``[S_test] int64`` frames per segment when the features
        are compressed to a fixed number of segments, else None (16 each).
    """

    features: Any
    lengths: np.ndarray
    names: tuple[str, ...]
    ground_truth: np.ndarray
    segment_frames: np.ndarray | None = None


def _source_positions(source, table_indices: np.ndarray) -> np.ndarray:
    """Source positions of train-table rows (a source may hold a subset)."""
    source_table = np.asarray(getattr(source, "table_index", np.arange(len(source.names))))
    lookup = np.full(int(max(source_table.max(initial=-1), table_indices.max(initial=-1))) + 1, -1)
    lookup[source_table[source_table >= 0]] = np.flatnonzero(source_table >= 0)
    pos = lookup[table_indices]
    if (pos < 0).any():
        missing = int(table_indices[np.flatnonzero(pos < 0)[0]])
        raise ValueError(
            f"training video {missing} of the split is not in the feature source "
            f"({len(source.names)} videos)"
        )
    return pos


def read_segment_labels(folder, names: Sequence[str], lengths: np.ndarray) -> np.ndarray:
    """User-supplied true segment labels of training videos, packed ``[S] uint8``.

    ``folder`` holds one ``<video>.npy`` per video with either ``[m_i]`` segment
    labels or ``[16 m_i]`` frame labels (a segment is anomalous iff any frame is),
    values 0/1. Errors name the video and file.
    """
    from pathlib import Path

    from clapjax.data import DataError, segment_labels_from_frames
    from clapjax.tables import FRAMES_PER_SEGMENT

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"segment label folder not found: {folder}")
    out = []
    for name, m in zip(names, np.asarray(lengths, np.int64)):
        path = folder / f"{name}.npy"
        if not path.is_file():
            raise DataError(f"video {name!r}: segment label file not found: {path}")
        values = np.load(path, allow_pickle=False).reshape(-1)
        if values.size and not np.isin(values, (0, 1)).all():
            raise DataError(f"video {name!r} (file {path}): labels must be 0 or 1")
        if values.size == FRAMES_PER_SEGMENT * m:
            values = segment_labels_from_frames(values)
        elif values.size != m:
            raise DataError(
                f"video {name!r} (file {path}): {values.size} labels, expected {int(m)} segment "
                f"labels or {FRAMES_PER_SEGMENT * int(m)} frame labels")
        out.append(values.astype(np.uint8))
    return np.concatenate(out) if out else np.zeros(0, np.uint8)


def load_training_set(source, split: Split, progress: Progress | None = None,
                      segment_labels_dir=None, *, in_memory: bool = True) -> TrainingSet:
    """Packs every participant's videos into one ``[S, C, D]`` array.

    Args:
      source: a ``clapjax.data`` train feature source.
      split: participants as train-table indices.
      progress: optional stage reporter.
      segment_labels_dir: optional folder of true segment labels (see
        :func:`read_segment_labels`); otherwise the source's own, if it knows them.
      in_memory: read all features now into one aligned array (True), or
        return a :class:`~clapjax.data.store.PackedFeatures` over the source
        that reads rows on demand (False: nothing is read here).
    """
    from clapjax.data.store import PackedFeatures

    progress = progress or SilentProgress()
    order = np.concatenate([np.asarray(p, np.int64) for p in split.participants])
    positions = _source_positions(source, order)
    lengths = np.asarray(source.lengths, np.int64)[positions]
    total = int(lengths.sum())
    video_ranges, row_ranges = [], []
    v = r = 0
    for p in split.participants:
        n = len(p)
        rows = int(lengths[v : v + n].sum())
        video_ranges.append((v, v + n))
        row_ranges.append((r, r + rows))
        v, r = v + n, r + rows
    features = PackedFeatures(source, positions)
    if in_memory:
        # 64-byte aligned: on CPU the engine then aliases this buffer instead of
        # copying it. Read straight into it (no per-participant copy).
        store = features
        features = aligned_array((total, source.crops, source.feature_dim), np.float32)
        with progress.stage("reading training features", total=split.num_participants) as st:
            for k, (ra, rb) in enumerate(row_ranges):
                store.view(ra, rb).read(out=features[ra:rb])
                st.update(k + 1)
        store.close()
    true_segments = None
    if segment_labels_dir is not None:
        true_segments = read_segment_labels(
            segment_labels_dir, [source.names[int(i)] for i in positions], lengths)
    elif getattr(source, "true_segment_labels", None) is not None:
        parts = [source.true_segment_labels(int(i)) for i in positions]
        if all(x is not None for x in parts):
            true_segments = np.concatenate(parts).astype(np.uint8)
    names = tuple(source.names[int(i)] for i in positions)
    return TrainingSet(
        features=features,
        layout=packed.layout_from_lengths(lengths),
        table_index=order,
        video_names=names,
        video_ranges=tuple(video_ranges),
        row_ranges=tuple(row_ranges),
        participant_names=tuple(split.participant_names),
        true_video_labels=(np.asarray(split.table.anomalous[order], bool)
                           if getattr(split.table, "labels_known", True) else None),
        true_segment_labels=true_segments,
    )


def load_test_set(source, ground_truth=None, gt_check: str = "error", *, in_memory: bool = True) -> EvalSet:
    """The whole test set and its frame ground truth (``clapjax.data``).

    ``ground_truth``/``gt_check``: a user's ground truth and how a
    disagreement with the annotations is handled
    (:func:`clapjax.data.frame_ground_truth`). The ground truth is read
    first, so that a bad one is refused before any feature is read.
    ``in_memory=False`` returns the features as a
    :class:`~clapjax.data.store.PackedFeatures` read at each evaluation.
    """
    from clapjax import data as data_lib
    from clapjax.data.store import PackedFeatures

    gt = data_lib.frame_ground_truth(source, ground_truth, check=gt_check)
    seg_fn = getattr(source, "segment_frames", None)
    seg_frames = None
    if seg_fn is not None:
        counts = np.concatenate([np.asarray(seg_fn(i), np.int64) for i in range(len(source.names))])
        if (counts != 16).any():
            seg_frames = counts
    features = PackedFeatures(source)
    if in_memory:
        store, features = features, features.read()
        store.close()
    return EvalSet(features, np.asarray(source.lengths, np.int64), tuple(source.names), gt, seg_frames)


# ------------------------------------------------------------------ pseudo-labels


class PseudoLabels(NamedTuple):
    """Outputs of the pseudo-labelling stages.

    Attributes:
      magnitude: ``[S] float32`` segment magnitudes ``z``.
      statistics: ``[N, 2] float32`` per-video ``[σ, H]``.
      vpl: ``[N] bool`` video pseudo-labels from the GMM.
      video_labels: ``[N] bool`` labels used downstream (VPL, or the true labels
        of weakly supervised participants).
      null_means / null_vars / null_counts: ``[K]`` participants' null summaries.
      segment_labels: ``[S] float32`` SPL (Generate) labels in {0, 1}.
      notes: K VPL diagnostics ("" when clustering was normal).
    """

    magnitude: np.ndarray
    statistics: np.ndarray
    vpl: np.ndarray
    video_labels: np.ndarray
    null_means: np.ndarray
    null_vars: np.ndarray
    null_counts: np.ndarray
    segment_labels: np.ndarray
    notes: tuple[str, ...]

    def nulls(self) -> list[null_model.NullGaussian]:
        return [null_model.NullGaussian(np.float32(m), np.float32(v), np.int32(c))
                for m, v, c in zip(self.null_means, self.null_vars, self.null_counts)]


def compute_statistics(ts: TrainingSet, opts: PseudoLabelOptions,
                       progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1 (each participant on its own videos): ``z [S]`` and ``[σ, H] [N, 2]``."""
    progress = progress or SilentProgress()
    z = np.zeros(ts.features.shape[0], np.float32)
    stats = np.zeros((ts.layout.num_videos, 2), np.float32)
    chunk_bytes = STATISTICS_CHUNK_ROWS * 4 * int(np.prod(ts.features.shape[1:]))
    with progress.stage("video statistics", total=ts.num_participants) as st:
        for k in range(ts.num_participants):
            (va, vb), (ra, rb) = ts.video_ranges[k], ts.row_ranges[k]
            out = statistics.compute_statistics(ts.participant_features(k), ts.participant_layout(k), opts,
                                                chunk_bytes=chunk_bytes)
            z[ra:rb] = out.magnitude[: rb - ra]
            stats[va:vb] = out.stats[: vb - va]
            st.update(k + 1)
    return z, stats


def weak_video_flags(ts: TrainingSet, weak_videos: np.ndarray | None) -> np.ndarray:
    """``[N] bool`` videos whose true label replaces the video pseudo-label.

    Raises:
      ValueError: not one flag per training video, or flags set on a training
        set without true video labels.
    """
    n = ts.layout.num_videos
    weak = np.zeros(n, bool) if weak_videos is None else np.asarray(weak_videos, bool)
    if weak.shape != (n,):
        raise ValueError(f"weak_videos must have one flag per video ({n}), got shape {weak.shape}")
    if weak.any() and ts.true_video_labels is None:
        raise ValueError("weak supervision needs true video labels, which these training videos lack")
    return weak


def video_labels(ts: TrainingSet, stats: np.ndarray, opts: PseudoLabelOptions,
                 weak_videos: Sequence[bool] | np.ndarray | None = None,
                 progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Stage 2: per-participant GMM VPL; weakly supervised videos use their true labels.

    Args:
      weak_videos: optional ``[N] bool``: videos whose true video label
        replaces the VPL (weak supervision; e.g. all videos of some participants).

    Returns:
      ``(vpl [N] bool, used [N] bool, notes)``.
    """
    import warnings

    progress = progress or SilentProgress()
    weak = weak_video_flags(ts, weak_videos)
    out = np.zeros(ts.layout.num_videos, bool)
    used = np.zeros_like(out)
    notes = []
    with progress.stage("video pseudo-labels (GMM)", total=ts.num_participants) as st:
        for k, (a, b) in enumerate(ts.video_ranges):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", vpl.VPLWarning)
                result = vpl.fit_video_pseudo_labels(stats[a:b], opts)
            out[a:b] = result.labels
            used[a:b] = (result.labels if ts.true_video_labels is None
                         else np.where(weak[a:b], ts.true_video_labels[a:b], result.labels))
            notes.append(result.note)
            st.update(k + 1)
    return out, used, tuple(notes)


def null_summaries(ts: TrainingSet, z: np.ndarray, labels: np.ndarray) -> list[null_model.NullGaussian]:
    """Stage 3: each participant's null Gaussian ``(Γ_k, Θ_k, M0_k)``."""
    out = []
    for k, ((va, vb), (ra, rb)) in enumerate(zip(ts.video_ranges, ts.row_ranges)):
        g = null_model.participant_null(z[ra:rb], ts.participant_layout(k), labels[va:vb])
        out.append(null_model.NullGaussian(*(np.asarray(x) for x in g)))
    return out


def mixtures(nulls: Sequence[null_model.NullGaussian], opts: PseudoLabelOptions,
             mode: str = "server_mixture") -> list[null_model.Mixture]:
    """Stage 4: the null model each participant scores against.

    ``"server_mixture"`` (CLAP): everyone gets the server mixture of all
    summaries. ``"local"`` (ablation without server knowledge): each
    participant uses its own Gaussian.
    """
    if mode not in NULL_MODELS:
        raise ValueError(f"null model {mode!r}; valid: {', '.join(NULL_MODELS)}")
    if mode == "server_mixture":
        g = null_model.server_mixture(list(nulls), opts)
        return [g] * len(nulls)
    out = []
    for k, g in enumerate(nulls):
        if int(g.count) == 0:
            raise ValueError(
                f"participant {k} has no normal-labelled segments, so it has no local null "
                f"Gaussian; the local null model needs one per participant"
            )
        out.append(null_model.server_mixture([g], opts))
    return out


def segment_labels(ts: TrainingSet, z: np.ndarray, labels: np.ndarray,
                   mixture_per_participant: Sequence[null_model.Mixture], opts: PseudoLabelOptions,
                   progress: Progress | None = None) -> np.ndarray:
    """Stage 5 (Generate): ``[S] float32`` window labels of pseudo-anomalous videos.

    Participants are padded to common sizes so the jitted Generate compiles once.
    """
    progress = progress or SilentProgress()
    k_count = ts.num_participants
    n_max = max(b - a for a, b in ts.video_ranges)
    s_max = max(b - a for a, b in ts.row_ranges)
    generate = jax.jit(spl.generate_labels, static_argnames="opts")
    out = np.zeros(ts.features.shape[0], np.float32)
    with progress.stage("segment pseudo-labels (Generate)", total=k_count) as st:
        for k in range(k_count):
            (va, vb), (ra, rb) = ts.video_ranges[k], ts.row_ranges[k]
            layout = packed.pad(ts.participant_layout(k), n_max, s_max)
            zk = np.zeros(s_max, np.float32)
            zk[: rb - ra] = z[ra:rb]
            lk = np.zeros(n_max, bool)
            lk[: vb - va] = labels[va:vb]
            res = generate(zk, layout, lk, mixture_per_participant[k], opts=opts)
            out[ra:rb] = np.asarray(res)[: rb - ra]
            st.update(k + 1)
    return out


def pseudo_label(ts: TrainingSet, opts: PseudoLabelOptions, *,
                 weak_videos: Sequence[bool] | np.ndarray | None = None,
                 null_mode: str = "server_mixture",
                 progress: Progress | None = None) -> PseudoLabels:
    """Stages 1-5: statistics → VPL → null summaries → mixture → SPL."""
    z, stats = compute_statistics(ts, opts, progress)
    vpl_labels, used, notes = video_labels(ts, stats, opts, weak_videos, progress)
    nulls = null_summaries(ts, z, used)
    mix = mixtures(nulls, opts, null_mode)
    seg = segment_labels(ts, z, used, mix, opts, progress)
    return PseudoLabels(
        magnitude=z,
        statistics=stats,
        vpl=vpl_labels,
        video_labels=used,
        null_means=np.asarray([float(g.mean) for g in nulls], np.float32),
        null_vars=np.asarray([float(g.var) for g in nulls], np.float32),
        null_counts=np.asarray([int(g.count) for g in nulls], np.int64),
        segment_labels=seg,
        notes=notes,
    )


def save_pseudo_labels(path, pl: PseudoLabels) -> None:
    """Writes pseudo-labels to an ``.npz`` (resume without recomputation)."""
    arrays = {f: np.asarray(getattr(pl, f)) for f in PseudoLabels._fields if f != "notes"}
    np.savez(path, notes=np.asarray(pl.notes, dtype=str), **arrays)


def load_pseudo_labels(path, ts: TrainingSet) -> PseudoLabels:
    """Reads :func:`save_pseudo_labels` output, checking it fits ``ts``."""
    with np.load(path, allow_pickle=False) as f:
        pl = PseudoLabels(**{k: f[k] for k in PseudoLabels._fields if k != "notes"},
                          notes=tuple(str(x) for x in f["notes"]))
    if pl.segment_labels.shape != (ts.features.shape[0],) or pl.vpl.shape != (ts.layout.num_videos,):
        raise ValueError(f"{path}: pseudo-labels do not match the training set (shape mismatch)")
    return pl


# ------------------------------------------------------------------ training


def make_federated_data(ts: TrainingSet, pl: PseudoLabels | None) -> FederatedData:
    """The engine's view: shared features, initial labels, per-participant rows/layouts.

    ``pl`` None (a method without a pseudo-labelling stage, e.g. GCL): labels
    and video labels are all 0 (unused by such a method; the layouts still
    describe the videos to its batch sampler).
    """
    labels = np.zeros(ts.features.shape[0], np.float32) if pl is None else pl.segment_labels
    videos = np.zeros(ts.layout.num_videos, bool) if pl is None else pl.video_labels
    return federated_data(
        ts.features,
        labels,
        [ts.participant_rows(k) for k in range(ts.num_participants)],
        layouts=[ts.participant_layout(k) for k in range(ts.num_participants)],
        video_labels=[videos[a:b] for a, b in ts.video_ranges],
        names=ts.participant_names,
    )


def make_engine(ts: TrainingSet, pl: PseudoLabels | None, method, train_options: TrainOptions,
                pl_options: PseudoLabelOptions | None = None, checkpoint_dir: str | None = None) -> Engine:
    """Stage 6: the federated engine over the (pseudo-labelled) training set.

    Args:
      method: a :class:`clapjax.engine.Method` (``clapjax.methods``), or a
        ``ModelOptions``: CLAP's scorer, refined by PLR with ``pl_options``
        when ``train_options.plr_start_round`` is set.
    """
    if isinstance(method, ModelOptions):
        plr = pl_options if train_options.plr_start_round is not None else None
        return Engine(make_federated_data(ts, pl), method, train_options,
                      plr_options=plr, checkpoint_dir=checkpoint_dir)
    return Engine(make_federated_data(ts, pl), method, train_options, checkpoint_dir=checkpoint_dir)


def current_labels(engine: Engine, state: EngineState) -> np.ndarray:
    """``[S] float32`` the labels every participant trains on now (after PLR)."""
    return np.concatenate([engine.participant_labels(state, k)
                           for k in range(engine.num_participants)])


# ------------------------------------------------------------------ evaluation


def evaluation_chunk_rows(engine: Engine, test: EvalSet) -> int:
    """Rows per test scoring call: ``score_chunk``, capped so one chunk stays
    under ``stream_chunk_bytes`` (the same in memory and streaming, so both
    compile and round identically)."""
    row_bytes = 4 * int(np.prod(test.features.shape[1:]))
    return max(1, min(engine.opts.score_chunk, engine.opts.stream_chunk_bytes // row_bytes))


def score_test_set(engine: Engine, state: EngineState, test: EvalSet, participant: int | None = None) -> np.ndarray:
    """``[S_test]`` eval scores of the global model (or participant ``k``'s model)."""
    params = engine.global_params(state) if participant is None else engine.participant_params(state, participant)
    return score_segments(params, test.features, engine.method, evaluation_chunk_rows(engine, test))


def evaluate(engine: Engine, state: EngineState, test: EvalSet) -> dict[str, Any]:
    """Stage 7: frame AUC and both APs of the model(s) on the test set.

    Collaborative / centralized: the global model. Local: every participant's
    model; the headline numbers are their means and ``per_participant`` lists
    each.

    Returns:
      ``dict(auc, ap_sklearn, ap_trapezoid, scores [S_test] or [K, S_test],
      per_participant (local only))``.
    """
    if engine.opts.setting != "local":
        scores = score_test_set(engine, state, test)
        m = evaluation.frame_metrics(scores, test.lengths, test.ground_truth, test.names,
                                     test.segment_frames)
        return dict(m, scores=scores, per_participant=None)
    per, all_scores = [], []
    for k in range(engine.num_participants):
        s = score_test_set(engine, state, test, k)
        per.append(evaluation.frame_metrics(s, test.lengths, test.ground_truth, test.names,
                                            test.segment_frames))
        all_scores.append(s)
    out = {key: float(np.mean([p[key] for p in per])) for key in ("auc", "ap_sklearn", "ap_trapezoid")}
    return dict(out, scores=np.stack(all_scores), per_participant=per)
