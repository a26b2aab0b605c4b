"""The run configuration of ``python -m experiments.run`` and its validation.

``RunConfig`` is a frozen dataclass parsed by tyro. Top-level flags choose the
experiment (dataset, split, participants, setting, variant, ...); nested groups
``--pl.*``, ``--model.*`` and ``--train.*`` override single fields of the
library's option objects on top of the ``--variant`` preset.

``validate`` checks every combination before anything expensive runs and
returns a :class:`ResolvedRun` (the split, the option objects, the workdir).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Annotated, Literal, Optional

import numpy as np
import tyro

from clapjax import methods as methods_lib
from clapjax import splits as splits_lib
from clapjax import tables
from clapjax.engine.options import TrainOptions
from clapjax.methods import C2FPLOptions, GCLOptions
from clapjax.model import ModelOptions
from clapjax.options import PseudoLabelOptions
from experiments import option_groups

#: TrainOptions fields that are top-level flags (or derived from them).
TOP_LEVEL_TRAIN = ("rounds", "local_epochs", "aggregator", "backend", "setting", "seed")
#: Default K when --participants is not given.
DEFAULT_PARTICIPANTS = {"random": 5, "event": 13, "scene": 11}
#: Synthetic data presets (clapjax.data.SyntheticConfig).
PRESETS = ("default", "tiny")
#: Fields that change how a run is shown, not what it computes (not compared on resume).
PRESENTATION = ("workdir", "overwrite", "quiet", "json", "plots")

PseudoLabelOverrides = option_groups.override_class(PseudoLabelOptions, "PseudoLabelOverrides")
ModelOverrides = option_groups.override_class(ModelOptions, "ModelOverrides")
TrainOverrides = option_groups.override_class(
    TrainOptions, "TrainOverrides", exclude=TOP_LEVEL_TRAIN
)
C2FPLOverrides = option_groups.override_class(C2FPLOptions, "C2FPLOverrides")
GCLOverrides = option_groups.override_class(GCLOptions, "GCLOverrides")
#: Option groups of the methods' own options (``--<method>.*``), by method name.
METHOD_GROUPS = ("c2fpl", "gcl")


class ConfigError(ValueError):
    """An invalid combination of flags; the message lists the valid choices."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Run CLAP (CVPR 2024) unsupervised collaborative video anomaly detection,
    or a baseline (C2FPL, GCL) trained the same federated way (--method).

    Writes a run directory (config.json, metrics.jsonl, summary.json,
    checkpoints/) and prints one line per round. Features are synthetic unless
    --features-dir is given; synthetic numbers are not comparable to the paper's.
    """

    method: Literal["clap", "c2fpl", "gcl"] = "clap"
    """Training method: clap, c2fpl (coarse-to-fine pseudo-labels, WACV 2024) or gcl (generative cooperative learning, CVPR 2022); its own options are --c2fpl.* / --gcl.*."""
    dataset: Literal["ucf", "xd"] = "ucf"
    """Dataset whose structure (videos, lengths, splits, test ground truth) is used."""
    split: Literal["random", "event", "scene"] = "random"
    """Participant split kind (official split files unless --split-file/--generate-split)."""
    participants: Optional[int] = None
    """Number of participants K (default: 5 random, 13 event, 11 scene)."""
    setting: Literal["collaborative", "local", "centralized"] = "collaborative"
    """collaborative (FedAvg rounds), local (every participant alone), centralized (one holder)."""
    variant: Literal["paper", "reference"] = "paper"
    """Preset of every option: the paper's method or the released code's behaviour."""
    aggregator: Literal["fedavg", "fedprox", "scaffold"] = "fedavg"
    """Server aggregation (collaborative setting)."""
    rounds: Optional[int] = None
    """Communication rounds (default: the variant's, 10)."""
    local_epochs: Optional[int] = None
    """Local epochs per round (default: the variant's, 1)."""
    features_dir: Optional[Path] = None
    """Directory of real I3D features; synthetic features when absent."""
    train_segment_labels: Optional[Path] = None
    """Real features only: folder of <video>.npy true segment (or frame) labels of training videos, to log SPL/PLR quality."""
    preset: Literal["default", "tiny"] = "default"
    """Synthetic data preset (synthetic features only; refused with --features-dir)."""
    split_file: Optional[Path] = None
    """A split JSON in the shipped format (any K)."""
    videos_per_participant: Optional[int] = None
    """Quick runs: each participant keeps only its first N anomalous and N normal videos (numbers meaningless)."""
    generate_split: bool = False
    """Generate a clean split from --seed instead of the official file (random: balanced; event: by class name; scene: official scenes)."""
    seed: int = 0
    """Seed of model init, dropout, shuffling and generated splits (the synthetic dataset itself is fixed)."""
    backend: Literal["auto", "vmap", "loop", "sharded"] = "auto"
    """Execution of the participants: vmapped, Python loop, or sharded over devices. auto: vmap (participants grouped by size, see --train.vmap-groups) unless its padded work would still exceed 1.5x the real work, then loop."""
    weak_labels: int = 0
    """Weak supervision: the first N participants use their true video labels instead of VPL."""
    weak_participants: tuple[int, ...] = ()
    """Weak supervision: explicit participant indices given true video labels."""
    null_model: Literal["server_mixture", "local"] = "server_mixture"
    """Null model of SPL: the server mixture of all participants' Gaussians (CLAP) or each participant's own Gaussian (ablation without SKA)."""
    workdir: Optional[Path] = None
    """Run directory (default: runs/<dataset>-<split>-<K>-<setting>-<variant>-seed<seed>)."""
    overwrite: bool = False
    """Replace an existing run directory of a different configuration."""
    quiet: bool = False
    """Print only the final result line."""
    json: bool = False
    """Print JSON lines only (round, stage and summary events) on stdout."""
    plots: bool = False
    """Write PNG plots into <workdir>/plots (needs matplotlib)."""
    pl: Annotated[PseudoLabelOverrides, tyro.conf.arg(name="pl")] = PseudoLabelOverrides()
    model: ModelOverrides = ModelOverrides()
    train: TrainOverrides = TrainOverrides()
    c2fpl: C2FPLOverrides = C2FPLOverrides()
    gcl: GCLOverrides = GCLOverrides()


@dataclasses.dataclass(frozen=True, eq=False)
class ResolvedRun:
    """A validated run: everything the pipeline needs.

    Attributes:
      config: the parsed configuration.
      split: participants of the training set (centralized: one participant).
      federated_split: the split before centralisation (for reports).
      pseudo_labels / model / train: the resolved option objects (``model``
        is None for a method without CLAP's scorer, e.g. GCL).
      method_options: the method's own options (None for CLAP).
      weak: ``[K] bool`` participants given their true video labels.
      workdir: the run directory.
      split_label: short name of the split (workdir, reports).
    """

    config: RunConfig
    split: splits_lib.Split
    federated_split: splits_lib.Split
    pseudo_labels: PseudoLabelOptions
    model: ModelOptions | None
    train: TrainOptions
    weak: np.ndarray
    workdir: Path
    split_label: str
    method_options: object = None

    @property
    def method_spec(self) -> methods_lib.MethodSpec:
        return methods_lib.spec(self.config.method)

    def build_method(self):
        """The :class:`clapjax.engine.Method` of this run."""
        pl = self.pseudo_labels if self.train.plr_start_round is not None else None
        return self.method_spec.build(self.model, pl, self.method_options)

    @property
    def num_participants(self) -> int:
        return self.federated_split.num_participants

    def weak_videos(self) -> np.ndarray:
        """``[N] bool`` per training video (packed participant order): weakly supervised."""
        sizes = [len(p) for p in self.federated_split.participants]
        return np.repeat(self.weak, sizes)

    @property
    def synthetic(self) -> bool:
        return self.config.features_dir is None

    def record(self) -> dict:
        """config.json's ``run`` and ``resolved`` parts (compared on resume)."""
        run = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)
               if f.name not in PRESENTATION and f.name not in ("pl", "model", "train") + METHOD_GROUPS}
        run["participants"] = self.num_participants
        run["overrides"] = {
            "pl": option_groups.overrides_dict(self.config.pl),
            "model": option_groups.overrides_dict(self.config.model),
            "train": option_groups.overrides_dict(self.config.train),
            **{g: option_groups.overrides_dict(getattr(self.config, g)) for g in METHOD_GROUPS},
        }
        resolved = {
            "method": self.config.method,
            "method_options": (None if self.method_options is None
                               else dataclasses.asdict(self.method_options)),
            # CLAP's pseudo-label options; other methods carry theirs in method_options.
            "pseudo_labels": (dataclasses.asdict(self.pseudo_labels)
                              if self.method_spec.uses_pseudo_label_options else None),
            "model": None if self.model is None else dataclasses.asdict(self.model),
            "train": dataclasses.asdict(self.train),
            "weak_participants": [int(k) for k in np.flatnonzero(self.weak)],
            "split": {
                "label": self.split_label,
                "source": self.federated_split.source,
                "participant_names": list(self.federated_split.participant_names),
                "participants": [[int(i) for i in p] for p in self.federated_split.participants],
            },
        }
        return {"run": run, "resolved": resolved}


def _official_choices(dataset: str) -> str:
    combos = splits_lib.available()[dataset]
    by_kind: dict[str, list[int]] = {}
    for kind, k in combos:
        by_kind.setdefault(kind, []).append(k)
    return "; ".join(f"--split {kind} --participants {'/'.join(map(str, ks))}"
                     for kind, ks in by_kind.items())


def load_split(config: RunConfig) -> tuple[splits_lib.Split, str]:
    """The training split named by the configuration, and its short label."""
    ds = config.dataset
    if config.split_file is not None:
        if config.generate_split:
            raise ConfigError("--split-file and --generate-split exclude each other")
        try:
            split = splits_lib.from_json(config.split_file, ds)
        except (FileNotFoundError, splits_lib.SplitError) as err:
            raise ConfigError(str(err)) from None
        if config.participants is not None and config.participants != split.num_participants:
            raise ConfigError(
                f"--participants {config.participants} but {config.split_file} has "
                f"{split.num_participants} participants (omit --participants)"
            )
        return split, f"file_{Path(config.split_file).stem}"
    kind = config.split
    k = config.participants if config.participants is not None else DEFAULT_PARTICIPANTS[kind]
    if config.generate_split:
        try:
            if kind == "random":
                split = splits_lib.random_split(ds, k, seed=config.seed)
            elif kind == "event":
                split = splits_lib.event_split(ds, seed=config.seed)
            else:
                split = splits_lib.scene_split(ds)
        except ValueError as err:
            raise ConfigError(f"--generate-split --split {kind}: {err}") from None
        if split.num_participants != k:
            raise ConfigError(
                f"a generated {kind} split of {ds} has {split.num_participants} participants, "
                f"not {k}; use --participants {split.num_participants} (only random splits "
                f"take any K)"
            )
        return split, f"{kind}gen"
    if (kind, k) not in splits_lib.available()[ds]:
        raise ConfigError(
            f"no official {kind} split with {k} participants for {ds}. Valid for {ds}: "
            f"{_official_choices(ds)}. All datasets: {splits_lib.describe_available()}. "
            f"Other K: --generate-split (random splits of any K, seeded by --seed) or "
            f"--split-file FILE."
        )
    return splits_lib.load(ds, kind, k), kind


#: ``auto`` backend: above this padding overhead of the vmap backend (padded
#: over real work, after grouping participants of similar size) use the loop.
AUTO_LOOP_OVERHEAD = 1.5


def vmap_overhead(split: splits_lib.Split, vmap_groups: int, batch_size: int = 128) -> float:
    """Work of the vmap backend over the real work of ``split``: every participant
    of a step-count group (``clapjax.engine.data.step_groups``) runs the
    group's largest number of steps."""
    from clapjax.engine.data import group_work, step_groups, steps_per_epoch

    steps = steps_per_epoch(split.segment_counts(), batch_size)
    return group_work(steps, step_groups(steps, vmap_groups)) / max(int(steps.sum()), 1)


def choose_backend(backend: str, split: splits_lib.Split, vmap_groups: int = 4, batch_size: int = 128) -> str:
    """Resolves ``auto``: vmap, unless even its step-count groups would pad the
    participants to over ``AUTO_LOOP_OVERHEAD`` times the real work (then the
    Python loop over participants does less work)."""
    if backend != "auto":
        return backend
    return "loop" if vmap_overhead(split, vmap_groups, batch_size) > AUTO_LOOP_OVERHEAD else "vmap"


def default_workdir(config: RunConfig, split_label: str, k: int) -> Path:
    """``runs/<dataset>-<split>-<K>-<setting>-<variant>-seed<seed>`` for CLAP,
    ``runs/<method>-<dataset>-...`` for other methods (relative to cwd)."""
    prefix = "" if config.method == "clap" else f"{config.method}-"
    return Path("runs") / (
        f"{prefix}{config.dataset}-{split_label}-{k}-{config.setting}-{config.variant}-seed{config.seed}"
    )


def validate(config: RunConfig) -> ResolvedRun:
    """Checks the configuration and resolves split, options and workdir.

    Raises:
      ConfigError: any invalid flag or combination, naming the valid choices.
    """
    if config.dataset not in tables.DATASETS:
        raise ConfigError(f"--dataset {config.dataset!r}; valid: {', '.join(tables.DATASETS)}")
    if config.participants is not None and config.participants < 1:
        raise ConfigError(f"--participants must be >= 1, got {config.participants}")
    for name in ("rounds", "local_epochs"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if config.features_dir is not None:
        if not Path(config.features_dir).is_dir():
            raise ConfigError(f"--features-dir {config.features_dir}: no such directory")
        if config.preset != "default":
            raise ConfigError("--preset selects synthetic data; it cannot be combined with --features-dir")
    if config.train_segment_labels is not None:
        if config.features_dir is None:
            raise ConfigError("--train-segment-labels applies to real features (--features-dir); "
                              "synthetic data know their labels")
        if not Path(config.train_segment_labels).is_dir():
            raise ConfigError(f"--train-segment-labels {config.train_segment_labels}: no such directory")
    if config.preset not in PRESETS:
        raise ConfigError(f"--preset {config.preset!r}; valid: {', '.join(PRESETS)}")
    if config.setting != "collaborative" and config.aggregator != "fedavg":
        raise ConfigError(
            f"--aggregator {config.aggregator} needs --setting collaborative "
            f"({config.setting} training has no server aggregation)"
        )
    if config.quiet and config.json:
        raise ConfigError("--quiet and --json exclude each other")
    if config.plots and importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("--plots needs matplotlib: pip install 'clapjax[plots]'")

    split, label = load_split(config)
    if config.videos_per_participant is not None:
        if config.videos_per_participant < 1:
            raise ConfigError(f"--videos-per-participant must be >= 1, got {config.videos_per_participant}")
        from clapjax.data import shrink_split

        split = shrink_split(split, config.videos_per_participant)
        label = f"{label}-{config.videos_per_participant}vpp"
    k = split.num_participants
    weak = np.zeros(k, bool)
    if config.weak_labels and config.weak_participants:
        raise ConfigError("--weak-labels N and --weak-participants exclude each other")
    if not 0 <= config.weak_labels <= k:
        raise ConfigError(f"--weak-labels must be between 0 and K={k}, got {config.weak_labels}")
    weak[: config.weak_labels] = True
    for i in config.weak_participants:
        if not 0 <= i < k:
            raise ConfigError(f"--weak-participants: {i} is not a participant index (0..{k - 1})")
        if weak[i]:
            raise ConfigError(f"--weak-participants lists {i} twice")
        weak[i] = True

    spec = _check_method_flags(config)
    try:
        pseudo = option_groups.resolve(PseudoLabelOptions, config.variant, config.pl)
        model = None
        if spec.uses_scorer:
            model = dataclasses.replace(spec.model_options(config.variant),
                                        **option_groups.overrides_dict(config.model))
        method_options = None
        if spec.options is not None:
            method_options = spec.method_options(
                config.variant, option_groups.overrides_dict(getattr(config, spec.name)))
        fixed = dict(aggregator=config.aggregator, backend="vmap" if config.backend == "auto" else config.backend,
                     setting=config.setting, seed=config.seed)
        if config.rounds is not None:
            fixed["rounds"] = config.rounds
        if config.local_epochs is not None:
            fixed["local_epochs"] = config.local_epochs
        # The engine's preset, then the method's own training values, then the user's flags.
        train = TrainOptions.preset(config.variant, **spec.train_overrides(config.variant))
        train = dataclasses.replace(train, **{**option_groups.overrides_dict(config.train), **fixed})
        train = train.replace(backend=choose_backend(config.backend, split, train.vmap_groups, train.batch_size))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"invalid option: {err}") from None
    if train.plr_start_round is not None and train.plr_start_round >= train.rounds:
        # Not an error: PLR simply never runs. Kept as is, visible in config.json.
        pass

    run_split = splits_lib.centralized(split) if config.setting == "centralized" else split
    workdir = Path(config.workdir) if config.workdir is not None else default_workdir(config, label, k)
    if weak.any() and spec.pseudo_label is None:
        raise ConfigError(f"--weak-labels/--weak-participants: --method {spec.name} has no video labels to "
                          f"replace (it makes its pseudo-labels during training)")
    if train.plr_start_round is not None and spec.name != "clap":
        raise ConfigError(f"--train.plr-start-round: --method {spec.name} has no pseudo-label refinement "
                          f"(PLR is CLAP's); leave it unset")
    return ResolvedRun(config=config, split=run_split, federated_split=split,
                       pseudo_labels=pseudo, model=model, train=train, weak=weak,
                       workdir=workdir, split_label=label, method_options=method_options)


def _check_method_flags(config: RunConfig) -> methods_lib.MethodSpec:
    """The method's spec; flags of other methods' option groups are errors."""
    try:
        spec = methods_lib.spec(config.method)
    except ValueError as err:
        raise ConfigError(f"--method: {err}") from None
    for group in METHOD_GROUPS:
        if group != spec.name and option_groups.overrides_dict(getattr(config, group)):
            raise ConfigError(f"--{group}.* options apply to --method {group}, not --method {spec.name}")
    if not spec.uses_scorer and option_groups.overrides_dict(config.model):
        raise ConfigError(f"--model.* applies to the scorer of --method clap/c2fpl; --method {spec.name} "
                          f"has its own networks (--{spec.name}.*)")
    if not spec.uses_pseudo_label_options and option_groups.overrides_dict(config.pl):
        where = f" (its pseudo-label options are --{spec.name}.*)" if spec.options is not None else ""
        raise ConfigError(f"--pl.* applies to --method clap; not to --method {spec.name}{where}")
    if spec.name != "clap" and config.null_model != "server_mixture":
        raise ConfigError(f"--null-model applies to --method clap (CLAP's server mixture); --method {spec.name} "
                          f"fits each participant's own null")
    return spec
