"""The federated engine: state, rounds (local training → refinement → aggregation), resume.

The engine trains any :class:`clapjax.engine.method.Method` (CLAP, C2FPL,
GCL, ... in :mod:`clapjax.methods`). Typical use::

    data = federated_data(features, labels, participant_rows, layouts, video_labels)
    method = clapjax.methods.Clap(ModelOptions.preset("paper"), PseudoLabelOptions())
    engine = Engine(data, method, TrainOptions(rounds=10), checkpoint_dir="run/ckpt")
    state = engine.run()                       # resumes from the latest checkpoint
    test_scores = engine.score(engine.global_params(state), test_features)

``Engine(data, model_options, train_options, plr_options=...)`` (a
``ModelOptions`` instead of a method) still means CLAP.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clapjax import packed
from clapjax.engine import backends, data as data_lib, hostmem, plr_gate, server as server_lib
from clapjax.engine.checkpoint import RoundCheckpointer
from clapjax.engine.data import FederatedData
from clapjax.engine.method import Method
from clapjax.engine.options import TrainOptions
from clapjax.engine.scoring import score_segments
from clapjax.engine.server import ServerState

RefineFn = Callable[..., jax.Array]


class EngineState(NamedTuple):
    """Everything a round needs and a checkpoint stores.

    Attributes:
      round: ``[] int32`` completed rounds.
      server: global parameters, server-optimiser state, SCAFFOLD ``c``.
      participant_params: ``[K, ...]`` per-participant models (local setting; ``()`` otherwise).
      client_controls: ``[K, ...]`` SCAFFOLD ``c_i`` (``()`` otherwise).
      labels: ``[K, N] float32`` each participant's current per-row labels
        (position ``j`` = its ``j``-th row; padding 0): the method's targets
        (pseudo-labels), refined between rounds by methods that refine.
      rng: raw key data of the base dropout key (``prng_impl``).
    """

    round: jax.Array
    server: ServerState
    participant_params: Any
    client_controls: Any
    labels: jax.Array
    rng: jax.Array


class RoundMetrics(NamedTuple):
    """Host-side summary of one round.

    Attributes:
      round: 0-based index of the round just run.
      mean_loss: ``[K] float`` mean local training loss per participant.
      steps: ``[K] int`` local steps per participant.
      upload_bytes: bytes each participant uploaded (delta, + Δc for SCAFFOLD).
      plr_applied: whether labels were refined this round (PLR: the method's refinement).
      plr_participants: ``[K] bool`` participants that refined (all of them
        under ``plr_start="round"``; the agreement gate's choice otherwise).
      labels_changed: ``[K] int`` segments whose label changed by the refinement.
      seconds: wall time of the round (incl. compilation on the first round).
    """

    round: int
    mean_loss: np.ndarray
    steps: np.ndarray
    upload_bytes: int
    plr_applied: bool
    labels_changed: np.ndarray
    seconds: float
    plr_participants: np.ndarray | None = None


class Engine:
    """Runs a method's collaborative / local / centralized training on one set of data.

    Args:
      data: participants as row sets of one shared feature array.
      method: the training method (:class:`clapjax.engine.method.Method`), or
        a ``clapjax.model.ModelOptions``: CLAP's scorer
        (:class:`clapjax.methods.clap.Clap` with ``plr_options`` / ``refine_fn``).
      train_options: configuration (``setting``, ``backend`` …).
      plr_options: with a ``ModelOptions`` only: options passed to
        ``refine_fn`` (e.g. ``clapjax.options.PseudoLabelOptions``).
      refine_fn: with a ``ModelOptions`` only: ``(scores [S], labels [S],
        layout, video_labels [N], opts) -> [S]``, jit-able; default
        ``clapjax.spl.refine_labels``.
      checkpoint_dir: if given, the state is checkpointed after every round.
      server_tx: an optax optimiser overriding ``train_options.server_optimizer``.
      devices: devices of the sharded backend (default: all local devices, or
        the first K of them when there are fewer participants than devices, so
        that no device only computes a masked stand-in participant).
    """

    def __init__(
        self,
        data: FederatedData,
        method: Any = None,
        train_options: TrainOptions = TrainOptions(),
        *,
        plr_options: Any = None,
        refine_fn: RefineFn | None = None,
        checkpoint_dir: str | None = None,
        server_tx=None,
        devices=None,
    ):
        opts = train_options
        if opts.setting == "centralized":
            data = data_lib.centralize(data)
        method = _resolve_method(method, plr_options, refine_fn)
        self.data, self.method, self.opts = data, method, opts
        #: The scorer's options of single-scorer methods (CLAP, C2FPL); None otherwise.
        self.model_options = getattr(method, "model", None)
        refine = method.refinement()
        if opts.plr_start_round is not None and data.layouts is None:
            raise ValueError("PLR is enabled (plr_start_round is set) but the data have no layouts/video_labels")
        if opts.plr_start_round is not None and refine is None:
            raise ValueError(f"PLR is enabled (plr_start_round is set) but method {method.name!r} has no "
                             "refinement: set plr_start_round=None, or give its refinement options (with a "
                             "ModelOptions: plr_options, e.g. clapjax.options.PseudoLabelOptions())")
        if data_lib.is_row_store(data.features) and not opts.streaming:
            raise ValueError(f"the features are a host row store ({type(data.features).__name__}), "
                             f"read from disk on demand; train them with streaming=True")
        if devices is None and opts.backend == "sharded" and 0 < data.num_participants < len(jax.devices()):
            devices = jax.devices()[: data.num_participants]
        self._devices = None if devices is None else tuple(devices)
        self.executor = self._executor(0)
        self.fns = self.executor.fns
        self.server_tx = server_tx if server_tx is not None else server_lib.server_optimizer(opts)
        self.sampler = method.sampler(opts)

        k = data.num_participants
        nd = self.executor.num_devices
        self.num_participants = k
        self.num_padded = -(-k // nd) * nd
        counts = data.counts
        self.num_rows = max(int(counts.max(initial=0)), 1)
        spe = data_lib.participant_steps(self.sampler, data.participants, data.layouts, data.video_labels)
        self.num_steps = max(1, int(spe.max(initial=0)) * opts.local_epochs)
        # vmap backend: groups of similar step counts (fixed: counts and epochs are).
        self.groups = data_lib.adaptive_step_groups(
            np.concatenate([spe * opts.local_epochs, np.zeros(self.num_padded - k, np.int64)]),
            opts.vmap_groups, opts.vmap_max_overhead)
        self.weights = server_lib.participant_weights(counts, opts.weighting, self.num_padded)
        self.control_weights = server_lib.control_weights(counts, self.num_padded)
        # Scoring gathers [K, chunk, C, D] at a time: keep it under stream_chunk_bytes.
        row_bytes = self.num_padded * data.crops * data.feature_dim * 4
        chunk = max(1, min(opts.score_chunk, self.num_rows, opts.stream_chunk_bytes // row_bytes))
        n_chunks = -(-self.num_rows // chunk)
        rows, _ = data_lib.padded_rows(data.participants, n_chunks * chunk, self.num_padded)
        self._score_rows = rows.reshape(self.num_padded, n_chunks, chunk)
        self._features_device = None
        self._plr_inputs = None
        self._mags = None
        self._aggregate = _aggregate_fn(backends.compile_key(opts), server_tx)
        self._refine_all = _refine_fn(refine) if refine is not None else None
        self._round_keys = functools.partial(_round_keys_fn(opts.prng_impl), num=self.num_padded)
        self.checkpointer = RoundCheckpointer(checkpoint_dir) if checkpoint_dir is not None else None

    # ------------------------------------------------------------------ state
    def init(self) -> EngineState:
        """Fresh state: initial parameters from ``seed``, zero control variates,
        labels from the data."""
        opts, d = self.opts, self.data
        params = self.method.init_params(d.feature_dim, d.crops, jax.random.key(opts.seed))
        server = server_lib.init_server(params, opts, self.server_tx)
        stack = lambda p: jax.tree.map(  # noqa: E731
            lambda x: jnp.broadcast_to(x, (self.num_padded, *x.shape)).copy(), p)
        participant_params = stack(params) if opts.setting == "local" else ()
        controls = stack(server_lib.zeros_like(params)) if opts.aggregator == "scaffold" else ()
        rows, mask = data_lib.padded_rows(d.participants, self.num_rows, self.num_padded)
        labels = np.where(mask, d.labels[rows], 0.0).astype(np.float32)
        rng = jax.random.key_data(jax.random.key(opts.seed + 1, impl=opts.prng_impl))
        ex = self.executor
        # Canonical placement, so round 2 sees the same input shardings as round 1.
        return EngineState(ex.put_rep(jnp.zeros((), jnp.int32)), ex.put_rep(server),
                           ex.put_k(participant_params), ex.put_k(controls), ex.put_k(jnp.asarray(labels)),
                           ex.put_rep(rng))

    def global_params(self, state: EngineState):
        """The server model (collaborative / centralized)."""
        return state.server.params

    def participant_params(self, state: EngineState, k: int):
        """Participant ``k``'s model: its own in the local setting, else the global one."""
        if not 0 <= k < self.num_participants:
            raise IndexError(f"participant {k} out of range [0, {self.num_participants})")
        if self.opts.setting == "local":
            return jax.tree.map(lambda a: a[k], state.participant_params)
        return state.server.params

    def participant_labels(self, state: EngineState, k: int) -> np.ndarray:
        """``[n_k] float32`` current labels of participant ``k``'s rows."""
        return np.asarray(state.labels[k, : self.data.participants[k].size])

    def score(self, params, features, batch_size: int | None = None) -> np.ndarray:
        """Eval scores of any features ``[S, C, D]`` (e.g. the test set)."""
        return score_segments(params, features, self.method, batch_size or self.opts.score_chunk)

    @functools.cached_property
    def _upload_bytes(self) -> int:
        shapes = jax.eval_shape(lambda k: self.method.init_params(
            self.data.feature_dim, self.data.crops, k), jax.random.key(0))
        return server_lib.upload_bytes(shapes, self.opts)

    def upload_bytes(self) -> int:
        """Bytes per participant per round (delta + Δc for SCAFFOLD; 0 if local)."""
        return self._upload_bytes

    # ------------------------------------------------------------------ round
    def plr_active(self, round_index: int) -> bool:
        s = self.opts.plr_start_round
        return s is not None and round_index >= s

    def _executor(self, round_index: int) -> backends.Executor:
        """The executor of a round: compiled for the round's phase and learning rate."""
        opts = self.opts
        lr = opts.round_lr(round_index)
        key = backends.compile_key(opts if lr == opts.lr else opts.replace(lr=lr))
        return backends.cached_executor(self.method.compile_key(), key, opts.setting == "local", self._devices,
                                        self.method.phase(round_index))

    def plan(self, round_index: int) -> data_lib.BatchPlan:
        """The batches of every (padded) participant in round ``round_index``."""
        opts, d = self.opts, self.data
        return data_lib.make_plan(
            d.participants, opts.batch_size, opts.local_epochs, opts.shuffle, opts.seed, round_index,
            self.num_steps, self.num_padded, sampler=self.sampler, layouts=d.layouts, video_labels=d.video_labels)

    def run_round(self, state: EngineState) -> tuple[EngineState, RoundMetrics]:
        """Local training of every participant, refinement (if active), aggregation."""
        t0 = time.perf_counter()
        traces = sum(backends.TRACE_COUNTS.values())
        opts, r = self.opts, int(state.round)
        plan = self.plan(r)
        rngs = self._round_keys(state.rng, jnp.int32(r))
        local_setting = opts.setting == "local"
        start = state.participant_params if local_setting else state.server.params
        feats = self._features()
        executor = self._executor(r)
        outputs = executor.train(
            start, rngs, state.labels, state.client_controls, state.server.control, plan,
            features_device=feats, features_host=self.data.features if opts.streaming else None,
            groups=self.groups)
        outputs = executor.gather(outputs)
        labels = state.labels
        plr = self.plr_active(r)
        k = self.num_participants
        refined = np.zeros(k, bool)
        if plr:
            scores = executor.score(outputs.params, self._score_rows, feats,
                                         self.data.features if opts.streaming else None)
            scores = scores[:, : self.num_rows]
            new_labels = self._refine_all(scores, state.labels, *self._plr_arrays())
            if opts.plr_start == "agreement":
                mags, mask = self._magnitudes()
                gate = np.array(_gate_all(scores, state.labels, mags, mask)[0])
                gate[k:] = False
                new_labels = jnp.where(jnp.asarray(gate)[:, None], new_labels, state.labels)
                refined = gate[:k]
            else:
                refined[:] = True
            labels = self.executor.put_k(new_labels)
        if local_setting:
            new_state = state._replace(participant_params=self.executor.put_k(outputs.params))
        else:
            server, controls = self._aggregate(
                state.server, outputs, state.client_controls, jnp.asarray(self.weights),
                jnp.asarray(self.control_weights))
            new_state = state._replace(server=server, client_controls=controls)
        new_state = new_state._replace(round=self.executor.put_rep(jnp.asarray(r + 1, jnp.int32)), labels=labels)
        changed = np.asarray(jnp.sum(labels[:k] != state.labels[:k], axis=1)) if plr else np.zeros(k, np.int64)
        loss = np.asarray(outputs.mean_loss)[:k]
        if not np.isfinite(loss).all():
            bad = [self.data.names[i] for i in np.flatnonzero(~np.isfinite(loss))]
            raise FloatingPointError(f"round {r}: non-finite training loss for participants {bad}")
        if sum(backends.TRACE_COUNTS.values()) != traces:
            # This round compiled: hand the compiler's freed heap back to the OS.
            hostmem.release_freed_host_memory()
        metrics = RoundMetrics(r, loss, np.asarray(outputs.steps)[:k], self.upload_bytes(), bool(refined.any()),
                               changed, time.perf_counter() - t0, refined)
        return new_state, metrics

    def run(self, rounds: int | None = None, state: EngineState | None = None, resume: bool = True,
            on_round: Callable[[EngineState, RoundMetrics], None] | None = None) -> EngineState:
        """Runs until ``rounds`` (default ``opts.rounds``) rounds are complete.

        With a checkpoint directory, a run resumes from the latest checkpoint
        (if ``resume``) and saves after every round.
        """
        rounds = self.opts.rounds if rounds is None else rounds
        if state is None:
            state = self.restore() if (resume and self.checkpointer is not None) else None
            state = state if state is not None else self.init()
        while int(state.round) < rounds:
            state, metrics = self.run_round(state)
            if self.checkpointer is not None:
                self.checkpointer.save(int(state.round), state)
            if on_round is not None:
                on_round(state, metrics)
        return state

    def restore(self, step: int | None = None) -> EngineState | None:
        """State after ``step`` rounds (default: the latest checkpoint), or None."""
        if self.checkpointer is None:
            raise ValueError("this engine has no checkpoint_dir")
        step = self.checkpointer.latest() if step is None else step
        if step is None:
            return None
        return self.checkpointer.restore(step, self.init())

    # -------------------------------------------------------------- internals
    def _features(self):
        if self.opts.streaming:
            return None
        if self._features_device is None:
            self._features_device = self.executor.put_features(np.asarray(self.data.features))
        return self._features_device

    def _magnitudes(self):
        """``([Kp, rows] float32, [Kp, rows] bool)``: each row's feature magnitude
        (L2 norm of the crop-mean feature) and the real-row mask (computed once)."""
        if self._mags is None:
            d = self.data
            rows, mask = data_lib.padded_rows(d.participants, self.num_rows, self.num_padded)
            mags = np.zeros(rows.shape, np.float32)
            for k, p in enumerate(d.participants):
                for a in range(0, p.size, 65_536):
                    block = np.asarray(d.features[np.asarray(p[a:a + 65_536])], np.float32)
                    mags[k, a:a + block.shape[0]] = np.linalg.norm(block.mean(axis=1), axis=1)
            self._mags = (self.executor.put_k(jnp.asarray(mags)), self.executor.put_k(jnp.asarray(mask)))
        return self._mags

    def _plr_arrays(self):
        if self._plr_inputs is None:
            d = self.data
            nv = max(lay.num_videos for lay in d.layouts)
            lays = [packed.pad(lay, nv, self.num_rows) for lay in d.layouts]
            lays += [packed.layout_from_lengths([], nv, self.num_rows)] * (self.num_padded - len(lays))
            layout = jax.tree.map(lambda *xs: jnp.stack(xs), *lays)
            vl = np.zeros((self.num_padded, nv), bool)
            for i, v in enumerate(d.video_labels):
                vl[i, : v.size] = v
            self._plr_inputs = (layout, jnp.asarray(vl))
        return self._plr_inputs



def _resolve_method(method, plr_options, refine_fn) -> Method:
    """The engine's method: a ``ModelOptions`` (or None) means CLAP's scorer
    with ``plr_options`` / ``refine_fn``; a method must come without them."""
    if isinstance(method, Method):
        if plr_options is not None or refine_fn is not None:
            raise ValueError("plr_options / refine_fn go with a ModelOptions (CLAP); a method carries its own "
                             "refinement (e.g. clapjax.methods.Clap(model, pseudo_labels, refine_fn))")
        return method
    from clapjax.model import ModelOptions
    from clapjax.methods.clap import Clap  # lazy: the engine itself depends on no method

    if method is None:
        method = ModelOptions()
    if not isinstance(method, ModelOptions):
        raise TypeError(f"Engine needs a clapjax Method or ModelOptions, got {type(method).__name__}")
    return Clap(model=method, pseudo_labels=plr_options, refine_fn=refine_fn)


# Compiled pieces are cached by configuration, so a fresh Engine with the same
# options (e.g. one resuming from a checkpoint) does not compile again.
@functools.lru_cache(maxsize=64)
def _aggregate_fn(opts: TrainOptions, server_tx):
    tx = server_tx if server_tx is not None else server_lib.server_optimizer(opts)

    def aggregate(server, outputs, controls, weights, c_weights):
        backends.TRACE_COUNTS["aggregate"] += 1
        return server_lib.aggregate(server, outputs, controls, weights, c_weights, opts, tx)

    return jax.jit(aggregate)


@functools.lru_cache(maxsize=64)
def _refine_fn(refine: RefineFn):
    def refine_all(scores, labels, layout, video_labels):
        backends.TRACE_COUNTS["refine"] += 1
        out = jax.vmap(refine)(scores, labels, layout, video_labels).astype(jnp.float32)
        return jnp.where(layout.segment_mask, out, 0.0)

    return jax.jit(refine_all)


@jax.jit
def _gate_all(scores, labels, magnitudes, mask):
    """:func:`clapjax.engine.plr_gate.agreement_gate` of every participant (``[Kp]`` each)."""
    backends.TRACE_COUNTS["plr_gate"] += 1
    return jax.vmap(plr_gate.agreement_gate)(scores, labels, magnitudes, mask)


@functools.lru_cache(maxsize=8)
def _round_keys_fn(prng_impl: str):
    def round_keys(rng_data, round_index, num):
        base = jax.random.wrap_key_data(rng_data, impl=prng_impl)
        rk = jax.random.fold_in(base, round_index)
        return jax.vmap(lambda i: jax.random.fold_in(rk, i))(jnp.arange(num))

    return jax.jit(round_keys, static_argnames="num")
