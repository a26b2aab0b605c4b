"""The run configuration of ``python -m experiments.run`` and its validation.

``RunConfig`` is a frozen dataclass parsed by tyro. Top-level flags choose the
experiment (dataset, split, participants, setting, variant, ...); nested groups
``--pl.*``, ``--model.*`` and ``--train.*`` override single fields of the
library's option objects on top of the ``--variant`` preset.

``validate`` checks every combination before anything expensive runs and
returns a :class:`ResolvedRun` (the split, the option objects, the workdir).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
import tyro

from clapjax import methods as methods_lib
from clapjax import splits as splits_lib
from clapjax import tables
from clapjax.engine.options import TrainOptions
from clapjax.methods import C2FPLOptions, CLAWSOptions, GCLOptions, MILOptions
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
PRESENTATION = ("workdir", "overwrite", "quiet", "json", "plots", "debug", "memory_budget")
#: Dotted config.json paths that may change on an existing run: more rounds
#: continue from the last checkpoint (fewer than completed are refused).
EXTENDABLE = ("run.rounds", "resolved.train.rounds")


def _unset(metavar: str, meaning: str):
    """Help of an optional flag: what leaving it unset means, instead of "(default: None)"."""
    return tyro.conf.arg(metavar=metavar, help_behavior_hint=f"(default: {meaning})")
#: Flags that only a custom dataset (--dataset custom) takes.
CUSTOM_ONLY = ("annotations", "test_features_dir", "transductive", "segment_frames",
               "annotation_format", "annotation_convention")

PseudoLabelOverrides = option_groups.override_class(PseudoLabelOptions, "PseudoLabelOverrides")
ModelOverrides = option_groups.override_class(ModelOptions, "ModelOverrides")
TrainOverrides = option_groups.override_class(
    TrainOptions, "TrainOverrides", exclude=TOP_LEVEL_TRAIN
)
C2FPLOverrides = option_groups.override_class(C2FPLOptions, "C2FPLOverrides")
GCLOverrides = option_groups.override_class(GCLOptions, "GCLOverrides")
MILOverrides = option_groups.override_class(MILOptions, "MILOverrides")
CLAWSOverrides = option_groups.override_class(CLAWSOptions, "CLAWSOverrides")
#: Option groups of the methods' own options (``--<method>.*``), by method name.
METHOD_GROUPS = ("c2fpl", "gcl", "mil", "claws")


class ConfigError(ValueError):
    """An invalid combination of flags; the message lists the valid choices."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Run CLAP (CVPR 2024) unsupervised collaborative video anomaly detection,
    or a baseline (C2FPL, GCL; weakly supervised: MIL, CLAWS) trained the same
    federated way (--method).

    Writes a run directory (config.json, metrics.jsonl, summary.json,
    checkpoints/) and prints one line per round. Features are synthetic unless
    --features-dir (or feature lists) are given; synthetic numbers are not
    comparable to the paper's. --dataset custom runs on your own features,
    video lists and annotations.
    """

    method: Literal["clap", "c2fpl", "gcl", "mil", "claws"] = "clap"
    """Training method: clap, c2fpl (coarse-to-fine pseudo-labels, WACV 2024), gcl (generative cooperative learning, CVPR 2022), or the weakly supervised mil (Sultani et al., CVPR 2018) and claws (ECCV 2020), which train on every training video's true label; its own options are --c2fpl.* / --gcl.* / --mil.* / --claws.*."""
    dataset: Literal["ucf", "xd", "custom"] = "ucf"
    """Dataset whose structure (videos, lengths, splits, test ground truth) is used; custom: your own (--features-dir, --annotations)."""
    split: Literal["random", "event", "scene"] = "random"
    """Participant split kind (official split files unless --split-file/--generate-split)."""
    participants: Annotated[Optional[int], _unset("INT", "5 random, 13 event, 11 scene")] = None
    """Number of participants K."""
    setting: Literal["collaborative", "local", "centralized"] = "collaborative"
    """collaborative (FedAvg rounds), local (every participant alone), centralized (one holder)."""
    variant: Literal["paper", "reference"] = "paper"
    """Preset of every option: the paper's method or the released code's behaviour."""
    aggregator: Literal["fedavg", "fedprox", "scaffold"] = "fedavg"
    """Server aggregation (collaborative setting)."""
    rounds: Annotated[Optional[int], _unset("INT", "10, from --variant")] = None
    """Communication rounds. A finished or interrupted run can be extended: re-run it with a larger --rounds."""
    local_epochs: Annotated[Optional[int], _unset("INT", "1, from --variant")] = None
    """Local epochs per round."""
    features_dir: Annotated[Optional[Path], _unset("PATH", "synthetic features")] = None
    """Directory of real features (searched recursively: <video>.npy, <video>_i3d.npy, <video>__<crop>.npy, Sultani <video>.txt)."""
    train_list: Annotated[Optional[Path], _unset("PATH", "not used")] = None
    """ucf/xd: a feature .list file (RTFM/UR-DMU/XDVioDet paths) or, with --train-array, the released CLAP code's path,start,end list. custom: the training videos (names or paths, one per line)."""
    test_list: Annotated[Optional[Path], _unset("PATH", "not used")] = None
    """The test videos (names, paths or a feature .list; ucf/xd: a subset of the test table, numbers then not comparable to the paper's). custom default: every annotated video with features."""
    train_array: Annotated[Optional[Path], _unset("PATH", "not used")] = None
    """ucf/xd: one concatenated training feature array (S, [crops,] D), rows per video from the --train-list path,start,end list."""
    test_array: Annotated[Optional[Path], _unset("PATH", "not used")] = None
    """ucf/xd: one concatenated test feature array, rows from the --test-list path,start,end list."""
    feature_layout: Literal["auto", "segments-first", "crops-first"] = "auto"
    """Axis order of 3-D per-video files: (segments, crops, D) or (crops, segments, D); auto decides from the known segment counts (table or manifest)."""
    test_features_dir: Annotated[Optional[Path], _unset("PATH", "--features-dir")] = None
    """custom: a separate folder of test features (default --features-dir)."""
    annotations: tuple[Path, ...] = ()
    """custom: temporal annotation file(s): Sultani's 'name class s1 e1 s2 e2' text (0-based inclusive), the same with frame counts ('name frames class s1 e1 ...'), or UCSD's .mat (1-based ranges)."""
    annotation_format: Literal["auto", "sultani", "sultani-frames", "ucsd-mat"] = "auto"
    """custom: format of --annotations (auto: .mat -> ucsd-mat, text from its first line)."""
    annotation_convention: Literal["auto", "inclusive", "half-open", "inclusive-1based"] = "auto"
    """custom: meaning of start/end in --annotations (auto: the format's own, sultani 0-based inclusive, ucsd-mat 1-based inclusive)."""
    transductive: bool = False
    """custom: train (unlabelled) on every video of --features-dir, the test videos included."""
    segment_frames: Literal["auto", "clips", "sultani"] = "auto"
    """custom: clips = one feature row per 16-frame clip; sultani = each video compressed to a fixed number of segments (32), mapped to frames through its clips; auto = sultani where the row count is not the clip count of the video's known frame count."""
    ground_truth: Annotated[Optional[Path], _unset("PATH", "from the annotations")] = None
    """Your own frame ground truth: one concatenated .npy in test-list order, or a folder of <video>.npy; checked against the annotated intervals."""
    ground_truth_check: Literal["error", "warn"] = "error"
    """When --ground-truth disagrees with the annotated intervals (videos named): refuse (error) or warn."""
    crops: Literal["keep", "mean"] = "keep"
    """Crops of each segment: keep (score every crop and average the crop probabilities, as the paper and released code) or mean (one averaged feature per segment: crops x less memory and compute)."""
    memory_budget: Annotated[Optional[str], _unset("SIZE", "half the RAM, at most 90 percent of what is free")] = None
    """Memory the run may use, e.g. 12GiB. Features are held in memory only if the run fits; otherwise streamed from disk chunk by chunk (same numbers). --train.streaming True/False forces either."""
    train_segment_labels: Annotated[Optional[Path], _unset("PATH", "not logged")] = None
    """Real features only: folder of <video>.npy true segment (or frame) labels of training videos, to log SPL/PLR quality."""
    nonfinite: Literal["error", "drop"] = "error"
    """Real training features holding NaN/inf: stop with an error naming the video and file, or drop those segments (with a warning). Test features must be finite."""
    preset: Literal["default", "tiny"] = "default"
    """Synthetic data preset (synthetic features only; refused with --features-dir)."""
    split_file: Annotated[Optional[Path], _unset("PATH", "the official split")] = None
    """A split JSON in the shipped format (any K)."""
    videos_per_participant: Annotated[Optional[int], _unset("INT", "all videos")] = None
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
    workdir: Annotated[Optional[Path], _unset("PATH", "runs/<dataset>-<split>-<K>-<setting>-<variant>-seed<seed>")] = None
    """Run directory (locked while a run uses it)."""
    overwrite: bool = False
    """Replace an existing run directory of a different configuration."""
    quiet: bool = False
    """Print only the final result line."""
    json: bool = False
    """Print JSON lines only (round, stage and summary events) on stdout."""
    plots: bool = False
    """Write PNG plots into <workdir>/plots (needs matplotlib)."""
    debug: bool = False
    """Show the Python traceback of an error (otherwise one line: error: <file or video>: <problem> (<hint>))."""
    pl: Annotated[PseudoLabelOverrides, tyro.conf.arg(name="pl")] = PseudoLabelOverrides()
    model: ModelOverrides = ModelOverrides()
    train: TrainOverrides = TrainOverrides()
    c2fpl: C2FPLOverrides = C2FPLOverrides()
    gcl: GCLOverrides = GCLOverrides()
    mil: MILOverrides = MILOverrides()
    claws: CLAWSOverrides = CLAWSOverrides()


@dataclasses.dataclass(frozen=True, eq=False)
class ResolvedRun:
    """A validated run: everything the pipeline needs.

    Attributes:
      config: the parsed configuration.
      custom: the :class:`clapjax.data.CustomDataset` of ``--dataset custom`` (else None).
      split: participants of the training set (centralized: one participant).
      federated_split: the split before centralisation (for reports).
      pseudo_labels / model / train: the resolved option objects (``model``
        is None for a method without CLAP's scorer, e.g. GCL).
      method_options: the method's own options (None for CLAP).
      weak: ``[K] bool`` participants given their true video labels.
      workdir: the run directory.
      split_label: short name of the split (workdir, reports).
      memory_budget: bytes the run may use (``--memory-budget`` or the default).
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
    custom: Any = None
    memory_budget: int = 0
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
        return uses_synthetic(self.config)

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
        if self.custom is not None:
            resolved["split"]["participant_videos"] = [
                self.federated_split.names(k) for k in range(self.federated_split.num_participants)]
            resolved["dataset"] = self.custom.describe()
        return {"run": run, "resolved": resolved}


def _official_choices(dataset: str) -> str:
    combos = splits_lib.available()[dataset]
    by_kind: dict[str, list[int]] = {}
    for kind, k in combos:
        by_kind.setdefault(kind, []).append(k)
    return "; ".join(f"--split {kind} --participants {'/'.join(map(str, ks))}"
                     for kind, ks in by_kind.items())


def _is_feature_list(path: Path | None) -> bool:
    """A list whose entries are feature files (or path,start,end rows), not bare names."""
    if path is None or not Path(path).is_file():
        return False
    for raw in Path(path).read_text(errors="replace").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            token = line.split()[0]
            return token.endswith((".npy", ".txt")) or token.count(",") == 2
    return False


def uses_synthetic(config: RunConfig) -> bool:
    """Whether the run reads the embedded synthetic features."""
    if config.dataset == "custom":
        return False
    return (config.features_dir is None and config.train_array is None and config.test_array is None
            and not _is_feature_list(config.train_list))


def _custom_split(config: RunConfig, table) -> tuple[splits_lib.Split, str]:
    """Split of a custom dataset: given (--split-file) or generated from --seed."""
    if config.split_file is not None:
        try:
            split = splits_lib.from_file(config.split_file, table)
        except (FileNotFoundError, splits_lib.SplitError) as err:
            raise ConfigError(str(err)) from None
        if config.participants is not None and config.participants != split.num_participants:
            raise ConfigError(f"--participants {config.participants} but {config.split_file} has "
                              f"{split.num_participants} participants (omit --participants)")
        return split, f"file_{Path(config.split_file).stem}"
    kind = config.split
    k = config.participants if config.participants is not None else DEFAULT_PARTICIPANTS[kind]
    try:
        if kind == "random":
            split = splits_lib.random_split(table, k, seed=config.seed)
        elif kind == "event":
            split = splits_lib.event_split(table, seed=config.seed)
        else:
            raise ConfigError("--split scene needs the official UCF-Crime scenes; for a custom "
                              "dataset give the participants with --split-file FILE")
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"--split {kind} on the custom dataset: {err}") from None
    if split.num_participants != k and config.participants is not None:
        raise ConfigError(f"the custom dataset's event split has {split.num_participants} "
                          f"participants (one per anomaly class), not {k}; omit --participants")
    return split, f"{kind}gen"


def load_split(config: RunConfig, table=None) -> tuple[splits_lib.Split, str]:
    """The training split named by the configuration, and its short label.

    ``table``: a custom dataset's train table (``--dataset custom``).
    """
    ds = config.dataset
    if table is not None:
        return _custom_split(config, table)
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
        return split, f"{kind}-generated"
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


def vmap_overhead(split: splits_lib.Split, vmap_groups: int, batch_size: int = 128,
                  max_overhead: float = 1.5) -> float:
    """Work of the vmap backend over the real work of ``split``: every participant
    of a step-count group (``clapjax.engine.data.adaptive_step_groups``, as the
    engine forms them) runs the group's largest number of steps."""
    from clapjax.engine.data import adaptive_step_groups, group_work, steps_per_epoch

    steps = steps_per_epoch(split.segment_counts(), batch_size)
    return group_work(steps, adaptive_step_groups(steps, vmap_groups, max_overhead)) / max(int(steps.sum()), 1)


def choose_backend(backend: str, split: splits_lib.Split, vmap_groups: int = 4, batch_size: int = 128,
                   max_overhead: float = 1.5) -> str:
    """Resolves ``auto``: vmap, unless even its step-count groups would pad the
    participants to over ``AUTO_LOOP_OVERHEAD`` times the real work (then the
    Python loop over participants does less work)."""
    if backend != "auto":
        return backend
    return "loop" if vmap_overhead(split, vmap_groups, batch_size, max_overhead) > AUTO_LOOP_OVERHEAD else "vmap"


def default_workdir(config: RunConfig, split_label: str, k: int) -> Path:
    """``runs/<dataset>-<split>-<K>-<setting>-<variant>-seed<seed>`` (relative to cwd;
    a custom dataset is named ``custom-<features folder>``), prefixed with
    ``<method>-`` for methods other than CLAP."""
    ds = config.dataset
    if ds == "custom" and config.features_dir is not None:
        folder = Path(config.features_dir)
        ds = f"custom-{folder.name or folder.resolve().name}"
    prefix = "" if config.method == "clap" else f"{config.method}-"
    return Path("runs") / (
        f"{prefix}{ds}-{split_label}-{k}-{config.setting}-{config.variant}-seed{config.seed}"
    )


#: Option classes -> their command-line group (top-level train fields are plain flags).
_GROUPS = {"PseudoLabelOptions": "pl", "ModelOptions": "model", "TrainOptions": "train"}


def _flag_names(message: str) -> str:
    """``TrainOptions.lr must be ...`` -> ``--train.lr: must be ...`` (the flag a user types)."""
    def flag(m: re.Match) -> str:
        group, field = _GROUPS[m.group(1)], m.group(2)
        dashed = field.replace("_", "-")
        return f"--{dashed}" if group == "train" and field in TOP_LEVEL_TRAIN else f"--{group}.{dashed}"

    out = re.sub(r"\b(PseudoLabelOptions|ModelOptions|TrainOptions)\.(\w+)(?:=(\S+?))?[;:]?(?=\s|$)",
                 lambda m: flag(m) + (f" {m.group(3)}" if m.group(3) else "") + ":", message, count=1)
    return out


def _normalised_paths(config: RunConfig) -> RunConfig:
    """Absolute, symlink-resolved paths, so a relative and an absolute spelling of one
    folder are the same run (config.json records these)."""
    changes = {}
    for name in _PATH_FLAGS:
        value = getattr(config, name)
        if value is not None:
            changes[name] = _absolute(value)
    if config.annotations:
        changes["annotations"] = tuple(_absolute(p) for p in config.annotations)
    return dataclasses.replace(config, **changes) if changes else config


#: Path-valued flags (made absolute by ``_normalised_paths``).
_PATH_FLAGS = ("features_dir", "test_features_dir", "train_list", "test_list", "train_array",
               "test_array", "ground_truth", "train_segment_labels", "split_file")


def _absolute(path) -> Path:
    out = Path(os.path.abspath(Path(path).expanduser()))
    with contextlib.suppress(OSError):
        out = out.resolve()
    return out


def _check_data_flags(config: RunConfig) -> None:
    """Feature, list and annotation flags: existence and valid combinations."""
    for flag in ("features_dir", "test_features_dir", "train_segment_labels"):
        value = getattr(config, flag)
        if value is not None and not Path(value).is_dir():
            raise ConfigError(f"--{flag.replace('_', '-')} {value}: no such directory (check the path)")
    for flag in ("train_list", "test_list", "train_array", "test_array", "split_file"):
        value = getattr(config, flag)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"--{flag.replace('_', '-')} {value}: no such file (check the path)")
    for path in config.annotations:
        if not Path(path).is_file():
            raise ConfigError(f"--annotations {path}: no such file")
    if config.ground_truth is not None and not Path(config.ground_truth).exists():
        raise ConfigError(f"--ground-truth {config.ground_truth}: no such file or directory")
    if config.dataset == "custom":
        if config.features_dir is None:
            raise ConfigError("--dataset custom needs --features-dir DIR (your extracted features)")
        if not config.annotations:
            raise ConfigError("--dataset custom needs --annotations FILE (the test videos' anomaly "
                              "intervals: Sultani's 'name class s1 e1 s2 e2' text or UCSD's .mat)")
        for flag in ("train_array", "test_array"):
            if getattr(config, flag) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} applies to ucf/xd; a custom dataset "
                                  "reads per-video files from --features-dir")
        if config.preset != "default":
            raise ConfigError("--preset selects synthetic data; it cannot be combined with --dataset custom")
        return
    defaults = RunConfig()
    for flag in CUSTOM_ONLY:
        if getattr(config, flag) != getattr(defaults, flag):
            hint = (" (ucf/xd annotations ship with the repository; --ground-truth FILE gives your "
                    "own frame ground truth)" if flag == "annotations" else "")
            raise ConfigError(f"--{flag.replace('_', '-')} applies to --dataset custom{hint}")
    if config.train_list is not None and not _is_feature_list(config.train_list):
        raise ConfigError(f"--train-list {config.train_list}: for {config.dataset} it lists feature files "
                          "(.npy/.txt paths, or path,start,end rows); the training videos come from "
                          "the split (--split-file to choose them)")
    if config.train_array is not None and not _is_feature_list(config.train_list):
        raise ConfigError("--train-array needs --train-list LIST of path,start,end rows (the released CLAP code's list)")
    if config.test_array is not None and not _is_feature_list(config.test_list):
        raise ConfigError("--test-array needs --test-list LIST of path,start,end rows (the released CLAP code's list)")
    if uses_synthetic(config):
        if config.train_list is not None:
            raise ConfigError("--train-list names feature files; with synthetic features there are none")
        if config.feature_layout != "auto":
            raise ConfigError("--feature-layout applies to real feature files")
    else:
        if config.preset != "default":
            raise ConfigError("--preset selects synthetic data; it cannot be combined with real features")
        has_test = (config.features_dir is not None or config.test_array is not None
                    or _is_feature_list(config.test_list))
        if not has_test:
            raise ConfigError("real training features but no test features: give --features-dir, "
                              "--test-list FEATURE_LIST or --test-array")


def validate(config: RunConfig) -> ResolvedRun:
    """Checks the configuration and resolves split, options and workdir.

    Raises:
      ConfigError: any invalid flag or combination, naming the valid choices.
    """
    if config.dataset not in tables.DATASETS + ("custom",):
        raise ConfigError(f"--dataset {config.dataset!r}; valid: {', '.join(tables.DATASETS)}, custom")
    if config.participants is not None and config.participants < 1:
        raise ConfigError(f"--participants must be >= 1, got {config.participants}")
    for name in ("rounds", "local_epochs"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    config = _normalised_paths(config)
    _check_data_flags(config)
    if config.train_segment_labels is not None and uses_synthetic(config):
        raise ConfigError("--train-segment-labels applies to real features (--features-dir); "
                          "synthetic data know their labels")
    if config.nonfinite != "error" and uses_synthetic(config):
        raise ConfigError("--nonfinite drop applies to real features (--features-dir); synthetic features are finite")
    if config.preset not in PRESETS:
        raise ConfigError(f"--preset {config.preset!r}; valid: {', '.join(PRESETS)}")
    if config.setting != "collaborative" and config.aggregator != "fedavg":
        raise ConfigError(
            f"--aggregator {config.aggregator} needs --setting collaborative "
            f"({config.setting} training has no server aggregation)"
        )
    from clapjax import resources

    try:
        budget = (resources.default_memory_budget() if config.memory_budget in (None, "auto")
                  else resources.parse_bytes(config.memory_budget))
    except ValueError as err:
        raise ConfigError(f"--memory-budget: {err}") from None
    if config.quiet and config.json:
        raise ConfigError("--quiet and --json exclude each other")
    if config.plots and importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("--plots needs matplotlib: pip install 'clapjax[plots]'")

    custom = None
    if config.dataset == "custom":
        from clapjax import data

        custom = data.custom_dataset(
            config.features_dir, annotations=config.annotations, train_list=config.train_list,
            test_list=config.test_list, test_features_dir=config.test_features_dir,
            transductive=config.transductive, layout=config.feature_layout.replace("-", "_"),
            segment_frames=config.segment_frames, crops=config.crops,
            annotation_format=config.annotation_format.replace("-", "_"),
            annotation_convention=config.annotation_convention.replace("-", "_"),
            nonfinite=config.nonfinite, name="custom",
        )
    split, label = load_split(config, None if custom is None else custom.train_table)
    if config.videos_per_participant is not None:
        if config.videos_per_participant < 1:
            raise ConfigError(f"--videos-per-participant must be >= 1, got {config.videos_per_participant}")
        from clapjax.data import shrink_split

        split = shrink_split(split, config.videos_per_participant)
        label = f"{label}-{config.videos_per_participant}-videos-per-participant"
    k = split.num_participants
    weak = np.zeros(k, bool)
    if config.weak_labels and config.weak_participants:
        raise ConfigError("--weak-labels N and --weak-participants exclude each other")
    if not 0 <= config.weak_labels <= k:
        raise ConfigError(f"--weak-labels must be between 0 and K={k}, got {config.weak_labels}")
    if (config.weak_labels or config.weak_participants) and not split.table.labels_known:
        raise ConfigError("weak supervision (--weak-labels/--weak-participants) needs the true video "
                          "labels of the training videos; annotate every training video in --annotations")
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
        train = train.replace(backend=choose_backend(config.backend, split, train.vmap_groups, train.batch_size,
                                                     train.vmap_max_overhead))
    except (ValueError, TypeError) as err:
        raise ConfigError(_flag_names(str(err))) from None
    if train.plr_start_round is not None and train.plr_start_round >= train.rounds:
        # Not an error: PLR simply never runs. Kept as is, visible in config.json.
        pass

    run_split = splits_lib.centralized(split) if config.setting == "centralized" else split
    workdir = Path(config.workdir) if config.workdir is not None else default_workdir(config, label, k)
    if weak.any() and spec.weakly_supervised:
        raise ConfigError(f"--weak-labels/--weak-participants: --method {spec.name} is weakly supervised: it "
                          f"always trains on every training video's true label")
    if spec.weakly_supervised and not split.table.labels_known:
        raise ConfigError(f"--method {spec.name} is weakly supervised and needs the label of every training "
                          f"video; annotate every training video in --annotations (normal ones with no interval)")
    if weak.any() and spec.pseudo_label is None:
        raise ConfigError(f"--weak-labels/--weak-participants: --method {spec.name} has no video labels to "
                          f"replace (it makes its pseudo-labels during training)")
    if train.plr_start_round is not None and spec.name != "clap":
        raise ConfigError(f"--train.plr-start-round: --method {spec.name} has no pseudo-label refinement "
                          f"(PLR is CLAP's); leave it unset")
    return ResolvedRun(config=config, split=run_split, federated_split=split,
                       pseudo_labels=pseudo, model=model, train=train, weak=weak,
                       workdir=workdir, split_label=label, custom=custom, memory_budget=budget,
                       method_options=method_options)


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
