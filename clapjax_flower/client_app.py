"""The Flower ClientApp: one CLAP participant per SuperNode.

The SuperNode's node config chooses the participant: ``partition-id`` (its
index k in the split), ``num-partitions`` (K, checked), ``state-dir`` (its
private directory) and optionally ``features-dir`` (its own copy of the
features: only its videos are ever opened).

Message handlers (see ``clapjax_flower.codec`` for the records):

* ``query.summary``: statistics → VPL → null Gaussian; replies ``(Γ_k, Θ_k, M0_k)``.
* ``train``: (first round) labels from the mixture, then the local round and
  PLR; replies ``Δ_k`` (+ ``Δc_k``) and scalar metrics.
"""

from __future__ import annotations

import jax
import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clapjax_flower import codec, wire
from clapjax_flower.config import DeployConfig, Resolved, from_run_config, open_train_source, resolve
from clapjax_flower.coordinator import param_shapes
from clapjax_flower.participant import (
    LocalTrainer, ParticipantStore, initial_labels, load_participant, summarise,
)

app = ClientApp(mods=[wire.wire_log_mod])


def _participant(context: Context) -> tuple[DeployConfig, Resolved, int, ParticipantStore]:
    cfg = from_run_config(context.run_config)
    resolved = resolve(cfg)
    if "partition-id" not in context.node_config:
        raise ValueError("this SuperNode has no 'partition-id' in its --node-config")
    pid = int(context.node_config["partition-id"])
    k = resolved.split.num_participants
    if "num-partitions" in context.node_config and int(context.node_config["num-partitions"]) != k:
        raise ValueError(
            f"SuperNode num-partitions={context.node_config['num-partitions']} but the run's split has {k} participants"
        )
    if not 0 <= pid < k:
        raise ValueError(f"partition-id {pid} is outside the split's participants [0, {k})")
    return cfg, resolved, pid, ParticipantStore(wire.participant_dir(context))


def _data(cfg: DeployConfig, resolved: Resolved, pid: int, store: ParticipantStore, context: Context):
    videos = np.asarray(resolved.split.participants[pid], np.int64)
    features_dir = str(context.node_config.get("features-dir", ""))
    return store.load_data(
        lambda: load_participant(open_train_source(cfg, videos, features_dir), resolved.split, pid))


@app.query("summary")
def summary(message: Message, context: Context) -> Message:
    """Local statistics, VPL and null Gaussian; only the Gaussian is sent."""
    cfg, resolved, pid, store = _participant(context)
    data = _data(cfg, resolved, pid, store, context)
    result = summarise(data, resolved.pseudo_labels)
    store.save_summary(result)
    store.save_round(0, np.zeros(0, np.float32), ())
    store.write_info(dict(partition_id=pid, videos=int(data.layout.num_videos), segments=int(data.features.shape[0]),
                          pseudo_anomalous_videos=int(result.video_labels.sum())))
    content = RecordDict({
        "null": codec.null_to_record(result.null),
        "node": ConfigRecord({"partition-id": pid}),
    })
    return Message(content, reply_to=message)


def local_round(context: Context, params_leaves: list, round_index: int, mixture_fn, server_control_leaves=None):
    """Runs one local round from the global parameters.

    Args:
      params_leaves: global parameters, ``name -> array`` or a list in tree order.
      mixture_fn: returns the null mixture (read only when labels are generated).
      server_control_leaves: SCAFFOLD ``c`` in the same form (None otherwise).

    Returns:
      ``(RoundResult, num_segments)``; the participant's state is saved.
    """
    cfg, resolved, pid, store = _participant(context)
    opts = resolved.train
    data = _data(cfg, resolved, pid, store, context)
    result = store.load_summary()
    rounds_done, labels, control_leaves = store.load_round()
    if round_index != rounds_done:
        raise RuntimeError(
            f"participant {pid}: the server sent round {round_index} but this participant has completed "
            f"{rounds_done} rounds of this run (restart the run; Flower runs cannot resume)"
        )
    if labels is None or labels.size == 0:
        labels = initial_labels(result, data, mixture_fn(), resolved.pseudo_labels)
    shapes = param_shapes(resolved, int(data.features.shape[2]), int(data.features.shape[1]))
    treedef = jax.tree.structure(shapes)
    params = codec.check_leaves(params_leaves, shapes, "global model")
    scaffold = opts.aggregator == "scaffold"
    if scaffold:
        server_control = codec.check_leaves(server_control_leaves, shapes, "server control variate")
        control = (jax.tree.unflatten(treedef, control_leaves) if control_leaves
                   else jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
    else:
        server_control = control = ()
    trainer = LocalTrainer(data, pid, result.video_labels, resolved.model, opts, resolved.pseudo_labels)
    out = trainer.run_round(params, labels, control, server_control, round_index)
    store.save_round(round_index + 1, out.labels, out.control)
    return out, int(data.features.shape[0])


@app.train()
def train(message: Message, context: Context) -> Message:
    """One local round from the global model; sends only the deltas and counts.

    A message carrying SecAgg+ stage configs goes through Flower's
    ``secaggplus_mod`` instead (see ``clapjax_flower.secagg``).
    """
    from clapjax_flower import secagg

    if secagg.is_secagg_message(message):
        return secagg.client_train(message, context, local_round)
    content = message.content
    cfg, resolved, _, _ = _participant(context)
    scaffold = resolved.train.aggregator == "scaffold"
    out, n = local_round(
        context, codec.record_leaves(content["global"]), int(content["round"]["round"]),
        lambda: codec.record_to_mixture(content["mixture"]),
        codec.record_leaves(content["server-control"]) if scaffold else None,
    )
    records = {"delta": codec.tree_to_record(out.delta)}
    if scaffold:
        records["control-delta"] = codec.tree_to_record(out.control_delta)
    records["train"] = MetricRecord({
        "num-segments": n, "steps": out.steps, "mean-loss": out.mean_loss, "labels-changed": out.labels_changed,
    })
    return Message(RecordDict(records), reply_to=message)
