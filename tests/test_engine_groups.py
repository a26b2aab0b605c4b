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
