"""The server's side of CLAP, as the ServerApp runs it (no ``flwr`` here).

The server only ever sees participant summaries (``NullGaussian``) and
updates (parameter deltas, SCAFFOLD control deltas, segment counts). It
builds the null mixture, aggregates with the engine's
``clapjax.engine.server.aggregate`` (FedAvg / FedProx / SCAFFOLD, server
learning rate or server optimiser), optionally privatises the aggregate
(clipping + Gaussian noise), evaluates the global model on the test set and
writes the run directory (``clapjax.report.rundir``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clapjax import evaluation, model as model_lib, pipeline
from clapjax.engine import server as server_lib
from clapjax.engine.local import ClientOutput
from clapjax.engine.scoring import score_segments
from clapjax.engine.server import ServerState
from clapjax.null_model import Mixture, NullGaussian
from clapjax_flower.config import DeployConfig, Resolved

Params = Any


class Update(NamedTuple):
    """One participant's reply to a training round.

    Attributes:
      delta: ``θ_k − θ``. control_delta: ``Δc_k`` (SCAFFOLD) or ``()``.
      num_segments: ``n_k`` (aggregation weight under ``weighting="segments"``).
      steps, mean_loss, labels_changed: round metrics.
    """

    delta: Params
    control_delta: Any
    num_segments: int
    steps: int
    mean_loss: float
    labels_changed: int


def initial_params(resolved: Resolved, feature_dim: int, crops: int) -> Params:
    """The engine's initial global model (``init_params(key(seed))``)."""
    return model_lib.init_params(resolved.model, feature_dim, jax.random.key(resolved.train.seed), crops)


def param_shapes(resolved: Resolved, feature_dim: int, crops: int) -> Params:
    """Shapes/dtypes of the parameters, without computing them."""
    return jax.eval_shape(lambda k: model_lib.init_params(resolved.model, feature_dim, k, crops), jax.random.key(0))


def clip_and_noise(deltas: Sequence[Params], weights: np.ndarray, clip: float, noise_multiplier: float,
                   key: jax.Array) -> tuple[list[Params], Params, np.ndarray]:
    """Central DP of the weighted mean delta: clip each ``Δ_k`` to L2 norm ``clip``
    and draw Gaussian noise with std ``noise_multiplier · clip · max_k w_k`` (the
    sensitivity of ``Σ_k w_k Δ_k`` to one participant).

    Returns:
      (clipped deltas, noise tree, ``[K]`` pre-clipping norms). Adding the same
      noise to every clipped delta adds it once to the weighted mean (weights sum to 1).
    """
    norms = np.array([float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(d)))) for d in deltas])
    scales = np.minimum(1.0, clip / np.maximum(norms, 1e-12))
    clipped = [jax.tree.map(lambda x, s=s: x * jnp.float32(s), d) for d, s in zip(deltas, scales)]
    std = float(noise_multiplier) * float(clip) * float(np.max(weights))
    leaves, treedef = jax.tree.flatten(deltas[0])
    keys = jax.random.split(key, len(leaves))
    noise = jax.tree.unflatten(treedef, [std * jax.random.normal(k, x.shape, jnp.float32) for k, x in zip(keys, leaves)])
    return clipped, noise, norms


class Coordinator:
    """Server state and logic of one deployment run.

    Args:
      cfg, resolved: the run configuration.
      test_source: the test set FeatureSource (evaluation each round).
    """

    def __init__(self, cfg: DeployConfig, resolved: Resolved, test_source, gt: np.ndarray):
        self.cfg, self.resolved, self.opts = cfg, resolved, resolved.train
        self.k = resolved.split.num_participants
        self.test_source, self.gt = test_source, gt
        self.feature_dim, self.crops = int(test_source.feature_dim), int(test_source.crops)
        self.tx = server_lib.server_optimizer(self.opts)
        params = initial_params(resolved, self.feature_dim, self.crops)
        self.state: ServerState = server_lib.init_server(params, self.opts, self.tx)
        self.rounds_done = 0
        self._test_features = None
        self._aggregate = jax.jit(lambda s, o, c, w, cw: server_lib.aggregate(s, o, c, w, cw, self.opts, self.tx))
        self._dp_key = jax.random.key(cfg.dp_seed)

    @property
    def params(self) -> Params:
        return self.state.params

    def mixtures(self, nulls: Sequence[NullGaussian]) -> list[Mixture]:
        """The null model each participant scores against, from the K summaries
        (partition order): the server mixture G for all (CLAP), or each
        participant's own Gaussian (``null_model="local"``)."""
        return pipeline.mixtures(list(nulls), self.resolved.pseudo_labels, self.cfg.null_model)

    def aggregate(self, updates: Sequence[Update]) -> dict:
        """One server update from the K participants' replies (partition order).

        Returns:
          round metrics of the aggregation (DP norms when DP is on).
        """
        if len(updates) != self.k:
            raise ValueError(f"aggregate needs {self.k} updates, got {len(updates)}")
        counts = np.array([u.num_segments for u in updates], np.int64)
        weights = server_lib.participant_weights(counts, self.opts.weighting, self.k)
        c_weights = server_lib.control_weights(counts, self.k)
        deltas = [u.delta for u in updates]
        info: dict = {}
        if self.cfg.dp_enabled:
            self._dp_key, key = jax.random.split(self._dp_key)
            deltas, noise, norms = clip_and_noise(deltas, weights, self.cfg.dp_clip, self.cfg.dp_noise, key)
            deltas = [jax.tree.map(jnp.add, d, noise) for d in deltas]
            info.update(dp_delta_norms=norms.tolist(), dp_clipped=int(np.sum(norms > self.cfg.dp_clip)))
        theta = self.state.params
        # The engine's aggregate takes local models θ_k = θ + Δ_k and forms θ_k − θ itself.
        local_params = jax.tree.map(lambda g, *ds: jnp.stack([g + d for d in ds]), theta, *deltas)
        scaffold = self.opts.aggregator == "scaffold"
        if scaffold:
            # With c_i = 0 passed as "before", aggregate adds exactly the reported Δc_i.
            control = jax.tree.map(lambda *cs: jnp.stack(cs), *[u.control_delta for u in updates])
            before = jax.tree.map(jnp.zeros_like, control)
        else:
            control, before = (), ()
        outputs = ClientOutput(local_params, control, jnp.asarray([u.steps for u in updates]),
                               jnp.asarray([u.mean_loss for u in updates], jnp.float32))
        self.state, _ = self._aggregate(self.state, outputs, before, jnp.asarray(weights), jnp.asarray(c_weights))
        self.rounds_done += 1
        return info

    def apply_mean_delta(self, mean_delta: Params) -> dict:
        """Server step from an already averaged delta (SecAgg+ gives only the mean).

        With DP the participants clipped their deltas; the noise (std
        ``dp_noise · dp_clip / K``, the sensitivity of the uniform mean) is added here.
        """
        info: dict = {}
        if self.cfg.dp_enabled:
            self._dp_key, key = jax.random.split(self._dp_key)
            weights = np.full(self.k, 1.0 / self.k, np.float32)
            _, noise, _ = clip_and_noise([mean_delta], weights, self.cfg.dp_clip, self.cfg.dp_noise, key)
            mean_delta = jax.tree.map(jnp.add, mean_delta, noise)
            info["dp_noise_std"] = self.cfg.dp_noise * self.cfg.dp_clip / self.k
        local_params = jax.tree.map(lambda g, d: (g + d)[None], self.state.params, mean_delta)
        outputs = ClientOutput(local_params, (), jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.float32))
        one = jnp.ones((1,), jnp.float32)
        self.state, _ = self._aggregate(self.state, outputs, (), one, one)
        self.rounds_done += 1
        return info

    def test_features(self) -> np.ndarray:
        if self._test_features is None:
            feats, _ = self.test_source.read_many(np.arange(len(self.test_source)))
            self._test_features = np.ascontiguousarray(feats, np.float32)
        return self._test_features

    def evaluate(self) -> tuple[dict, np.ndarray]:
        """Frame AUC / APs of the global model on the test set, and the segment scores."""
        scores = score_segments(self.state.params, self.test_features(), self.resolved.model, self.opts.score_chunk)
        metrics = evaluation.frame_metrics(scores, self.test_source.lengths, self.gt, self.test_source.names)
        return metrics, scores


def round_record(round_index: int, metrics: dict, updates: Sequence[Update], seconds: float,
                 upload: Sequence[int], download: Sequence[int], extra: dict) -> dict:
    """One metrics.jsonl line (1-based ``round``, as ``experiments.run``)."""
    losses = [u.mean_loss for u in updates]
    return dict(
        round=round_index + 1, **metrics,
        train_loss=float(np.mean(losses)), participant_loss=losses,
        steps=[u.steps for u in updates], labels_changed=[u.labels_changed for u in updates],
        upload_bytes=list(upload), download_bytes=list(download), seconds=seconds, time=time.time(), **extra,
    )


def write_checkpoint(run_dir: Path, rounds_done: int, state: ServerState) -> None:
    """The server state after ``rounds_done`` rounds (orbax, via the engine's checkpointer)."""
    from clapjax.engine.checkpoint import RoundCheckpointer

    ckpt = RoundCheckpointer(run_dir / "checkpoints")
    try:
        ckpt.save(rounds_done, state)
    finally:
        ckpt.close()


def to_json(value):
    """Dataclasses and numpy values to JSON types (the run directory's convention)."""
    from clapjax.report.rundir import to_jsonable

    return to_jsonable(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
