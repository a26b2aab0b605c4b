"""Training options of the federated engine (one frozen dataclass)."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

Aggregator = Literal["fedavg", "fedprox", "scaffold"]
Backend = Literal["vmap", "loop", "sharded"]
Setting = Literal["collaborative", "local", "centralized"]

#: Largest seed: ``seed + 1`` seeds the dropout keys and numpy seeds must be
#: non-negative, so seeds are unsigned 32-bit values below 2**32 - 1.
SEED_MAX = 2**32 - 2

_CHOICES = {
    "optimizer": ("sgd", "adam", "adagrad", "rmsprop"),
    "aggregator": ("fedavg", "fedprox", "scaffold"),
    "weighting": ("uniform", "segments"),
    "server_optimizer": ("none", "sgd", "adam", "yogi", "adagrad"),
    "backend": ("vmap", "loop", "sharded"),
    "setting": ("collaborative", "local", "centralized"),
    "prng_impl": ("rbg", "threefry2x32"),
    "plr_start": ("round", "agreement"),
}


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Everything that shapes local training, aggregation and execution.

    Attributes:
      rounds: communication rounds.
      local_epochs: passes over a participant's segments per round.
      batch_size: segments per local step; the last partial batch is masked.
      optimizer: local optax optimiser, re-initialised each round: "sgd",
        "adam", "adagrad" (accumulator starting at 0, ``eps`` 1e-8 inside the
        root: Sultani et al.'s Keras ``Adagrad(epsilon=1e-08)`` adds it
        outside) or "rmsprop" (torch's defaults: decay 0.99, ``eps`` 1e-8).
      lr: local learning rate. momentum: SGD momentum (0 = plain SGD).
      nesterov: Nesterov momentum (SGD with momentum > 0; torch's
        ``nesterov=True``).
      lr_milestones: 0-based rounds from which the learning rate is
        multiplied by ``lr_decay`` once more (a step schedule over rounds,
        like torch's ``MultiStepLR`` stepped once per epoch; () = constant).
      lr_decay: factor of ``lr_milestones``.
      l2: L2 regulariser ``l2/2 · ‖θ‖²`` (gradient ``l2·θ``, like torch's
        ``weight_decay=l2``). The paper uses "BCE + L2" without a value.
      shuffle: reshuffle each participant's segments every epoch (False = split
        order, as the released code).
      aggregator: "fedavg", "fedprox" (proximal term ``μ/2 ‖θ − θ_global‖²``)
        or "scaffold" (option II control variates).
      mu: FedProx coefficient.
      server_lr: λ in ``θ ← θ + λ · Σ_k w_k Δ_k`` (ignored by server optimisers,
        which use it as their learning rate).
      weighting: "uniform" (paper, 1/K) or "segments" (released code).
      server_optimizer: "none" (plain λ-step) or an optax optimiser applied to
        the negative weighted mean delta (FedAdam/FedYogi/FedAdagrad style).
      server_b1, server_b2, server_eps: server optimiser moments / τ.
      backend: "vmap" (participants vmapped in one jit), "loop" (Python loop,
        one jitted participant at a time), "sharded" (participant axis sharded
        over all local devices).
      setting: "collaborative", "local" (no aggregation, every participant
        keeps its model) or "centralized" (all data in one participant).
      plr_start_round: 0-based round from which PLR refines labels after local
        training; None disables PLR.
      plr_start: ``"round"``: every participant refines in every round from
        ``plr_start_round`` on (the paper's fixed start); ``"agreement"``:
        from ``plr_start_round`` on, a participant refines only in rounds
        where its freshly trained model ranks its current segment labels
        better (segment ROC-AUC) than its feature magnitudes do
        (:mod:`clapjax.engine.plr_gate`).
      prng_impl: dropout PRNG, "rbg" (default) or "threefry2x32". Both give
        every participant the same masks under vmap as alone. Measured on
        2-core CPU at K = 13 (``experiments.bench``, ``variants``): dropout
        costs 1-11 % of a step with rbg, and threefry2x32 was between 1 %
        slower and 4 % faster (four runs, both networks: noise). rbg stays
        the default because changing it changes every dropout mask, so
        every published result. ("unsafe_rbg" is not offered: its
        split/fold_in are not vmap-consistent, so backends would disagree.)
      seed: global seed (initial parameters, dropout keys, shuffling).
      streaming: gather batches on the host from a (memory-mapped) feature
        array in chunks of ``chunk_steps`` with prefetching, instead of
        holding the features on the device.
      vmap_groups: the vmap backend splits participants into at most this
        many groups of similar step counts (one vmapped call each) when one
        call padded to the largest would do over 1.5x the real steps (ragged
        splits, e.g. event 13: 2.4x -> 1.09x); 1 always vmaps all
        participants in one call. The per-participant computation is the
        same; only XLA's choice of matmul kernel for a batched or unbatched
        shape can differ, i.e. float32 rounding.
      vmap_max_overhead: when ``vmap_groups`` groups still pad the work beyond
        this factor of the real work, the vmap backend uses more groups (up
        to 64; ``data.adaptive_step_groups``), so very ragged splits with many
        participants (a random split of UCF-Crime into 500: 1.84x padded work
        with 4 groups, 1.34x with 7) cost about what fewer participants do
        (not with ``vmap_groups=1``, which always makes one call).
        No official or generated split of 2-50 participants exceeds 1.4 with
        4 groups, so their groups are unchanged.
      chunk_steps: steps per loop-backend call, and the upper bound of steps
        per streamed chunk.
      stream_chunk_bytes: bound on the bytes of one streamed chunk of gathered
        features (two chunks are in flight: one training, one prefetching),
        and of one PLR scoring chunk ``[K, rows, C, D]``.
      score_chunk: rows per participant per scoring call (PLR; evaluation via
        ``Engine.score``), capped by ``stream_chunk_bytes``.
    """

    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 128
    optimizer: Literal["sgd", "adam", "adagrad", "rmsprop"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    lr_milestones: tuple[int, ...] = ()
    lr_decay: float = 0.1
    l2: float = 1e-4
    shuffle: bool = True
    aggregator: Aggregator = "fedavg"
    mu: float = 0.01
    server_lr: float = 1.0
    weighting: Literal["uniform", "segments"] = "uniform"
    server_optimizer: Literal["none", "sgd", "adam", "yogi", "adagrad"] = "none"
    server_b1: float = 0.9
    server_b2: float = 0.99
    server_eps: float = 1e-3
    backend: Backend = "vmap"
    setting: Setting = "collaborative"
    plr_start_round: int | None = 1
    plr_start: Literal["round", "agreement"] = "round"
    prng_impl: Literal["rbg", "threefry2x32"] = "rbg"
    seed: int = 0
    streaming: bool = False
    vmap_groups: int = 4
    vmap_max_overhead: float = 1.5
    chunk_steps: int = 64
    stream_chunk_bytes: int = 256 * 2**20
    score_chunk: int = 4096

    def __post_init__(self):
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"TrainOptions.{name}={value!r}; expected one of {allowed}")
        for name in ("rounds", "local_epochs", "batch_size", "vmap_groups", "chunk_steps", "score_chunk",
                     "stream_chunk_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainOptions.{name} must be >= 1, got {getattr(self, name)}")
        if isinstance(self.vmap_max_overhead, bool) or not (
                isinstance(self.vmap_max_overhead, (int, float)) and self.vmap_max_overhead >= 1.0):
            raise ValueError(f"TrainOptions.vmap_max_overhead must be a number >= 1, got {self.vmap_max_overhead!r}")
        for name in ("lr", "momentum", "l2", "mu", "server_lr", "server_b1", "server_b2", "server_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"TrainOptions.{name} must be a finite number, got {value!r}")
        for name in ("lr", "server_lr", "server_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainOptions.{name} must be > 0, got {getattr(self, name)}")
        for name in ("l2", "mu"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainOptions.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("momentum", "server_b1", "server_b2"):
            # Moment decay rates: 1 (or more) never forgets, so updates grow without bound.
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"TrainOptions.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= int(self.seed) <= SEED_MAX:
            raise ValueError(f"TrainOptions.seed must be in [0, {SEED_MAX}], got {self.seed}")
        if any(int(m) < 0 for m in self.lr_milestones) or list(self.lr_milestones) != sorted(self.lr_milestones):
            raise ValueError(f"TrainOptions.lr_milestones must be ascending rounds >= 0, got {self.lr_milestones}")
        if not self.lr_decay > 0:
            raise ValueError(f"TrainOptions.lr_decay must be > 0, got {self.lr_decay}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ValueError("TrainOptions.nesterov needs optimizer='sgd' with momentum > 0")
        if self.plr_start_round is not None and self.plr_start_round < 0:
            raise ValueError(f"TrainOptions.plr_start_round must be >= 0 or None, got {self.plr_start_round}")

    @classmethod
    def preset(cls, variant: Literal["paper", "reference"] = "paper", **overrides) -> "TrainOptions":
        """``paper`` (default options) or ``reference`` (released code)."""
        if variant == "paper":
            base = cls()
        elif variant == "reference":
            base = cls(
                l2=0.0, shuffle=False, weighting="segments", server_lr=1.0,
                momentum=0.0, plr_start_round=None,
            )
        else:
            raise ValueError(f"unknown train variant {variant!r}; expected 'paper' or 'reference'")
        return dataclasses.replace(base, **overrides)

    def replace(self, **changes) -> "TrainOptions":
        return dataclasses.replace(self, **changes)

    def round_lr(self, round_index: int) -> float:
        """The local learning rate of 0-based round ``round_index`` (``lr_milestones``)."""
        drops = sum(1 for m in self.lr_milestones if round_index >= int(m))
        lr = self.lr
        for _ in range(drops):
            lr = lr * self.lr_decay
        return lr
