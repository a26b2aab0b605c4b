"""The Flower app's pieces without the runtime: codec, config, DP, exchange, and
the participant/server protocol run in one process against the engine.

Needs the ``flower`` extra (skipped otherwise).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402

from clapjax import data as data_lib  # noqa: E402
from clapjax.null_model import Mixture, NullGaussian  # noqa: E402
from clapjax_flower import codec, wire  # noqa: E402
from clapjax_flower.config import ConfigError, DeployConfig, from_run_config, open_test_source, open_train_source, resolve  # noqa: E402
from clapjax_flower.coordinator import Coordinator, Update, clip_and_noise  # noqa: E402
from clapjax_flower.inprocess import run_inprocess  # noqa: E402
from clapjax_flower.launch import node_config_string, run_config_toml  # noqa: E402
from clapjax_flower.participant import LocalTrainer, initial_labels, load_participant, summarise  # noqa: E402

TINY = DeployConfig(participants=3, generate_split=True, preset="tiny", videos_per_participant=2, rounds=2)


def test_run_config_round_trip_and_errors():
    cfg = TINY.replace(aggregator="scaffold", pl=json.dumps({"beta": 0.1}), dp_clip=0.0, run_dir="/x")
    assert from_run_config(cfg.to_run_config()) == cfg
    # The launcher's TOML file parses back to the same values (JSON strings included).
    import tomllib

    assert from_run_config(tomllib.loads(run_config_toml(cfg.to_run_config()))) == cfg
    with pytest.raises(ConfigError, match="unknown run-config key 'bogus'"):
        from_run_config({"bogus": 1})
    with pytest.raises(ConfigError, match="aggregator"):
        DeployConfig(aggregator="fedsgd")
    with pytest.raises(ConfigError, match="scaffold"):
        DeployConfig(aggregator="scaffold", dp_clip=1.0)
    with pytest.raises(ConfigError, match="secagg with aggregator='scaffold'"):
        resolve(TINY.replace(aggregator="scaffold", secagg=True))
    with pytest.raises(ConfigError, match="secagg needs train.weighting='uniform'"):
        resolve(TINY.replace(secagg=True, variant="reference"))
    with pytest.raises(ConfigError, match="unknown field"):
        resolve(TINY.replace(pl=json.dumps({"no_such_option": 1})))
    assert node_config_string({"partition-id": 2, "state-dir": "/a b"}) == 'partition-id=2 state-dir="/a b"'


def test_tree_record_round_trip_checks_names_and_shapes():
    tree = {"params": {"dense": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
                                 "bias": np.ones(3, np.float32)}}}
    rec = codec.tree_to_record(tree)
    assert sorted(rec.keys()) == ["params/dense/bias", "params/dense/kernel"]
    back = codec.record_to_tree(rec, tree, "test")
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(tree)):
        np.testing.assert_array_equal(a, b)
    wrong = {"params": {"dense": {"kernel": np.zeros((3, 2), np.float32), "bias": np.ones(3, np.float32)}}}
    with pytest.raises(ValueError, match="params/dense/kernel.*expected"):
        codec.record_to_tree(codec.tree_to_record(wrong), tree, "test")
    with pytest.raises(ValueError, match="missing arrays"):
        codec.record_to_tree(codec.tree_to_record({"params": {"dense": {"bias": np.ones(3, np.float32)}}}), tree, "t")


def test_summary_records_are_exact():
    null = NullGaussian(np.float32(3.1415927), np.float32(0.123456789), np.int32(77))
    back = codec.record_to_null(codec.null_to_record(null), "p0")
    assert (back.mean, back.var, back.count) == (null.mean, null.var, null.count)
    mix = Mixture(jnp.asarray([0.25, 0.75], jnp.float32), jnp.asarray([1.1, 2.2], jnp.float32),
                  jnp.asarray([0.3, 0.4], jnp.float32))
    back = codec.record_to_mixture(codec.mixture_to_record(mix))
    for f in Mixture._fields:
        np.testing.assert_array_equal(np.asarray(getattr(back, f)), np.asarray(getattr(mix, f)))
    with pytest.raises(ValueError, match="p3: invalid null"):
        codec.record_to_null(MetricRecord({"mean": 1.0, "var": -1.0, "count": 3}), "p3")


def test_clip_and_noise_matches_numpy_reference():
    rng = np.random.default_rng(0)
    deltas = [{"w": rng.normal(size=(4, 3)).astype(np.float32) * s} for s in (0.1, 1.0, 10.0)]
    weights = np.array([0.2, 0.3, 0.5], np.float32)
    clipped, noise, norms = clip_and_noise(deltas, weights, clip=1.0, noise_multiplier=2.0, key=jax.random.key(0))
    for d, c, n in zip(deltas, clipped, norms):
        ref = d["w"] * min(1.0, 1.0 / np.linalg.norm(d["w"]))
        np.testing.assert_allclose(np.asarray(c["w"]), ref, rtol=1e-6)
        assert n == pytest.approx(np.linalg.norm(d["w"]), rel=1e-6)
        assert np.linalg.norm(np.asarray(c["w"])) <= 1.0 + 1e-6
    # Noise std = z · clip · max weight (the sensitivity of the weighted mean).
    _, noise, _ = clip_and_noise([{"w": np.zeros((200, 200), np.float32)}] * 3, weights, 1.0, 2.0, jax.random.key(1))
    assert float(np.std(np.asarray(noise["w"]))) == pytest.approx(2.0 * 1.0 * 0.5, rel=0.02)


class _SilentGrid:
    """A Grid whose participants never answer."""

    def __init__(self):
        self.pushed = []

    def push_messages(self, messages):
        self.pushed.extend(messages)
        return [f"id-{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        return []


@pytest.fixture
def task_identity(monkeypatch):
    """The identity a ServerApp process has (Flower needs it to build messages)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


def test_exchange_times_out_naming_the_silent_participant(tmp_path, task_identity):
    msgs = [Message(RecordDict({"request": ConfigRecord({"num-participants": 2})}), dst_node_id=n,
                    message_type="query.summary") for n in (11, 12)]
    t0 = time.monotonic()
    with pytest.raises(wire.ExchangeError, match="participant 1 .*no reply|no reply.*participant 1"):
        wire.exchange(_SilentGrid(), msgs, timeout=0.3, log_path=tmp_path / "w.jsonl",
                      names={11: "participant 0", 12: "participant 1"})
    assert time.monotonic() - t0 < 5
    logged = wire.read_log(tmp_path / "w.jsonl")
    assert [e["direction"] for e in logged] == ["down", "down"]
    assert logged[0]["records"][0]["entries"][0]["key"] == "num-participants"


def _simulate(cfg: DeployConfig):
    """The ClientApp/ServerApp protocol in one process (no transport)."""
    res = resolve(cfg)
    pl = res.pseudo_labels
    test = open_test_source(cfg)
    co = Coordinator(cfg, res, test, data_lib.frame_ground_truth(test))
    datas, sums = [], []
    for k, v in enumerate(res.split.participants):
        d = load_participant(open_train_source(cfg, np.asarray(v)), res.split, k)
        datas.append(d)
        sums.append(summarise(d, pl))
    mixtures = co.mixtures([s.null for s in sums])
    labels = [initial_labels(s, d, m, pl) for s, d, m in zip(sums, datas, mixtures)]
    trainers = [LocalTrainer(d, k, s.video_labels, res.model, res.train, pl) for k, (d, s) in enumerate(zip(datas, sums))]
    scaffold = res.train.aggregator == "scaffold"
    controls = [jax.tree.map(jnp.zeros_like, co.params) if scaffold else () for _ in datas]
    for r in range(res.train.rounds):
        updates = []
        for k, tr in enumerate(trainers):
            out = tr.run_round(co.params, labels[k], controls[k], co.state.control, r)
            labels[k], controls[k] = out.labels, out.control
            updates.append(Update(out.delta, out.control_delta, datas[k].features.shape[0], out.steps,
                                  out.mean_loss, out.labels_changed))
        co.aggregate(updates)
    return co.params


# SCAFFOLD exercises everything FedAvg does plus the control variates; FedAvg
# also runs through the real runtime in test_flower_deploy.py (slow).
@pytest.mark.parametrize("aggregator", [pytest.param("fedavg", marks=pytest.mark.slow), "scaffold"])
def test_protocol_matches_in_process_engine(aggregator):
    # Two rounds so that PLR (from round 1) and the participant-side state
    # (labels, SCAFFOLD c_i) carried between rounds are exercised.
    cfg = TINY.replace(aggregator=aggregator)
    ours = _simulate(cfg)
    ref = run_inprocess(cfg, evaluate=False)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_coordinator_dp_clips_each_delta_and_adds_noise_once():
    cfg = TINY.replace(dp_clip=0.5, dp_noise=0.0)
    res = resolve(cfg)
    test = open_test_source(cfg)
    rng = np.random.default_rng(1)

    def updates(co):
        return [Update(jax.tree.map(lambda p: (rng.normal(size=p.shape) * s).astype(np.float32), co.params),
                       (), 100 + k, 1, 0.5, 0) for k, s in enumerate((1e-4, 1e-2, 1.0))]

    co = Coordinator(cfg, res, test, np.zeros(0))
    theta = jax.tree.map(np.asarray, co.params)
    ups = updates(co)
    info = co.aggregate(ups)
    # numpy reference: uniform mean of the deltas clipped to L2 norm 0.5, server lr 1.
    norms = [np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in jax.tree.leaves(u.delta))) for u in ups]
    scales = [min(1.0, 0.5 / n) for n in norms]
    expected = jax.tree.map(lambda t, *ds: t + res.train.server_lr * sum(s * d for s, d in zip(scales, ds)) / 3,
                            theta, *[u.delta for u in ups])
    for a, b in zip(jax.tree.leaves(co.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-7)
    assert info["dp_clipped"] == 2 and info["dp_delta_norms"] == pytest.approx(norms, rel=1e-5)
    # With noise, the step differs from the noise-free one by z·C/K in std.
    noisy = Coordinator(cfg.replace(dp_noise=3.0), res, test, np.zeros(0))
    quiet = Coordinator(cfg, res, test, np.zeros(0))
    ups = updates(noisy)
    noisy.aggregate(ups)
    quiet.aggregate(ups)
    diff = np.concatenate([np.ravel(np.asarray(a) - np.asarray(b))
                           for a, b in zip(jax.tree.leaves(noisy.params), jax.tree.leaves(quiet.params))])
    assert float(np.std(diff)) == pytest.approx(3.0 * 0.5 / 3 * res.train.server_lr, rel=0.05)


def test_federation_stops_every_process_on_sigterm(tmp_path):
    """SIGTERM (or Ctrl-C) inside the launcher stops the SuperLink and SuperNodes
    with their whole process groups."""
    import os
    import signal

    from clapjax_flower.launch import LocalFederation, live_group_members

    before = signal.getsignal(signal.SIGTERM)
    fed = LocalFederation(2, workdir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with fed:
            assert fed.superlink.alive() and all(n.alive() for n in fed.supernodes)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # interrupted by the signal handler
    for proc in [fed.superlink, *fed.supernodes]:
        assert proc.popen.poll() is not None, proc.name
        assert live_group_members(proc.pid) == [], proc.name
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back
