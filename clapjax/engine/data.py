"""Federated data from ONE shared packed feature array, and per-round batch plans.

Participants never get their own copy of the features: each owns a list of row
indices into the shared ``[S, C, D]`` array. A round's batches are padded index
arrays ``[K, T, B]``; the device gathers ``B`` rows per step, so memory stays
O(features + K·T·B indices), never ``[K, max_segments, D]``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import numpy as np

from clapjax import packed
from clapjax.packed import Layout


@dataclasses.dataclass(frozen=True, eq=False)
class FederatedData:
    """Participants as row sets of a shared feature array.

    Attributes:
      features: ``[S, C, D] float32`` np.ndarray, np.memmap or a host row
        store (see :func:`is_row_store`; streaming only), shared and read-only.
      labels: ``[S] float32`` initial segment (pseudo-)labels.
      participants: K arrays of row indices (int64) into ``features``; the
        order is the participant's training (split) order.
      layouts: optional K packed layouts describing each participant's rows as
        videos (row ``j`` of participant k is packed position ``j``); needed for PLR.
      video_labels: optional K ``[N_k] bool`` video pseudo-labels (PLR).
      names: participant names.
    """

    features: np.ndarray
    labels: np.ndarray
    participants: tuple[np.ndarray, ...]
    layouts: tuple[Layout, ...] | None = None
    video_labels: tuple[np.ndarray, ...] | None = None
    names: tuple[str, ...] = ()

    @property
    def num_participants(self) -> int:
        return len(self.participants)

    @property
    def counts(self) -> np.ndarray:
        """``[K] int64`` segments per participant."""
        return np.array([p.size for p in self.participants], np.int64)

    @property
    def crops(self) -> int:
        return int(self.features.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[2])


def is_row_store(features) -> bool:
    """True for a host row store: not an ndarray, but ``shape``, ``dtype`` and
    ``store[rows]`` / ``store[a:b]`` returning ndarrays (e.g.
    :class:`clapjax.data.store.PackedFeatures`, which reads rows from files).
    The engine reads such features only in streaming mode."""
    return (not isinstance(features, np.ndarray) and hasattr(features, "__getitem__")
            and hasattr(features, "shape") and hasattr(features, "dtype"))


def federated_data(
    features: np.ndarray,
    labels: np.ndarray,
    participants: Sequence[np.ndarray],
    layouts: Sequence[Layout] | None = None,
    video_labels: Sequence[np.ndarray] | None = None,
    names: Sequence[str] | None = None,
) -> FederatedData:
    """Validates and bundles federated inputs (no feature copy).

    Args:
      features: ``[S, C, D]`` or ``[S, D]`` float32 (a 2-D array is viewed as C = 1),
        or a host row store such as :class:`clapjax.data.store.PackedFeatures`
        (``[S, C, D]``; streaming only).
      labels: ``[S]`` values in [0, 1].
      participants: K int arrays of rows in ``[0, S)``.
      layouts / video_labels: per participant, both or neither.
      names: K names (default ``participant_<k>``).
    """
    if not isinstance(features, np.ndarray) and not is_row_store(features):
        raise TypeError(f"features must be a numpy array, memmap or row store (shape, dtype, "
                        f"store[rows]), got {type(features).__name__}")
    if isinstance(features, np.ndarray) and features.ndim == 2:
        features = features.reshape(features.shape[0], 1, features.shape[1])
    if len(features.shape) != 3:
        raise ValueError(f"features must have shape [S, C, D] or [S, D], got {features.shape}")
    if features.dtype != np.float32:
        raise ValueError(f"features must be float32 (got {features.dtype}); convert once before training")
    s = features.shape[0]
    labels = np.asarray(labels, np.float32)
    if labels.shape != (s,):
        raise ValueError(f"labels must have shape ({s},) to match features, got {labels.shape}")
    if not np.isfinite(labels).all() or labels.min(initial=0) < 0 or labels.max(initial=0) > 1:
        raise ValueError("labels must be finite and in [0, 1]")
    if len(participants) == 0:
        raise ValueError("at least one participant is needed")
    names = tuple(names) if names is not None else tuple(f"participant_{k}" for k in range(len(participants)))
    if len(names) != len(participants):
        raise ValueError(f"{len(names)} names for {len(participants)} participants")
    rows = []
    for k, idx in enumerate(participants):
        idx = np.asarray(idx)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"participant {names[k]}: row indices must be a 1-D int array, got {idx.dtype} {idx.shape}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= s):
            raise ValueError(f"participant {names[k]}: row index out of range [0, {s}) (min {idx.min()}, max {idx.max()})")
        rows.append(idx)
    if (layouts is None) != (video_labels is None):
        raise ValueError("layouts and video_labels must be given together (both are needed for PLR)")
    if layouts is not None:
        if len(layouts) != len(rows) or len(video_labels) != len(rows):
            raise ValueError(f"need one layout and one video-label array per participant ({len(rows)})")
        vls = []
        for k, (lay, vl, idx) in enumerate(zip(layouts, video_labels, rows)):
            real = int(np.asarray(lay.lengths).sum())
            if real != idx.size:
                raise ValueError(f"participant {names[k]}: layout covers {real} segments but it owns {idx.size} rows")
            vl = np.asarray(vl).astype(bool)
            n_real = int(np.count_nonzero(np.asarray(lay.lengths) > 0))
            if vl.ndim != 1 or vl.size < n_real or vl.size > lay.num_videos:
                raise ValueError(f"participant {names[k]}: video_labels has {vl.size} entries for {lay.num_videos} videos")
            vls.append(vl)
        layouts, video_labels = tuple(layouts), tuple(vls)
    return FederatedData(features, labels, tuple(rows), layouts, video_labels, names)


def centralize(data: FederatedData) -> FederatedData:
    """One participant holding every participant's rows (in participant order)."""
    rows = np.concatenate(data.participants) if data.participants else np.zeros(0, np.int64)
    layouts = video_labels = None
    if data.layouts is not None:
        lengths, vls = [], []
        for lay, vl in zip(data.layouts, data.video_labels):
            ln = np.asarray(lay.lengths)
            lengths.append(ln)
            vls.append(np.pad(vl, (0, ln.size - vl.size)))
        lengths = np.concatenate(lengths)
        keep = lengths > 0
        layouts = (packed.layout_from_lengths(lengths[keep]),)
        video_labels = (np.concatenate(vls)[keep],)
    return FederatedData(data.features, data.labels, (rows,), layouts, video_labels, ("centralized",))


def aligned_array(shape: tuple[int, ...], dtype=np.float32, alignment: int = 64) -> np.ndarray:
    """An uninitialised array whose buffer is ``alignment``-byte aligned.

    On CPU, ``jax.device_put`` of a 64-byte aligned (or memory-mapped) float32
    array aliases the host buffer instead of copying it, so the engine's
    in-memory path holds the features once.
    """
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = np.empty(n + alignment, np.uint8)
    offset = (-buf.ctypes.data) % alignment
    return buf[offset : offset + n].view(dtype).reshape(shape)


def steps_per_epoch(counts: np.ndarray, batch_size: int) -> np.ndarray:
    """``[K]`` ceil(n_k / B); the last partial batch is masked, not dropped."""
    return -(-np.asarray(counts, np.int64) // batch_size)


class BatchPlan(NamedTuple):
    """One round's batches for all participants (host arrays).

    Attributes:
      rows: ``[K, T, B] int32`` rows of the shared feature array (0 where masked).
      positions: ``[K, T, B] int32`` participant-local positions (label lookup).
      row_mask: ``[K, T, B] bool`` real rows.
      step_valid: ``[K, T] bool`` False for padding steps (state left unchanged).
    """

    rows: np.ndarray
    positions: np.ndarray
    row_mask: np.ndarray
    step_valid: np.ndarray


def plan_steps(counts: np.ndarray, batch_size: int, epochs: int) -> int:
    """Steps T of the longest participant (the common scan length) under the
    default :class:`SegmentSampler`."""
    return max(1, int(steps_per_epoch(counts, batch_size).max(initial=0)) * epochs)


@dataclasses.dataclass(frozen=True)
class SegmentSampler:
    """Batches of ``batch_size`` segments: every epoch visits all of a
    participant's rows once, in a fresh permutation (``rng``) or in split
    order; the last partial batch is masked, not dropped (CLAP, C2FPL).

    Implements :class:`clapjax.engine.method.BatchSampler`.
    """

    batch_size: int

    @property
    def rows_per_step(self) -> int:
        return self.batch_size

    def steps_per_epoch(self, count: int, lengths=None, video_labels=None) -> int:
        return int(-(-int(count) // self.batch_size))

    def epoch(self, count: int, lengths, video_labels, rng: np.random.Generator | None):
        n, b = int(count), self.batch_size
        spe = self.steps_per_epoch(n)
        order = rng.permutation(n) if rng is not None else np.arange(n)
        positions = np.zeros(spe * b, np.int64)
        positions[:n] = order
        mask = np.zeros(spe * b, bool)
        mask[:n] = True
        return positions.reshape(spe, b), mask.reshape(spe, b)


@dataclasses.dataclass(frozen=True)
class ConsecutiveSampler:
    """Batches of ``batch_size`` temporally consecutive segments (GCL, CLAWS).

    A participant's rows, in split (video) order, are cut into runs of
    ``batch_size`` consecutive rows; every epoch visits every run once, in a
    fresh random order of runs (``rng``) or in order. With ``within_videos``
    a run never crosses a video boundary (each video's last run is partial
    and masked; needs the data's layouts); otherwise runs cut through the
    concatenated videos and only the participant's last run is partial.

    Implements :class:`clapjax.engine.method.BatchSampler`.
    """

    batch_size: int
    within_videos: bool = False

    @property
    def rows_per_step(self) -> int:
        return self.batch_size

    def _starts(self, count: int, lengths) -> tuple[np.ndarray, np.ndarray]:
        b = self.batch_size
        if not self.within_videos:
            starts = np.arange(0, int(count), b, dtype=np.int64)
            return starts, np.minimum(b, int(count) - starts)
        if lengths is None:
            raise ValueError("ConsecutiveSampler(within_videos=True) needs the videos' lengths (data layouts)")
        lengths = np.asarray(lengths, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        starts, sizes = [], []
        for o, m in zip(offsets, lengths):
            s = np.arange(0, int(m), b, dtype=np.int64)
            starts.append(o + s)
            sizes.append(np.minimum(b, m - s))
        if not starts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(starts), np.concatenate(sizes)

    def steps_per_epoch(self, count: int, lengths=None, video_labels=None) -> int:
        return int(self._starts(count, lengths)[0].size)

    def epoch(self, count: int, lengths, video_labels, rng: np.random.Generator | None):
        starts, sizes = self._starts(count, lengths)
        order = rng.permutation(starts.size) if rng is not None else np.arange(starts.size)
        offs = np.arange(self.batch_size, dtype=np.int64)
        positions = starts[order, None] + offs[None, :]
        mask = offs[None, :] < sizes[order, None]
        return np.where(mask, positions, 0), mask


@dataclasses.dataclass(frozen=True)
class BagSampler:
    """Steps of ``pairs`` (normal, anomalous) video pairs, each video a bag of
    ``bag_size`` consecutive rows (multiple-instance learning, Sultani et al.).

    A step's positions are ``[pairs, 2, bag_size]`` flattened (``rows_per_step
    = 2·pairs·bag_size``): pair ``i`` holds a normal video (slot 0) and an
    anomalous one (slot 1), by ``video_labels``. Every epoch pairs each video
    of the larger class once with a video of the smaller class; the smaller
    class is visited in fresh permutations, one after another, until every
    pair has its partner, so every video is in at least one pair per epoch.
    The last step's unused pairs are masked. A participant without a normal
    or without an anomalous video has no pairs: zero steps (it trains
    nothing; FedAvg still averages its unchanged model, and a driver should
    say so).

    Every video must have exactly ``bag_size`` rows (e.g. after the 32-segment
    compression, :mod:`clapjax.methods.compression`): a bag is a video.

    Implements :class:`clapjax.engine.method.BatchSampler`.
    """

    pairs: int
    bag_size: int

    def __post_init__(self):
        if int(self.pairs) < 1 or int(self.bag_size) < 1:
            raise ValueError(f"BagSampler needs pairs >= 1 and bag_size >= 1, got {self.pairs}, {self.bag_size}")

    @property
    def rows_per_step(self) -> int:
        return 2 * self.pairs * self.bag_size

    def _videos(self, count: int, lengths, video_labels) -> tuple[np.ndarray, np.ndarray]:
        if lengths is None or video_labels is None:
            raise ValueError("BagSampler needs the videos' lengths and labels (data layouts)")
        lengths = np.asarray(lengths, np.int64)
        if lengths.size and np.any(lengths != self.bag_size):
            bad = int(np.flatnonzero(lengths != self.bag_size)[0])
            raise ValueError(f"BagSampler: video {bad} has {int(lengths[bad])} segments, a bag needs exactly "
                             f"{self.bag_size} (compress the videos to {self.bag_size} segments)")
        labels = np.asarray(video_labels, bool)[: lengths.size]
        return np.flatnonzero(~labels), np.flatnonzero(labels)

    def num_pairs(self, count: int, lengths, video_labels) -> int:
        """Pairs of one epoch: the larger class's size (0 without both classes)."""
        normal, anomalous = self._videos(count, lengths, video_labels)
        if normal.size == 0 or anomalous.size == 0:
            return 0
        return int(max(normal.size, anomalous.size))

    def steps_per_epoch(self, count: int, lengths=None, video_labels=None) -> int:
        return int(-(-self.num_pairs(count, lengths, video_labels) // self.pairs))

    def epoch(self, count: int, lengths, video_labels, rng: np.random.Generator | None):
        normal, anomalous = self._videos(count, lengths, video_labels)
        n_pairs = self.num_pairs(count, lengths, video_labels)
        steps = -(-n_pairs // self.pairs)
        if n_pairs == 0:
            return np.zeros((0, self.rows_per_step), np.int64), np.zeros((0, self.rows_per_step), bool)

        def cover(videos: np.ndarray) -> np.ndarray:
            # Whole permutations one after another until n_pairs videos are drawn.
            reps = -(-n_pairs // max(videos.size, 1))
            perms = [rng.permutation(videos) if rng is not None else videos for _ in range(reps)]
            return np.concatenate(perms)[:n_pairs]

        pairs = np.zeros((steps * self.pairs, 2), np.int64)
        real = np.zeros(steps * self.pairs, bool)
        pairs[:n_pairs, 0] = cover(normal)
        pairs[:n_pairs, 1] = cover(anomalous)
        real[:n_pairs] = True
        offs = np.arange(self.bag_size, dtype=np.int64)
        positions = pairs[:, :, None] * self.bag_size + offs  # [P, 2, m]: every video has bag_size rows
        mask = np.broadcast_to(real[:, None, None], positions.shape)
        positions = np.where(mask, positions, 0)
        return positions.reshape(steps, -1), mask.reshape(steps, -1).copy()


def participant_steps(sampler, participants: Sequence[np.ndarray], layouts=None, video_labels=None) -> np.ndarray:
    """``[K] int64`` steps per epoch of every participant under ``sampler``."""
    out = np.zeros(len(participants), np.int64)
    for k, idx in enumerate(participants):
        if idx.size:
            out[k] = sampler.steps_per_epoch(idx.size, *_video_info(layouts, video_labels, k))
    return out


def _video_info(layouts, video_labels, k):
    if layouts is None:
        return None, None
    lengths = np.asarray(layouts[k].lengths, np.int64)
    real = lengths > 0
    vl = None if video_labels is None else np.asarray(video_labels[k], bool)[: int(real.sum())]
    return lengths[real], vl


def make_plan(
    participants: Sequence[np.ndarray],
    batch_size: int,
    epochs: int,
    shuffle: bool,
    seed: int,
    round_index: int,
    num_steps: int | None = None,
    num_participants: int | None = None,
    sampler=None,
    layouts: Sequence[Layout] | None = None,
    video_labels: Sequence[np.ndarray] | None = None,
) -> BatchPlan:
    """Batches of every participant for one round.

    Each epoch's batches come from ``sampler`` (default
    :class:`SegmentSampler` of ``batch_size``: all of a participant's rows
    once, in a fresh permutation per epoch if ``shuffle``, else split order);
    the permutation generator is seeded by ``(seed, round, participant,
    epoch)``. Participants are padded to ``num_steps`` with invalid steps and
    to ``num_participants`` with fully masked participants. ``layouts`` /
    ``video_labels`` are handed to samplers that batch by video.
    """
    sampler = SegmentSampler(batch_size) if sampler is None else sampler
    b = int(sampler.rows_per_step)
    k_real = len(participants)
    k = k_real if num_participants is None else num_participants
    spes = participant_steps(sampler, participants, layouts, video_labels)
    t = max(1, int(spes.max(initial=0)) * epochs) if num_steps is None else num_steps
    rows = np.zeros((k, t, b), np.int32)
    positions = np.zeros((k, t, b), np.int32)
    row_mask = np.zeros((k, t, b), bool)
    step_valid = np.zeros((k, t), bool)
    for p, idx in enumerate(participants):
        n = idx.size
        if n == 0:
            continue
        spe = int(spes[p])
        if spe * epochs > t:
            raise ValueError(f"participant {p} needs {spe * epochs} steps, plan has {t}")
        lengths, vl = _video_info(layouts, video_labels, p)
        for e in range(epochs):
            rng = np.random.default_rng([seed, round_index, p, e]) if shuffle else None
            pos, mask = sampler.epoch(n, lengths, vl, rng)
            if pos.shape != (spe, b) or mask.shape != (spe, b):
                raise ValueError(f"sampler {type(sampler).__name__} gave {pos.shape} positions for participant "
                                 f"{p}, expected {(spe, b)}")
            sl = slice(e * spe, (e + 1) * spe)
            positions[p, sl] = np.where(mask, pos, 0)
            rows[p, sl] = np.where(mask, idx[np.where(mask, pos, 0)], 0)
            row_mask[p, sl] = mask
            step_valid[p, sl] = True
    return BatchPlan(rows, positions, row_mask, step_valid)


def step_groups(steps: np.ndarray, max_groups: int, tolerance: float = 1.1,
                min_overhead: float = 1.5) -> list[np.ndarray]:
    """Groups participants of similar step counts so vmapping each group wastes little.

    The vmap backend runs every participant of a group for the group's largest
    step count; padding steps are computed and discarded. Participants sorted
    by steps are split into at most ``max_groups`` contiguous groups
    minimising the padded work ``Σ_g |g| · max_{k∈g} steps_k`` (dynamic
    programming); the fewest groups within ``tolerance`` of that minimum are
    used, since every group is one more call (and one more compilation).
    Participants stay in one group unless that group's padded work exceeds
    ``min_overhead`` times the real work (nearly balanced splits keep one call).

    Args:
      steps: ``[K]`` valid steps per participant.
      max_groups: upper bound on the number of groups (1: one group).
      tolerance: accept the fewest groups within this factor of the optimum.
      min_overhead: split only above this padded / real work of one group.
    Returns:
      index arrays (ascending participant order inside each group), largest
      step counts first; together they cover ``range(K)`` once.
    """
    steps = np.asarray(steps, np.int64)
    k = steps.size
    if k == 0:
        return []
    order = np.argsort(-steps, kind="stable")
    s = np.maximum(steps[order], 1)
    if k * s[0] <= min_overhead * s.sum():
        return [np.arange(k)]
    g_max = max(1, min(int(max_groups), k))
    inf = np.iinfo(np.int64).max // 4
    # cost[g][j]: minimal padded work of the first j sorted participants in g groups.
    cost = np.full((g_max + 1, k + 1), inf, np.int64)
    cut = np.zeros((g_max + 1, k + 1), np.int64)
    cost[0, 0] = 0
    first = np.arange(k)[None, :]       # i: the group sorted[i:j] starts here; its largest is s[i]
    end = np.arange(1, k + 1)[:, None]  # j
    for g in range(1, g_max + 1):
        prev = cost[g - 1, :k][None, :]
        cand = np.where((first < end) & (prev < inf), prev + (end - first) * s[None, :], inf)
        i_best = np.argmin(cand, axis=1)  # the first minimal i, as a loop over i with "<" keeps
        c_best = cand[np.arange(k), i_best]
        cost[g, 1:] = np.where(c_best < inf, c_best, inf)
        cut[g, 1:] = np.where(c_best < inf, i_best, 0)
    best = min(cost[g, k] for g in range(1, g_max + 1))
    g = next(g for g in range(1, g_max + 1) if cost[g, k] <= tolerance * best)
    bounds, j = [], k
    for gg in range(g, 0, -1):
        i = int(cut[gg, j])
        bounds.append((i, j))
        j = i
    return [np.sort(order[i:j]) for i, j in reversed(bounds)]


def adaptive_step_groups(steps: np.ndarray, max_groups: int, max_overhead: float = 1.5,
                         limit: int = 64) -> list[np.ndarray]:
    """:func:`step_groups` with at most ``max_groups`` groups, or more when that
    still pads the work beyond ``max_overhead``.

    Very ragged splits (many participants of widely different sizes, e.g. a
    random split of UCF-Crime into 500: 113 to 61,261 segments each) need more
    groups to keep the padded work near the real work: the cap doubles (up to
    ``limit`` and K) until the padded / real work is at most ``max_overhead``.
    Splits that ``max_groups`` groups already serve are grouped exactly as by
    ``step_groups(steps, max_groups)``, and ``max_groups=1`` always gives one group.

    Args:
      steps: ``[K]`` valid steps per participant.
      max_groups: the usual cap (``TrainOptions.vmap_groups``).
      max_overhead: padded / real work above which more groups are allowed
        (``TrainOptions.vmap_max_overhead``).
      limit: never more groups than this (each group is a call and a compilation).
    Returns:
      as :func:`step_groups`.
    """
    steps = np.asarray(steps, np.int64)
    cap = max(1, int(max_groups))
    groups = step_groups(steps, cap)
    if cap == 1:  # one call, whatever the padding (vmap_groups=1)
        return groups
    real = max(int(steps.sum()), 1)
    while group_work(steps, groups) > max_overhead * real and cap < min(limit, steps.size):
        cap = min(2 * cap, limit, steps.size)
        groups = step_groups(steps, cap)
    return groups


def group_work(steps: np.ndarray, groups: Sequence[np.ndarray]) -> int:
    """Steps computed when each group runs its largest step count (at least 1)."""
    steps = np.asarray(steps, np.int64)
    return int(sum(g.size * max(int(steps[g].max()), 1) for g in groups))


def padded_rows(participants: Sequence[np.ndarray], num_rows: int, num_participants: int) -> tuple[np.ndarray, np.ndarray]:
    """``([K, num_rows] int32 rows, [K, num_rows] bool mask)`` of each participant's rows."""
    rows = np.zeros((num_participants, num_rows), np.int32)
    mask = np.zeros((num_participants, num_rows), bool)
    for k, idx in enumerate(participants):
        rows[k, : idx.size] = idx
        mask[k, : idx.size] = True
    return rows, mask
