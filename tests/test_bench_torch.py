"""The PyTorch peer of the benchmark computes what clapjax's engine computes (same work)."""

import dataclasses

import jax
import numpy as np
import pytest

from clapjax.engine import Engine, TrainOptions, federated_data
from clapjax.model import ModelOptions, init_params
from experiments import bench_torch

reason = bench_torch.unavailable_reason()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


@pytest.mark.parametrize("network,crops", [("paper", 1), ("reference", 1), ("paper", 3)])
def test_peer_rounds_equal_clapjax_rounds_without_dropout(network, crops):
    """Same initial parameters, no dropout: two FedAvg rounds of the released code's loop
    in PyTorch and in clapjax give the same global parameters and losses (float32 rounding)."""
    rng = np.random.default_rng(0)
    s, d = 700, 24
    feats = rng.normal(size=(s, crops, d)).astype(np.float32)
    labels = (rng.random(s) < 0.3).astype(np.float32)
    # Ragged participants, one of them not contiguous (gathered rows).
    parts = [np.arange(0, 300), np.arange(300, 390), np.concatenate([np.arange(390, 500), np.arange(600, 700)]),
             np.arange(500, 600)]
    mo = dataclasses.replace(ModelOptions.preset(network), dropout_rate=0.0)
    opts = TrainOptions.preset("reference", rounds=2, batch_size=64)
    engine = Engine(federated_data(feats, labels, parts), mo, opts)
    state = engine.init()
    peer = bench_torch.TorchPeer(feats, labels, parts, mo, batch_size=64, lr=opts.lr, l2=opts.l2,
                                 weighting=opts.weighting, init_params=jax.device_get(state.server.params))
    tstate = peer.init()
    for _ in range(2):
        state, metrics = engine.run_round(state)
        tstate, losses = peer.run_round(tstate)
        np.testing.assert_allclose(losses, metrics.mean_loss, rtol=2e-5)
    ours = jax.device_get(state.server.params)
    theirs = bench_torch.params_from_torch(tstate, mo)
    assert set(ours) == set(theirs)
    for layer in ours:
        for name in ("kernel", "bias"):
            np.testing.assert_allclose(theirs[layer][name], ours[layer][name], rtol=1e-5, atol=2e-7)
            assert not np.array_equal(theirs[layer][name], np.asarray(init_params(mo, d, jax.random.key(0), crops)
                                                                      [layer][name])) or name == "bias"


@pytest.mark.parametrize("network", ["paper", "reference"])
def test_parameter_conversion_round_trips(network):
    mo = ModelOptions.preset(network)
    params = jax.device_get(init_params(mo, 16, jax.random.key(1)))
    back = bench_torch.params_from_torch(bench_torch.params_to_torch(params, mo), mo)
    for layer in params:
        for name in ("kernel", "bias"):
            np.testing.assert_array_equal(back[layer][name], params[layer][name])
    model = bench_torch.build_model(mo, 16)
    # The nn.Sequential has exactly the clapjax parameters (paper: the attention layers too).
    assert sum(p.numel() for p in model.parameters()) == sum(v.size for lay in params.values() for v in lay.values())


def test_peer_rejects_unknown_weighting():
    with pytest.raises(ValueError, match="weighting"):
        bench_torch.TorchPeer(np.zeros((4, 1, 3), np.float32), np.zeros(4, np.float32), [np.arange(4)],
                              ModelOptions(), weighting="median")
