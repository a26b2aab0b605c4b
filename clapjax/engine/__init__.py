"""Federated engine: stacked participants, vmapped local training, FedAvg /
FedProx / SCAFFOLD, refinement (PLR) between rounds, orbax checkpoints; it
trains any method of the :mod:`clapjax.engine.method` interface."""

from clapjax.engine.backends import TRACE_COUNTS, Executor, stream_chunks
from clapjax.engine.checkpoint import RoundCheckpointer
from clapjax.engine.data import (
    BagSampler, BatchPlan, ConsecutiveSampler, FederatedData, SegmentSampler, aligned_array, centralize, federated_data,
    group_work, make_plan, participant_steps, step_groups)
from clapjax.engine.federated import Engine, EngineState, RoundMetrics
from clapjax.engine.local import Batch, ClientContext, ClientOutput, ClientState, client_fns, local_loss, run_steps
from clapjax.engine.method import BatchSampler, Method, Stage, as_method
from clapjax.engine.options import TrainOptions
from clapjax.engine.scoring import score_segments
from clapjax.engine.server import ServerState, aggregate, init_server, participant_weights, server_optimizer

__all__ = [
    "TRACE_COUNTS", "aligned_array", "as_method", "BagSampler", "Batch", "BatchPlan", "BatchSampler", "ClientContext",
    "ClientOutput", "ClientState", "ConsecutiveSampler", "Engine", "EngineState", "Executor", "FederatedData",
    "Method", "RoundCheckpointer", "RoundMetrics", "SegmentSampler", "ServerState", "Stage", "TrainOptions",
    "aggregate", "centralize", "client_fns", "federated_data", "group_work", "init_server", "local_loss",
    "make_plan", "participant_steps", "participant_weights", "run_steps", "score_segments", "server_optimizer",
    "step_groups", "stream_chunks",
]
