"""Secure aggregation of the deltas with Flower's SecAgg+ (run config ``secagg = true``).

With SecAgg+ the server learns only the mean of the participants' deltas,
never an individual delta. Flower implements SecAgg+ in its legacy workflow
(``DefaultWorkflow`` + ``SecAggPlusWorkflow`` on the server, ``secaggplus_mod``
on the client, ``FitIns``/``FitRes`` messages), so the training rounds run
through that workflow with :class:`ClapSecAggStrategy`; the null-summary phase
is unchanged. Per round every participant takes part in four stages (setup,
share keys, collect masked vectors, unmask) and uploads its quantised delta
masked with pairwise and private masks that cancel in the sum.

Restrictions (checked by ``clapjax_flower.config.resolve``): FedAvg or FedProx (SCAFFOLD's control
deltas would need a second secure sum), uniform weighting (Flower's SecAgg+
weights by ``num_examples``; we send 1), K >= 3. With DP (``dp_clip``) the
participants clip their own deltas (the server cannot see them) and the
server adds the noise to the securely summed mean.

Precision: each delta entry is clipped to ``[-secagg_clip, secagg_clip]`` and
quantised to ``secagg_quantization`` levels, a resolution of
``2·secagg_clip / secagg_quantization`` per entry and participant.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from clapjax_flower import codec, wire
from clapjax_flower.config import DeployConfig
from clapjax_flower.coordinator import Update


def is_secagg_message(message: Message) -> bool:
    """True for the SecAgg+ stage messages of the legacy workflow."""
    return RECORD_KEY_CONFIGS in message.content.config_records


def clip_delta(leaves: list[np.ndarray], clip: float) -> tuple[list[np.ndarray], float]:
    """Clips a delta (all leaves together) to L2 norm ``clip``; returns it and its norm before."""
    norm = float(np.sqrt(sum(float(np.sum(np.square(x, dtype=np.float64))) for x in leaves)))
    scale = min(1.0, clip / max(norm, 1e-12))
    return [(x * np.float32(scale)).astype(x.dtype) for x in leaves], norm


# ----------------------------------------------------------------- participant


def client_train(message: Message, context: Context, local_round) -> Message:
    """A SecAgg+ stage message: Flower's ``secaggplus_mod`` runs the key stages and
    masks the FitRes that :func:`_fit` returns (the plain delta never leaves)."""

    def fit(msg: Message, ctx: Context) -> Message:
        from clapjax_flower.config import from_run_config

        cfg = from_run_config(ctx.run_config)
        fitins: FitIns = compat.recorddict_to_fitins(msg.content, keep_input=True)
        leaves = parameters_to_ndarrays(fitins.parameters)
        round_index = int(fitins.config["round"])
        mixture = json.loads(str(fitins.config["mixture"]))

        def mixture_fn():
            from clapjax.null_model import Mixture
            import jax.numpy as jnp

            return Mixture(**{k: jnp.asarray(np.asarray(v, np.float32)) for k, v in mixture.items()})

        out, n = local_round(ctx, leaves, round_index, mixture_fn)
        delta = [np.asarray(x, np.float32) for x in jax.tree.leaves(out.delta)]
        norm = float("nan")
        if cfg.dp_enabled:
            delta, norm = clip_delta(delta, cfg.dp_clip)
        fitres = FitRes(
            Status(Code.OK, "ok"), ndarrays_to_parameters(delta), num_examples=1,
            metrics={"num-segments": n, "steps": out.steps, "mean-loss": out.mean_loss,
                     "labels-changed": out.labels_changed, "delta-norm": norm},
        )
        return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)

    return secaggplus_mod(message, context, fit)


# ---------------------------------------------------------------------- server


class LoggedGrid:
    """A Grid proxy that logs every message pushed and pulled (the server's wire
    log) and polls every 0.1 s instead of Flower's 3 s in ``send_and_receive``."""

    def __init__(self, grid, log_path: Path):
        self._grid, self._log = grid, log_path

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def push_messages(self, messages):
        messages = list(messages)
        wire.append(self._log, [wire.describe(m, "down", "server") for m in messages])
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids):
        replies = list(self._grid.pull_messages(message_ids))
        wire.append(self._log, [wire.describe(m, "up", "server") for m in replies])
        return replies

    def send_and_receive(self, messages, *, timeout=None):
        ids = set(self.push_messages(messages))
        out, end = [], time.monotonic() + (timeout if timeout is not None else float("inf"))
        while ids and time.monotonic() < end:
            replies = self.pull_messages(list(ids))
            out.extend(replies)
            ids.difference_update(r.metadata.reply_to_message_id for r in replies)
            if ids:
                time.sleep(0.1)
        return out


class ClapSecAggStrategy(Strategy):
    """The legacy Strategy the SecAgg+ workflow drives: hands out the global
    model with the round and mixture, applies the securely averaged delta with
    the engine's server step, evaluates after every round.

    Args:
      coordinator: server state and logic. mixture: the null mixture (JSON-able dict).
      on_round: called with ``(round_index, updates, info)`` after each evaluation.
    """

    def __init__(self, coordinator, mixture: dict, k: int, on_round):
        self.coordinator, self.mixture, self.k, self.on_round = coordinator, mixture, k, on_round
        self._pending = None

    def initialize_parameters(self, client_manager):
        return ndarrays_to_parameters([np.asarray(x) for x in jax.tree.leaves(self.coordinator.params)])

    def configure_fit(self, server_round, parameters, client_manager):
        if not client_manager.wait_for(self.k, timeout=int(self.coordinator.cfg.round_timeout)):
            raise TimeoutError(f"fewer than {self.k} SuperNodes are connected")
        clients = list(client_manager.all().values())
        config = {"round": server_round - 1, "mixture": json.dumps(self.mixture)}
        return [(c, FitIns(parameters, config)) for c in clients]

    def aggregate_fit(self, server_round, results, failures):
        if failures or len(results) != self.k:
            raise RuntimeError(
                f"SecAgg+ round {server_round}: {len(results)} of {self.k} participants returned a masked "
                f"update, {len(failures)} failed: {[str(f)[:200] for f in failures]}"
            )
        # After unmasking, every result carries the same aggregate: the mean delta.
        mean = parameters_to_ndarrays(results[0][1].parameters)
        shapes = jax.eval_shape(lambda: self.coordinator.params)
        mean_delta = codec.check_leaves([np.asarray(x, np.float32) for x in mean], shapes, "secure mean delta")
        info = self.coordinator.apply_mean_delta(mean_delta)
        updates = [Update((), (), int(r.metrics["num-segments"]), int(r.metrics["steps"]),
                          float(r.metrics["mean-loss"]), int(r.metrics["labels-changed"])) for _, r in results]
        self._pending = (server_round - 1, updates, info)
        return ndarrays_to_parameters([np.asarray(x) for x in jax.tree.leaves(self.coordinator.params)]), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        if server_round == 0 or self._pending is None:
            return None
        round_index, updates, info = self._pending
        self._pending = None
        metrics = self.on_round(round_index, updates, info)
        return 0.0, {k: float(v) for k, v in metrics.items()}


def run_rounds(grid, context: Context, cfg: DeployConfig, coordinator, mixture: dict, k: int, log_path: Path,
               on_round) -> None:
    """``rounds`` SecAgg+ rounds through Flower's legacy workflow."""
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=coordinator.opts.rounds),
                           strategy=ClapSecAggStrategy(coordinator, mixture, k, on_round))
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=1.0, reconstruction_threshold=cfg.secagg_threshold, max_weight=1.0,
        clipping_range=cfg.secagg_clip, quantization_range=cfg.secagg_quantization,
        timeout=cfg.round_timeout))
    workflow(LoggedGrid(grid, log_path), legacy)
    if coordinator.rounds_done != coordinator.opts.rounds:
        raise RuntimeError(
            f"the SecAgg+ workflow stopped after {coordinator.rounds_done} of {coordinator.opts.rounds} rounds "
            f"(a participant dropped out or the threshold was not met; see the server log)"
        )
