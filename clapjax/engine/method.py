"""The method interface: what a training method hands the federated engine.

The engine (stacked participants, vmap / loop / sharded backends, FedAvg /
FedProx / SCAFFOLD, the three settings, masked padding, checkpoints) trains
any object with this interface. A method provides:

* its parameters' initialisation (:meth:`Method.init_params`): one pytree,
  either a single network or a dict of named networks (:attr:`Method.networks`);
* its local loss, as one or more :class:`Stage` s run in order inside every
  local step, each a gradient step of one network on the step's batch
  (a single-network method has one stage; GCL has a discriminator stage and
  a generator stage, each with its own optimiser state);
* the randomness of a step that is not differentiated (dropout masks,
  :meth:`Method.noise`);
* its batch sampler (:meth:`Method.sampler`, a :class:`BatchSampler`:
  shuffled segments, runs of consecutive segments, bags of segments per video
  ...), which fixes the rows of every step;
* its eval-mode segment scores (:meth:`Method.score`), used for evaluation and
  for the refinement's scores;
* where it has them, its refinement of the per-segment labels between rounds
  (:meth:`Method.refinement`, from ``TrainOptions.plr_start_round`` on) and a
  round-dependent phase (:meth:`Method.phase`, e.g. a pre-training phase that
  runs other stages).

A method's pseudo-labelling stage runs before training, on the host, and only
hands the engine initial per-segment labels (``FederatedData.labels``); see
``clapjax.methods``. The engine keeps one float32 label per training row and
participant; a stage reads the labels of its batch through the batch's
``positions``.

Methods are frozen, hashable objects: compiled functions are cached per
method, so two engines of the same method and options share them.

Shapes a sampler can express: shuffled segments (:class:`SegmentSampler`),
runs of consecutive segments (:class:`ConsecutiveSampler`, e.g. CLAWS / GCL
batches) and bags of segments per video: a sampler sees every participant's
video lengths and video labels, so a step can hold ``n`` pairs of (normal,
anomalous) videos of ``m`` segments each as ``rows_per_step = 2·n·m``
positions, which the stage loss reshapes to ``[n, 2, m, C, D]`` (MIL's
ranking loss); per-row labels (``FederatedData.labels``) can carry the video
labels of weak supervision.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Hashable, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np

Params = Any

#: ``loss(net_params, params, batch, labels, noise) -> [] float32``:
#: ``net_params`` is the stage's network (the differentiated argument),
#: ``params`` all current parameters (other networks are read, not
#: differentiated; a stage sees the updates of the stages before it in the same
#: step), ``batch`` the step's :class:`clapjax.engine.local.Batch`, ``labels``
#: ``[N] float32`` the participant's per-row labels (gather with
#: ``batch.positions``), ``noise`` what :meth:`Method.noise` drew for the step.
StageLoss = Callable[[Params, Params, Any, jax.Array, Any], jax.Array]


class Stage(NamedTuple):
    """One gradient step of one network inside a local step.

    Attributes:
      network: key of the network in the parameter dict (one of
        :attr:`Method.networks`), or None for a single-network method whose
        whole parameter tree is the network.
      loss: the stage's objective (see :data:`StageLoss`); the engine adds
        the L2 / FedProx terms of the network and the SCAFFOLD correction.
    """

    network: str | None
    loss: StageLoss


@runtime_checkable
class BatchSampler(Protocol):
    """The rows of every local step of one participant in one epoch.

    A participant's rows are its positions ``0 .. n-1`` (in its split order);
    ``lengths`` (when the data have layouts) are its videos' segment counts in
    that order and ``video_labels`` their labels. Every step has the same
    number of rows, ``rows_per_step``; unused slots are masked.
    """

    rows_per_step: int

    def steps_per_epoch(self, count: int, lengths: np.ndarray | None,
                        video_labels: np.ndarray | None) -> int:
        """Steps of one epoch of a participant with ``count`` rows."""

    def epoch(self, count: int, lengths: np.ndarray | None, video_labels: np.ndarray | None,
              rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """``(positions [steps, rows_per_step] int64, mask [steps, rows_per_step] bool)``
        of one epoch; ``rng`` is None when ``TrainOptions.shuffle`` is False."""


class Method(abc.ABC):
    """Base class of training methods (see the module docstring).

    Subclasses are frozen dataclasses (hashable: they key compiled-function
    caches); they must define ``init_params``, ``stages`` and ``score`` and
    override what else they need; the other defaults describe a
    single-network method without refinement or phases.

    Attributes:
      name: short name (``clap``, ``c2fpl``, ``gcl`` ...).
      networks: names of the networks when the parameters are a dict of
        several separately optimised networks; None for one network.
    """

    name: str = "method"
    networks: tuple[str, ...] | None = None

    @abc.abstractmethod
    def init_params(self, feature_dim: int, crops: int, key: jax.Array) -> Params:
        """Initial parameters for features ``[.., crops, feature_dim]``."""

    @abc.abstractmethod
    def stages(self, phase: Hashable) -> tuple[Stage, ...]:
        """The stages of one local step in ``phase``."""

    def noise(self, key: jax.Array, batch: Any) -> Any:
        """Non-differentiated random inputs of a step (e.g. dropout masks)."""
        return None

    @abc.abstractmethod
    def score(self, params: Params, x: jax.Array) -> jax.Array:
        """Eval-mode segment anomaly scores ``[...]`` of ``x [..., C, D]``."""

    def sampler(self, opts: Any) -> BatchSampler:
        """The batch sampler under ``opts`` (a ``TrainOptions``)."""
        from clapjax.engine.data import SegmentSampler

        return SegmentSampler(opts.batch_size)

    def phase(self, round_index: int) -> Hashable:
        """Phase of 0-based round ``round_index`` (its stages are compiled once per phase)."""
        return 0

    def refinement(self) -> Callable[..., jax.Array] | None:
        """``refine(scores [N], labels [N], layout, video_labels [V]) -> [N]``:
        one participant's labels refined from its local model's eval scores of
        its own rows (jit- and vmap-able), or None when the method has no
        refinement between rounds."""
        return None

    def compile_key(self) -> "Method":
        """An equal-behaving method that keys compiled training code: fields
        that never reach a local step or the scores (e.g. refinement options)
        may be left out, so engines differing only in them share compiled code."""
        return self


def as_method(method_or_model_options) -> Method:
    """``method_or_model_options`` as a :class:`Method`.

    A ``clapjax.model.ModelOptions`` (the engine's argument before methods
    were pluggable) means CLAP's scorer: :class:`clapjax.methods.clap.Clap`.
    """
    if isinstance(method_or_model_options, Method):
        return method_or_model_options
    from clapjax.model import ModelOptions

    if isinstance(method_or_model_options, ModelOptions):
        from clapjax.methods.clap import Clap  # lazy: the engine does not depend on any method

        return Clap(model=method_or_model_options)
    raise TypeError(f"expected a clapjax Method or ModelOptions, got {type(method_or_model_options).__name__}")


def network_of(tree: Any, network: str | None) -> Any:
    """The sub-tree of ``network`` (the whole tree when None)."""
    return tree if network is None else tree[network]


def with_network(tree: Any, network: str | None, value: Any) -> Any:
    """``tree`` with ``network``'s sub-tree replaced by ``value`` (a new dict)."""
    if network is None:
        return value
    out = dict(tree)
    out[network] = value
    return out
