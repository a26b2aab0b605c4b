"""Step-count groups of the vmap backend: optimal padded work, and no change to the numbers."""

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from clapjax.engine import Engine, TrainOptions
from clapjax.engine.data import step_groups
from tests.test_engine_backends import MO, leaves_equal, tiny_data


def _partitions(items):
    """Every set partition of ``items`` (lists of blocks)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]
        yield [[first]] + part


def _work(steps, groups):
    return sum(len(g) * max(max(steps[i] for i in g), 1) for g in groups)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=6), st.integers(1, 4))
def test_step_groups_against_brute_force(steps, max_groups):
    steps = np.array(steps)
    groups = step_groups(steps, max_groups, min_overhead=1.0)
    assert sorted(np.concatenate(groups).tolist()) == list(range(steps.size))
    assert 1 <= len(groups) <= max_groups
    parts = [p for p in _partitions(list(range(steps.size))) if len(p) <= max_groups]
    best = min(_work(steps, p) for p in parts)
    got = _work(steps, [g.tolist() for g in groups])
    assert got <= 1.1 * best
    # No partition with fewer groups is within the tolerance.
    assert all(_work(steps, p) > 1.1 * best for p in parts if len(p) < len(groups))
    # Largest step counts first.
    maxima = [steps[g].max() for g in groups]
    assert maxima == sorted(maxima, reverse=True)


def test_nearly_balanced_participants_stay_in_one_group():
    assert len(step_groups(np.array([10, 9, 8, 7]), 4)) == 1          # 40 / 34 < 1.5
    assert len(step_groups(np.array([30, 9, 8, 7]), 4)) == 2          # 120 / 54 > 1.5
    assert len(step_groups(np.array([30, 9, 8, 7]), 4, min_overhead=3.0)) == 1


def test_grouped_vmap_equals_one_padded_call():
    data = tiny_data()
    states = []
    for groups in (1, 4):
        opts = TrainOptions(rounds=1, batch_size=16, local_epochs=2, vmap_groups=groups, plr_start_round=None)
        engine = Engine(data, MO, opts)
        assert len(engine.groups) == (1 if groups == 1 else 3)
        states.append(engine.run())
    assert leaves_equal(states[0], states[1])
    assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])


def test_adaptive_groups_keep_serviceable_splits_and_split_very_ragged_ones():
    from clapjax import splits
    from clapjax.engine.data import adaptive_step_groups, group_work, steps_per_epoch

    # Every official split is grouped exactly as with the plain cap.
    for ds, kinds in splits.available().items():
        for kind, k in kinds:
            steps = steps_per_epoch(splits.load(ds, kind, k).segment_counts(), 128)
            plain = step_groups(steps, 4)
            assert [g.tolist() for g in adaptive_step_groups(steps, 4)] == [g.tolist() for g in plain]
    # A random split of UCF-Crime into 500 pads to 1.84x with 4 groups; more groups bring it under 1.5x.
    steps = steps_per_epoch(splits.random_split("ucf", 500).segment_counts(), 128)
    assert group_work(steps, step_groups(steps, 4)) > 1.8 * steps.sum()
    groups = adaptive_step_groups(steps, 4, max_overhead=1.5)
    assert 4 < len(groups) <= 64 and group_work(steps, groups) <= 1.5 * steps.sum()
    assert sorted(np.concatenate(groups).tolist()) == list(range(500))
    assert len(adaptive_step_groups(steps, 4, max_overhead=1.5, limit=4)) == 4


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=40), st.integers(1, 8),
       st.floats(1.0, 3.0))
def test_adaptive_groups_bound_the_padding_when_the_limit_allows(steps, max_groups, max_overhead):
    from clapjax.engine.data import adaptive_step_groups, group_work

    steps = np.array(steps)
    groups = adaptive_step_groups(steps, max_groups, max_overhead, limit=64)
    assert sorted(np.concatenate(groups).tolist()) == list(range(steps.size))
    real = max(int(steps.sum()), 1)
    usual = step_groups(steps, max_groups)
    # Splits the usual cap serves keep its grouping (a zero-step participant counts as one
    # step, so the usual grouping may miss the bound even with few groups: then more are tried).
    if group_work(steps, usual) <= max_overhead * real or max_groups == 1:
        assert [g.tolist() for g in groups] == [g.tolist() for g in usual]
    # Padding beyond the bound remains only once the cap is exhausted (K groups allowed).
    if group_work(steps, groups) > max_overhead * real and max_groups > 1:
        full = step_groups(steps, steps.size)
        assert [g.tolist() for g in groups] == [g.tolist() for g in full]
