"""The deployment's run configuration, shared by the ServerApp and every ClientApp.

Flower hands every app the same *run config* (flat TOML values: str, int,
float, bool). :class:`DeployConfig` is that configuration as a frozen
dataclass; :func:`from_run_config` / :meth:`DeployConfig.to_run_config` convert
both ways. Option overrides of the library's option objects travel as one JSON
string per group (``pl``, ``model``, ``train``), on top of the ``variant`` preset,
like ``python -m experiments.run --pl.beta 0.1``.

Participants resolve the same split and options from this configuration; each
then opens only the videos of its own ``partition-id``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

from clapjax import splits as splits_lib
from clapjax.engine.options import TrainOptions
from clapjax.model import ModelOptions
from clapjax.options import PseudoLabelOptions

#: Default K per split kind (as ``experiments.run``).
DEFAULT_PARTICIPANTS = {"random": 5, "event": 13, "scene": 11}
#: TrainOptions fields set by top-level DeployConfig fields.
TOP_LEVEL_TRAIN = ("rounds", "local_epochs", "aggregator", "backend", "seed")


class ConfigError(ValueError):
    """An invalid deployment configuration; the message names the field."""


@dataclasses.dataclass(frozen=True)
class DeployConfig:
    """What the federation computes (identical on the server and every participant).

    Attributes:
      dataset: "ucf" or "xd" (structure, splits and test ground truth).
      split: "random", "event" or "scene" (official split files).
      participants: K (default per split kind); must equal the number of SuperNodes.
      variant: "paper" or "reference" preset of every option.
      aggregator: "fedavg", "fedprox" or "scaffold".
      rounds: communication rounds (0 = the variant's default).
      local_epochs: local epochs per round (0 = the variant's default).
      seed: model init, dropout, shuffling, generated splits (synthetic data use the
        preset's own seed, as ``experiments.run``).
      generate_split: a clean random split from ``seed`` instead of the official file.
      preset: synthetic data preset ("default" or "tiny") when no features are given.
      videos_per_participant: keep only the first n anomalous and n normal videos
        of each participant (0 = all; for quick runs and tests).
      features_dir: real I3D features; "" = synthetic. A participant's node config
        ``features-dir`` overrides it (each organisation has its own path).
      test_features_dir: the server's test features ("" = ``features_dir``).
      backend: engine backend inside each participant ("vmap" or "loop").
      null_model: "server_mixture" (CLAP: the mixture of all summaries) or "local"
        (ablation: each participant scores against its own Gaussian).
      pl, model, train: JSON objects of option overrides (field -> value).
      dp_clip: L2 clipping norm of each participant's delta (0 = no DP).
      dp_noise: Gaussian noise multiplier z (std of the added noise = z · dp_clip ·
        max weight, i.e. the sensitivity of the weighted mean).
      dp_seed: seed of the server's DP noise.
      secagg: sum the deltas with Flower's SecAgg+ (the server sees only their mean).
      secagg_threshold: fraction of key shares needed to unmask (dropout tolerance).
      secagg_clip: SecAgg+ clipping range of each delta entry before quantisation.
      secagg_quantization: SecAgg+ quantisation levels.
      round_timeout: seconds the server waits for the replies of one round.
      run_dir: the server's run directory (config.json, metrics.jsonl, ...).
    """

    dataset: Literal["ucf", "xd"] = "ucf"
    split: Literal["random", "event", "scene"] = "random"
    participants: int = 0
    variant: Literal["paper", "reference"] = "paper"
    aggregator: Literal["fedavg", "fedprox", "scaffold"] = "fedavg"
    rounds: int = 0
    local_epochs: int = 0
    seed: int = 0
    generate_split: bool = False
    preset: Literal["default", "tiny"] = "default"
    videos_per_participant: int = 0
    features_dir: str = ""
    test_features_dir: str = ""
    backend: Literal["vmap", "loop"] = "vmap"
    null_model: Literal["server_mixture", "local"] = "server_mixture"
    pl: str = "{}"
    model: str = "{}"
    train: str = "{}"
    dp_clip: float = 0.0
    dp_noise: float = 0.0
    dp_seed: int = 0
    secagg: bool = False
    secagg_threshold: float = 0.67
    secagg_clip: float = 1.0
    secagg_quantization: int = 4194304
    round_timeout: float = 600.0
    run_dir: str = ""

    def __post_init__(self):
        choices = {
            "dataset": ("ucf", "xd"), "split": ("random", "event", "scene"),
            "variant": ("paper", "reference"), "aggregator": ("fedavg", "fedprox", "scaffold"),
            "preset": ("default", "tiny"), "backend": ("vmap", "loop"),
            "null_model": ("server_mixture", "local"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}; expected one of {allowed}")
        for name in ("participants", "rounds", "local_epochs", "videos_per_participant"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("pl", "model", "train"):
            value = _overrides(self, name)
            if not isinstance(value, dict):
                raise ConfigError(f"{name} overrides must be a JSON object, got {getattr(self, name)!r}")
        if self.dp_clip < 0 or self.dp_noise < 0:
            raise ConfigError(f"dp_clip and dp_noise must be >= 0, got {self.dp_clip}, {self.dp_noise}")
        if self.dp_noise > 0 and self.dp_clip <= 0:
            raise ConfigError("dp_noise > 0 needs dp_clip > 0 (the noise is scaled by the clipping norm)")
        if self.dp_clip > 0 and self.aggregator == "scaffold":
            raise ConfigError(
                "dp_clip with aggregator='scaffold': the control-variate deltas would be released "
                "without privacy; use fedavg or fedprox with DP"
            )
        if not 0 < self.secagg_threshold <= 1 or self.secagg_clip <= 0 or self.secagg_quantization < 2:
            raise ConfigError(
                f"secagg_threshold must be in (0, 1], secagg_clip > 0 and secagg_quantization >= 2, got "
                f"{self.secagg_threshold}, {self.secagg_clip}, {self.secagg_quantization}"
            )
        if self.round_timeout <= 0:
            raise ConfigError(f"round_timeout must be > 0, got {self.round_timeout}")

    @property
    def num_participants(self) -> int:
        return self.participants or DEFAULT_PARTICIPANTS[self.split]

    @property
    def dp_enabled(self) -> bool:
        return self.dp_clip > 0

    def to_run_config(self) -> dict[str, Any]:
        """Flat Flower run config (``key-with-dashes`` -> scalar)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes) -> "DeployConfig":
        return dataclasses.replace(self, **changes)


def _overrides(cfg: DeployConfig, name: str) -> Any:
    try:
        return json.loads(getattr(cfg, name) or "{}")
    except json.JSONDecodeError as err:
        raise ConfigError(f"{name} overrides are not valid JSON ({err}): {getattr(cfg, name)!r}") from None


def from_run_config(run_config: Mapping[str, Any]) -> DeployConfig:
    """Builds a DeployConfig from Flower's run config; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(DeployConfig)}
    values = {}
    for key, value in run_config.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise ConfigError(f"unknown run-config key {key!r}; known: {', '.join(sorted(k.replace('_', '-') for k in fields))}")
        default = fields[name].default
        if isinstance(default, bool):
            value = bool(value)
        elif isinstance(default, int):
            value = int(value)
        elif isinstance(default, float):
            value = float(value)
        else:
            value = str(value)
        values[name] = value
    return DeployConfig(**values)


@dataclasses.dataclass(frozen=True)
class Resolved:
    """Split and option objects resolved from a DeployConfig.

    Attributes:
      split: participants' train-table indices (shrunk if ``videos_per_participant``).
      pseudo_labels, model, train: the option objects.
    """

    split: splits_lib.Split
    pseudo_labels: PseudoLabelOptions
    model: ModelOptions
    train: TrainOptions

    def record(self, cfg: DeployConfig) -> dict:
        """config.json's ``run`` and ``resolved`` parts (the same keys as ``experiments.run``)."""
        run = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "run_dir"}
        run["participants"] = cfg.num_participants
        run["overrides"] = {name: _overrides(cfg, name) for name in ("pl", "model", "train")}
        for name in ("pl", "model", "train"):
            run.pop(name)
        return {
            "run": run,
            "resolved": {
                "pseudo_labels": dataclasses.asdict(self.pseudo_labels),
                "model": dataclasses.asdict(self.model),
                "train": dataclasses.asdict(self.train),
                "split": {
                    "source": self.split.source,
                    "participant_names": list(self.split.participant_names),
                    "participants": [[int(i) for i in p] for p in self.split.participants],
                },
            },
        }


def _replace_checked(obj, overrides: dict, group: str):
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"{group} overrides: unknown field(s) {unknown}; known: {sorted(names)}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    try:
        return dataclasses.replace(obj, **fixed)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{group} overrides: {err}") from None


def resolve(cfg: DeployConfig) -> Resolved:
    """The split and option objects of a configuration (deterministic)."""
    k = cfg.num_participants
    try:
        if cfg.generate_split:
            if cfg.split != "random":
                raise ConfigError("generate_split supports split='random' only")
            split = splits_lib.random_split(cfg.dataset, k, seed=cfg.seed)
        else:
            split = splits_lib.load(cfg.dataset, cfg.split, k)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.videos_per_participant:
        from clapjax.data.synthetic import shrink_split

        split = shrink_split(split, cfg.videos_per_participant)
    pl = _replace_checked(PseudoLabelOptions.preset(cfg.variant), _overrides(cfg, "pl"), "pl")
    model = _replace_checked(ModelOptions.preset(cfg.variant), _overrides(cfg, "model"), "model")
    train_over = _overrides(cfg, "train")
    clash = sorted(set(train_over) & set(TOP_LEVEL_TRAIN))
    if clash:
        raise ConfigError(f"train overrides {clash} are top-level fields; set them directly")
    train = TrainOptions.preset(cfg.variant)
    top = dict(aggregator=cfg.aggregator, backend=cfg.backend, seed=cfg.seed, setting="collaborative")
    if cfg.rounds:
        top["rounds"] = cfg.rounds
    if cfg.local_epochs:
        top["local_epochs"] = cfg.local_epochs
    train = _replace_checked(train, {**train_over, **top}, "train")
    if train.streaming:
        raise ConfigError("train.streaming is not supported by the Flower participant (it holds its own features)")
    if cfg.secagg:
        # Flower's SecAgg+ sums one weighted vector per participant (see clapjax_flower.secagg).
        if train.aggregator == "scaffold":
            raise ConfigError("secagg with aggregator='scaffold' is not supported (control deltas need a second secure sum)")
        if train.weighting != "uniform":
            raise ConfigError("secagg needs train.weighting='uniform' (Flower's SecAgg+ weights by num_examples)")
        if split.num_participants < 3:
            raise ConfigError("secagg needs at least 3 participants")
        if cfg.null_model != "server_mixture":
            raise ConfigError("secagg runs with null_model='server_mixture' only (one mixture for everyone)")
    return Resolved(split, pl, model, train)


def open_train_source(cfg: DeployConfig, videos: np.ndarray | None = None, features_dir: str = ""):
    """Training videos as a FeatureSource: a participant passes its own ``videos``
    (train-table indices) and nothing else is opened; None opens all (in-process).

    Synthetic data use ``SyntheticConfig.preset(preset)`` as ``experiments.run`` does.
    """
    from clapjax import data

    where = features_dir or cfg.features_dir
    if where:
        return data.open_source(cfg.dataset, "train", features_dir=Path(where), videos=videos)
    return data.open_source(cfg.dataset, "train", synthetic=data.SyntheticConfig.preset(cfg.preset), videos=videos)


def open_test_source(cfg: DeployConfig):
    """The server's test set."""
    from clapjax import data

    where = cfg.test_features_dir or cfg.features_dir
    if where:
        return data.open_source(cfg.dataset, "test", features_dir=Path(where))
    return data.open_source(cfg.dataset, "test", synthetic=data.SyntheticConfig.preset(cfg.preset))
