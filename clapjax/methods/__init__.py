"""Training methods of the federated engine, one module each.

* :mod:`clapjax.methods.clap`: CLAP (CVPR 2024), the library's own method.
* :mod:`clapjax.methods.c2fpl`: C2FPL (WACV 2024), coarse-to-fine pseudo-labels.
* :mod:`clapjax.methods.gcl`: GCL (CVPR 2022), generative cooperative learning.
* :mod:`clapjax.methods.mil`: Sultani et al. (CVPR 2018), MIL ranking (weakly supervised).
* :mod:`clapjax.methods.claws`: CLAWS (ECCV 2020), normalcy suppression and a
  clustering loss (weakly supervised).
* :mod:`clapjax.methods.compression`: the 32-segment compression and the
  weak-label stage of the weakly supervised methods.

Each is a :class:`clapjax.engine.Method` the engine trains in every setting
and backend. :data:`METHODS` describes them to drivers such as
``experiments.run`` (``--method``): their option class (a nested command-line
group), scorer options, ``TrainOptions`` overrides, how to build the method and
its pseudo-labelling stage, and how it prepares the training set (the
weakly supervised methods compress every video to 32 segments).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

from clapjax.methods import c2fpl, clap, claws, compression, gcl, mil
from clapjax.methods.c2fpl import C2FPL, C2FPLOptions
from clapjax.methods.clap import Clap
from clapjax.methods.claws import CLAWS, CLAWSOptions
from clapjax.methods.gcl import GCL, GCLOptions
from clapjax.methods.mil import MIL, MILOptions
from clapjax.model import ModelOptions


class MethodSpec(NamedTuple):
    """How a driver runs one method.

    Attributes:
      name: ``--method`` value.
      title: name in tables.
      options: the method's own options class (a nested CLI group, e.g.
        ``--c2fpl.*``), or None (CLAP: its options are ``--pl.*``).
      uses_scorer: the method trains :mod:`clapjax.model`'s scorer, so
        ``--model.*`` applies.
      uses_pseudo_label_options: ``--pl.*`` applies.
      model_options: ``variant -> ModelOptions`` base of ``--model.*``.
      train_overrides: ``variant -> dict`` of ``TrainOptions`` fields set on
        top of the engine's preset (before the user's ``--train.*``).
      build: ``(model_options, pseudo_label_options, method_options) -> Method``.
      pseudo_label: ``(training_set, pseudo_label_options, method_options,
        weak_videos, null_mode, progress) -> clapjax.pipeline.PseudoLabels``
        or None (no pseudo-labelling stage before training).
      weakly_supervised: trains on the true video labels of every training
        video (they must be known; ``--weak-labels`` does not apply).
      prepare: ``(training_set, method_options) -> training_set`` run before
        the pseudo-labelling stage (e.g. the 32-segment compression), or None.
    """

    name: str
    title: str
    options: type | None
    uses_scorer: bool
    uses_pseudo_label_options: bool
    model_options: Callable[[str], ModelOptions | None]
    train_overrides: Callable[[str], dict]
    build: Callable[[Any, Any, Any], Any]
    pseudo_label: Callable[..., Any] | None
    weakly_supervised: bool = False
    prepare: Callable[[Any, Any], Any] | None = None

    def method_options(self, variant: str, overrides: dict | None = None):
        """The method's own options: its ``variant`` preset with ``overrides``."""
        if self.options is None:
            return None
        return dataclasses.replace(self.options.preset(variant), **(overrides or {}))


def _clap_pseudo_label(ts, pl_options, method_options, weak_videos=None, null_mode="server_mixture",
                       progress=None):
    from clapjax import pipeline

    return pipeline.pseudo_label(ts, pl_options, weak_videos=weak_videos, null_mode=null_mode, progress=progress)


def _c2fpl_pseudo_label(ts, pl_options, method_options, weak_videos=None, null_mode="server_mixture",
                        progress=None):
    return c2fpl.pseudo_label(ts, method_options, weak_videos=weak_videos, progress=progress)


def _weak_pseudo_label(pairs: bool):
    def stage(ts, pl_options, method_options, weak_videos=None, null_mode="server_mixture", progress=None):
        return compression.weak_labels(ts, pairs=pairs)

    return stage


def _compress(ts, options):
    return compression.compress_training_set(ts, options.segments, options.normalize, options.compress)


METHODS: dict[str, MethodSpec] = {
    "clap": MethodSpec(
        "clap", "CLAP", None, True, True, ModelOptions.preset, clap.train_overrides,
        lambda model, pl, options: Clap(model=model, pseudo_labels=pl), _clap_pseudo_label),
    "c2fpl": MethodSpec(
        "c2fpl", "C2FPL", C2FPLOptions, True, False, c2fpl.model_options, c2fpl.train_overrides,
        lambda model, pl, options: C2FPL(model=model, options=options), _c2fpl_pseudo_label),
    "gcl": MethodSpec(
        "gcl", "GCL", GCLOptions, False, False, lambda v: None, gcl.train_overrides,
        lambda model, pl, options: GCL(options=options), None),
    "mil": MethodSpec(
        "mil", "MIL", MILOptions, False, False, lambda v: None, mil.train_overrides,
        lambda model, pl, options: MIL(options=options), _weak_pseudo_label(True),
        weakly_supervised=True, prepare=_compress),
    "claws": MethodSpec(
        "claws", "CLAWS", CLAWSOptions, False, False, lambda v: None, claws.train_overrides,
        lambda model, pl, options: CLAWS(options=options), _weak_pseudo_label(False),
        weakly_supervised=True, prepare=_compress),
}


def spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``; ValueError lists the valid names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["C2FPL", "C2FPLOptions", "CLAWS", "CLAWSOptions", "Clap", "GCL", "GCLOptions", "METHODS", "MIL",
           "MILOptions", "MethodSpec", "c2fpl", "clap", "claws", "compression", "gcl", "mil", "spec"]
