"""The preflight of ``experiments.run``: sizes of the run -> access path or refusal.

Runs after the feature sources are opened (file headers only) and before
anything is read: it prints what the run will need and picks in-memory or
streaming features against ``--memory-budget`` (see :mod:`clapjax.resources`).
"""

from __future__ import annotations

import jax
import numpy as np

from clapjax import pipeline, resources
from experiments.config import ResolvedRun


def workload(resolved: ResolvedRun, train_source, test_source) -> resources.Workload:
    """The :class:`clapjax.resources.Workload` of a resolved run and its sources."""
    split, train = resolved.split, resolved.train
    order = np.concatenate([np.asarray(p, np.int64) for p in split.participants])
    lengths = np.asarray(train_source.lengths, np.int64)[pipeline._source_positions(train_source, order)]
    sizes = np.cumsum([0] + [len(p) for p in split.participants])
    counts = [int(lengths[a:b].sum()) for a, b in zip(sizes[:-1], sizes[1:])]
    crops, dim = int(train_source.crops), int(train_source.feature_dim)
    row_bytes = 4 * crops * dim
    plr = 0 if train.plr_start_round is None else max(0, train.rounds - train.plr_start_round)
    method = resolved.build_method()
    shapes = jax.eval_shape(lambda k: method.init_params(dim, crops, k), jax.random.key(0))
    params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))
    return resources.Workload(
        train_segments=int(lengths.sum()),
        test_segments=int(np.asarray(test_source.lengths, np.int64).sum()),
        crops=crops,
        feature_dim=dim,
        participants=split.num_participants,
        rounds=train.rounds,
        local_epochs=train.local_epochs,
        plr_rounds=plr,
        eval_models=split.num_participants if train.setting == "local" else 1,
        largest_participant=max(counts),
        longest_video=int(lengths.max(initial=1)),
        batch_size=train.batch_size,
        chunk_steps=train.chunk_steps,
        stream_chunk_bytes=train.stream_chunk_bytes,
        score_rows=max(1, min(train.score_chunk, train.stream_chunk_bytes // row_bytes)),
        statistics_rows=pipeline.STATISTICS_CHUNK_ROWS,
        params=params,
    )


def check(resolved: ResolvedRun, train_source, test_source) -> resources.Plan:
    """Footprint, access path and refusal of a run (nothing is read).

    Raises:
      clapjax.resources.ResourceError: the run does not fit the memory budget
        or the free disk space.
    """
    force = resolved.config.train.streaming
    footprint = resources.estimate(workload(resolved, train_source, test_source))
    return resources.plan(footprint, resolved.memory_budget, resources.free_disk(resolved.workdir),
                          force=None if force is None else ("stream" if force else "memory"))
