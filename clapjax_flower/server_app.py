"""The Flower ServerApp: the null-mixture step, T rounds of aggregation, evaluation.

It waits for K SuperNodes, asks each for its null summary, sends the mixture
with the first round, and runs ``rounds`` rounds of the engine's aggregation.
After every round it evaluates the global model on the test set and appends a
line to ``metrics.jsonl`` of the run directory; at the end it writes
``summary.json``, ``test_scores.npy`` and ``deploy_status.json`` (also on failure).
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import jax
import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from clapjax import data as data_lib
from clapjax.report import rundir
from clapjax_flower import codec, wire
from clapjax_flower.config import DeployConfig, from_run_config, open_test_source, resolve
from clapjax_flower.coordinator import Coordinator, Update, round_record, write_checkpoint
from clapjax_flower.launch import STATUS_FILE

app = ServerApp()
#: The final global model, one array per leaf named by its tree path.
FINAL_PARAMS_FILE = "final_params.npz"


def _log(text: str) -> None:
    print(f"[clapjax server] {text}", flush=True)


def _wait_for_nodes(grid: Grid, k: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= k:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {k} SuperNodes connected within {timeout:.0f} s")
        time.sleep(0.2)


def _run(grid: Grid, context: Context, cfg: DeployConfig, run_dir: Path) -> dict:
    t_start = time.perf_counter()
    resolved = resolve(cfg)
    k = resolved.split.num_participants
    record = resolved.record(cfg)
    record["deployment"] = dict(runtime="flower", flwr_version=_flwr_version())
    record["environment"] = rundir.environment()
    run = rundir.prepare(run_dir, record, overwrite=True)
    if run.resumed:
        run.truncate_metrics(0)  # a Flower run cannot resume: start the metrics afresh
    log_path = run_dir / "wire" / "server.jsonl"
    log_path.unlink(missing_ok=True)

    test_source = open_test_source(cfg)
    coordinator = Coordinator(cfg, resolved, test_source, data_lib.frame_ground_truth(test_source))
    nodes = _wait_for_nodes(grid, k, cfg.round_timeout)
    if len(nodes) != k:
        raise RuntimeError(f"{len(nodes)} SuperNodes are connected but the split has {k} participants")
    _log(f"{k} participants connected; asking for null summaries")

    # Phase 1: null summaries -> mixture.
    request = ConfigRecord({"num-participants": k})
    msgs = [Message(RecordDict({"request": request}), dst_node_id=n, message_type="query.summary", group_id="summary")
            for n in nodes]
    replies = wire.exchange(grid, msgs, cfg.round_timeout, log_path)
    partition_of = {n: int(r.content["node"]["partition-id"]) for n, r in replies.items()}
    if sorted(partition_of.values()) != list(range(k)):
        raise RuntimeError(f"SuperNodes report partition ids {sorted(partition_of.values())}, expected 0..{k - 1}")
    node_of = {p: n for n, p in partition_of.items()}
    names = {n: f"participant {p} ({resolved.split.participant_names[p]})" for n, p in partition_of.items()}
    nulls = [codec.record_to_null(replies[node_of[p]].content["null"], names[node_of[p]]) for p in range(k)]
    mixture_records = [codec.mixture_to_record(m) for m in coordinator.mixtures(nulls)]
    rundir.write_json(run_dir / "mixture.json", [{f: list(v) for f, v in r.items()} for r in mixture_records])
    _log(f"null mixture of {k} summaries built ({time.perf_counter() - t_start:.1f} s)")

    # Phase 2: rounds.
    metrics_all: list[dict] = []

    def finish_round(r: int, updates: list, info: dict, t0: float) -> dict:
        """Evaluation, metrics line, checkpoint and progress line of round ``r``."""
        metrics, scores = coordinator.evaluate()
        entries = wire.read_log(log_path)
        up = wire.bytes_by_node(entries, "train", "up")
        down = wire.bytes_by_node(entries, "train", "down")
        group = {f"round-{r}", str(r + 1)}  # our group ids, or the legacy workflow's
        per_node = lambda table, n: sum(v for (node, g), v in table.items() if node == n and g in group)  # noqa: E731
        record_r = round_record(r, metrics, updates, time.perf_counter() - t0,
                                [per_node(up, node_of[p]) for p in range(k)],
                                [per_node(down, node_of[p]) for p in range(k)], info)
        run.append_metrics(record_r)
        metrics_all.append(record_r)
        write_checkpoint(run_dir, r + 1, coordinator.state)
        np.save(run_dir / rundir.TEST_SCORES_FILE, scores)
        _log(f"round {r + 1}/{resolved.train.rounds}: auc {metrics['auc']:.4f} ap {metrics['ap_sklearn']:.4f} "
             f"loss {record_r['train_loss']:.4f} ({record_r['seconds']:.1f} s)")
        return metrics

    scaffold = resolved.train.aggregator == "scaffold"
    if cfg.secagg:
        from clapjax_flower import secagg

        clock = {"t0": time.perf_counter()}

        def on_round(r, updates, info):
            metrics = finish_round(r, updates, info, clock["t0"])
            clock["t0"] = time.perf_counter()
            return metrics

        mixture_dict = {f: list(v) for f, v in mixture_records[0].items()}
        secagg.run_rounds(grid, context, cfg, coordinator, mixture_dict, k, log_path, on_round)
    for r in range(0 if cfg.secagg else resolved.train.rounds):
        t0 = time.perf_counter()
        content = {"global": codec.tree_to_record(coordinator.params), "round": ConfigRecord({"round": r})}
        if scaffold:
            content["server-control"] = codec.tree_to_record(coordinator.state.control)
        msgs = [Message(RecordDict({**content, "mixture": mixture_records[p]}), dst_node_id=node_of[p],
                        message_type="train", group_id=f"round-{r}") for p in range(k)]
        replies = wire.exchange(grid, msgs, cfg.round_timeout, log_path, names)
        shapes = jax.eval_shape(lambda: coordinator.params)
        updates = []
        for p in range(k):
            reply = replies[node_of[p]].content
            m = reply["train"]
            updates.append(Update(
                delta=codec.record_to_tree(reply["delta"], shapes, f"{names[node_of[p]]} delta"),
                control_delta=(codec.record_to_tree(reply["control-delta"], shapes, f"{names[node_of[p]]} control delta")
                               if scaffold else ()),
                num_segments=int(m["num-segments"]), steps=int(m["steps"]), mean_loss=float(m["mean-loss"]),
                labels_changed=int(m["labels-changed"]),
            ))
        info = coordinator.aggregate(updates)
        finish_round(r, updates, info, t0)

    wall = time.perf_counter() - t_start
    summary = rundir.best_and_final(metrics_all)
    upload = [b for m in metrics_all for b in m["upload_bytes"]]
    download = [b for m in metrics_all for b in m["download_bytes"]]
    summary["deployment"] = dict(
        runtime="flower", participants=k, wall_time_s=wall,
        upload_bytes_per_participant_round=wire.median(upload),
        download_bytes_per_participant_round=wire.median(download),
        summary_upload_bytes=wire.median(v for key, v in wire.bytes_by_node(
            wire.read_log(log_path), "query.summary", "up").items()),
    )
    run.write_summary(summary)
    np.savez(run_dir / FINAL_PARAMS_FILE, **dict(zip(codec.leaf_names(coordinator.params),
                                                     map(np.asarray, jax.tree.leaves(coordinator.params)))))
    return summary


def _flwr_version() -> str:
    import flwr

    return flwr.__version__


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = from_run_config(context.run_config)
    if not cfg.run_dir:
        raise ValueError("run config 'run-dir' is empty: pass --run-config \"run-dir='/path/to/run'\"")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    status: dict = dict(status="failed", error="the ServerApp stopped before finishing")
    try:
        summary = _run(grid, context, cfg, run_dir)
        status = dict(status="completed", summary=summary)
    except Exception as err:
        status = dict(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        _log(f"FAILED: {type(err).__name__}: {err}")
        raise
    finally:
        tmp = run_dir / (STATUS_FILE + ".tmp")
        tmp.write_text(json.dumps(rundir.to_jsonable(status), indent=2))
        tmp.replace(run_dir / STATUS_FILE)
