"""The agreement start of PLR: masked AUC against scikit-learn, the gate, and
the engine refining only the participants the gate lets through."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from clapjax import packed
from clapjax.engine import Engine, TrainOptions, backends, federated_data
from clapjax.engine.plr_gate import agreement_gate, masked_auc
from clapjax.model import ModelOptions


_MASKED_AUC = jax.jit(masked_auc)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), levels=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_masked_auc_matches_sklearn_with_ties_and_padding(n, levels, seed):
    # Every example padded to 48 rows (one compilation); the padding rows carry large
    # random scores and labels, which the mask must ignore.
    pad = 48 - n
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, n).astype(np.float32)  # few levels: many ties
    pos = rng.random(n) < 0.4
    full_s = np.concatenate([scores, rng.normal(size=pad).astype(np.float32) * 100])
    full_p = np.concatenate([pos, rng.random(pad) < 0.5])
    mask = np.r_[np.ones(n, bool), np.zeros(pad, bool)]
    got = float(_MASKED_AUC(jnp.asarray(full_s), jnp.asarray(full_p), jnp.asarray(mask)))
    if pos.all() or not pos.any():
        assert np.isnan(got)
    else:
        assert got == pytest.approx(roc_auc_score(pos, scores), abs=1e-5)


def test_gate_refines_only_when_the_model_beats_the_magnitudes():
    labels = jnp.asarray([0, 0, 1, 1, 0, 1], jnp.float32)
    mask = jnp.ones(6, bool)
    mags = jnp.asarray([1.0, 3.0, 2.0, 5.0, 0.5, 4.0])  # AUC 8/9
    perfect = labels * 2.0
    ok, model, mag = agreement_gate(perfect, labels, mags, mask)
    assert bool(ok) and float(model) == 1.0 and float(mag) == pytest.approx(8 / 9)
    ok, _, _ = agreement_gate(mags, labels, mags, mask)  # a tie is not better
    assert not bool(ok)
    ok, model, _ = agreement_gate(perfect, jnp.zeros(6), mags, mask)  # one class: never
    assert not bool(ok) and np.isnan(float(model))


def _data():
    rng = np.random.default_rng(0)
    feats = np.abs(rng.normal(size=(80, 1, 4))).astype(np.float32) + 0.1
    parts = [np.arange(0, 40), np.arange(40, 80)]
    lays = [packed.layout_from_lengths([20, 20])] * 2
    labels = np.zeros(80, np.float32)
    # Participant 0's labels follow the magnitudes exactly (a model cannot beat them);
    # participant 1's are random, so the magnitudes rank them near chance.
    mags = np.linalg.norm(feats[:, 0], axis=1)
    labels[:40] = mags[:40] > np.median(mags[:40])
    labels[40:] = rng.random(40) < 0.5
    return federated_data(feats, labels, parts, lays, [np.array([True, True])] * 2)


def _refine(scores, labels, layout, video_labels, _):
    return (scores > jnp.median(scores)).astype(jnp.float32)


def test_engine_agreement_start_refines_only_gated_participants():
    data = _data()
    mo = ModelOptions(attention=False, hidden=(8, 4), dropout_rate=0.0)
    base = dict(batch_size=8, rounds=2, plr_start_round=0, lr=0.5)
    fixed = Engine(data, mo, TrainOptions(**base), plr_options=0, refine_fn=_refine)
    gated = Engine(data, mo, TrainOptions(**base, plr_start="agreement"), plr_options=0, refine_fn=_refine)
    s_fixed, m_fixed = fixed.run_round(fixed.init())
    s0 = gated.init()
    s_gated, m_gated = gated.run_round(s0)
    assert m_fixed.plr_participants.tolist() == [True, True]
    for k in range(2):
        before = gated.participant_labels(s0, k)
        after = gated.participant_labels(s_gated, k)
        if m_gated.plr_participants[k]:  # refined: exactly what the fixed start computes
            np.testing.assert_array_equal(after, fixed.participant_labels(s_fixed, k))
        else:
            np.testing.assert_array_equal(after, before)
            assert m_gated.labels_changed[k] == 0
    assert not m_gated.plr_participants[0]  # labels made from the magnitudes: the ranking cannot be beaten
    assert m_gated.plr_applied == bool(m_gated.plr_participants.any())
    # Refinement follows local training: the global model is the same either way.
    for a, b in zip(jax.tree.leaves(s_fixed.server.params), jax.tree.leaves(s_gated.server.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    traces = backends.TRACE_COUNTS["plr_gate"]
    gated.run_round(s_gated)
    assert backends.TRACE_COUNTS["plr_gate"] == traces  # no recompilation in round 2


def test_plr_start_is_validated():
    with pytest.raises(ValueError, match="plr_start"):
        TrainOptions(plr_start="sometimes")
