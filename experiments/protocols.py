"""The paper's protocols, one command each, as markdown tables beside its numbers.

    python -m experiments.protocols table1       # GCL / C2FPL / CLAP x centralized / local / collaborative, UCF and XD
    python -m experiments.protocols table3       # random 5/10/25/50, event 13, scene 11
    python -m experiments.protocols ablation     # local nulls; + server mixture; + PLR (random 5)
    python -m experiments.protocols aggregators  # FedAvg / FedProx / SCAFFOLD (scene 11)
    python -m experiments.protocols weak         # 0/10/17/25 of 25 participants weakly labelled
    python -m experiments.protocols seeds        # 5 seeds (seeded random splits, K=5): mean ± std
    python -m experiments.protocols weak_methods # MIL / CLAWS x 3 settings, CLAP with every participant weakly labelled

Every run is an ordinary ``experiments.run`` run directory under
``<workdir>/<protocol>/<row>``; re-running a protocol resumes or reuses them.
The table goes to stdout and to ``<workdir>/<protocol>.md`` (or ``--out``).
Features are synthetic unless ``--features-dir`` is given, and the table says
so: synthetic numbers are not comparable to the paper's I3D results.
"""

from __future__ import annotations

import dataclasses
import io
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence

import tyro

from clapjax.report import tables
from experiments.config import _unset
from clapjax.report.progress import format_seconds
from experiments.config import RunConfig, TrainOverrides

Protocol = Literal["table1", "table3", "ablation", "aggregators", "weak", "seeds", "weak_methods"]
PROTOCOLS = ("table1", "table3", "ablation", "aggregators", "weak", "seeds", "weak_methods")

TITLES = {
    "table1": "Table 1: GCL / C2FPL / CLAP, centralized / local / collaborative (random split, 5 participants)",
    "table3": "Table 3: participant splits (UCF-Crime, collaborative)",
    "ablation": "Table 4: ablation (UCF-Crime, random 5, collaborative FedAvg)",
    "aggregators": "Supplementary §6: aggregators on the scene split (UCF-Crime, 11 participants)",
    "weak": "Figure 4 (right): participants with weak video-level labels (UCF-Crime, random 25)",
    "seeds": "Supplementary §7: seed variation (UCF-Crime, seeded random splits, 5 participants)",
    "weak_methods": ("Weakly supervised: MIL (Sultani) and CLAWS, centralized / local / collaborative, and CLAP "
                     "with every participant's video labels (UCF-Crime, random split, 5 participants)"),
}


class ProtocolError(ValueError):
    """Invalid protocol arguments."""


@dataclasses.dataclass(frozen=True)
class ProtocolArgs:
    """Run one of the paper's protocols and write a markdown table beside its numbers."""

    protocol: Annotated[Protocol, tyro.conf.Positional]
    """table1 | table3 | ablation | aggregators | weak | seeds | weak_methods"""
    preset: Literal["default", "tiny"] = "default"
    """Synthetic data preset (ignored with --features-dir)."""
    features_dir: Annotated[Optional[Path], _unset("PATH", "synthetic features")] = None
    """Real UCF-Crime features (train and test files); synthetic when absent."""
    xd_features_dir: Annotated[Optional[Path], _unset("PATH", "synthetic features")] = None
    """Real XD-Violence features (table1's XD rows); required with --features-dir for table1."""
    variant: Literal["paper", "reference"] = "paper"
    """Variant of every run."""
    methods: tuple[Literal["gcl", "c2fpl", "clap"], ...] = ("gcl", "c2fpl", "clap")
    """table1: the methods of its rows (in this order within each setting)."""
    rounds: Annotated[Optional[int], _unset("INT", "each method's own; CLAP's budget: paper 11, reference 10")] = None
    """Rounds per run."""
    local_epochs: Annotated[Optional[int], _unset("INT", "the variant's, 1")] = None
    """Local epochs per round."""
    seeds: int = 5
    """Number of seeds of the seeds protocol."""
    seed: int = 0
    """Seed of every run (the seeds protocol uses seed, seed+1, ...)."""
    videos_per_participant: Annotated[Optional[int], _unset("INT", "all videos")] = None
    """Quick runs: keep only N anomalous + N normal videos per participant."""
    backend: Literal["auto", "vmap", "loop", "sharded"] = "auto"
    """Execution backend of every run."""
    workdir: Path = Path("runs/protocols")
    """Root of the protocol's run directories."""
    out: Annotated[Optional[Path], _unset("PATH", "<workdir>/<protocol>-<preset or real>.md")] = None
    """Markdown output file."""
    overwrite: bool = False
    """Replace run directories of a different configuration."""
    plots: bool = False
    """Also write an AUC-per-round comparison plot next to the table (weak_methods: and one ROC plot per method)."""
    quiet: bool = False
    """Print only the table."""


@dataclasses.dataclass(frozen=True)
class RowSpec:
    """One table row: its label, the paper's number and the runs behind it."""

    label: str
    paper: float | str | None
    configs: tuple[RunConfig, ...]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "row"


def _base(args: ProtocolArgs, **changes: Any) -> RunConfig:
    features_dir = args.features_dir
    if changes.get("dataset") == "xd" and args.features_dir is not None:
        if args.xd_features_dir is None:
            raise ProtocolError("real features for XD-Violence rows: give --xd-features-dir "
                             "(--features-dir holds the UCF-Crime features)")
        features_dir = args.xd_features_dir
    return RunConfig(
        preset=args.preset if features_dir is None else "default",
        features_dir=features_dir, variant=args.variant, rounds=args.rounds,
        local_epochs=args.local_epochs, seed=args.seed, backend=args.backend,
        videos_per_participant=args.videos_per_participant, quiet=True, overwrite=args.overwrite,
        **changes,
    )


def _plr_start(args: ProtocolArgs) -> int:
    """PLR start round of the variant, or the paper's when the variant has none."""
    from clapjax.engine.options import TrainOptions

    start = TrainOptions.preset(args.variant).plr_start_round
    return TrainOptions.preset("paper").plr_start_round if start is None else start


def rows_for(args: ProtocolArgs) -> list[RowSpec]:
    """The rows (and run configurations) of a protocol."""
    p = args.protocol
    paper = tables.PAPER_AUC[p]
    if p == "table1":
        from clapjax.methods import spec

        if not args.methods:
            raise ProtocolError("--methods: give at least one of gcl, c2fpl, clap")
        return [RowSpec(f"{ds} {setting} {spec(m).title}", paper[f"{m} {ds}/{setting}"],
                        (_base(args, dataset=ds, split="random", participants=5, setting=setting, method=m),))
                for ds in ("ucf", "xd") for setting in ("centralized", "local", "collaborative")
                for m in args.methods]
    if p == "table3":
        combos = [("random", 5), ("random", 10), ("random", 25), ("random", 50), ("event", 13), ("scene", 11)]
        return [RowSpec(f"{kind} {k}", paper[f"{kind} {k}"], (_base(args, split=kind, participants=k),))
                for kind, k in combos]
    if p == "ablation":
        no_plr = TrainOverrides(plr_start_round="none")
        with_plr = TrainOverrides(plr_start_round=_plr_start(args))
        return [
            RowSpec("local nulls", paper["local nulls"],
                    (_base(args, participants=5, null_model="local", train=no_plr),)),
            RowSpec("+ server mixture", paper["+ server mixture"],
                    (_base(args, participants=5, train=no_plr),)),
            RowSpec("+ PLR", paper["+ PLR"], (_base(args, participants=5, train=with_plr),)),
        ]
    if p == "aggregators":
        return [RowSpec(agg, paper[agg], (_base(args, split="scene", participants=11, aggregator=agg),))
                for agg in ("fedavg", "fedprox", "scaffold")]
    if p == "weak":
        return [RowSpec(f"{n}/25", paper[f"{n}/25"],
                        (_base(args, split="random", participants=25, weak_labels=n),))
                for n in (0, 10, 17, 25)]
    if p == "weak_methods":
        from clapjax.methods import spec

        rows = [RowSpec(f"{setting} {spec(m).title}", paper[f"{m} {setting}"],
                        (_base(args, split="random", participants=5, setting=setting, method=m),))
                for m in ("mil", "claws") for setting in ("centralized", "local", "collaborative")]
        rows.append(RowSpec("collaborative CLAP, 5/5 weakly labelled", paper["clap weak"],
                            (_base(args, split="random", participants=5, weak_labels=5),)))
        return rows
    if p == "seeds":
        if args.seeds < 2:
            raise ProtocolError(f"--seeds must be >= 2 for a mean ± std, got {args.seeds}")
        mean, std = tables.PAPER_SEEDS
        configs = tuple(
            dataclasses.replace(_base(args, split="random", participants=5, generate_split=True),
                                seed=args.seed + i)
            for i in range(args.seeds))
        return [RowSpec(f"{args.seeds} seeds", f"{mean:.2f} ± {std:.2f}", configs)]
    raise ValueError(f"unknown protocol {p!r}; valid: {', '.join(PROTOCOLS)}")


def _notes(args: ProtocolArgs) -> list[str]:
    from clapjax import methods
    from clapjax.engine.options import TrainOptions

    rounds = args.rounds or TrainOptions.preset(
        args.variant, **methods.spec("clap").train_overrides(args.variant)).rounds
    notes = [f"Variant: {args.variant}; {rounds} rounds per CLAP run; seed {args.seed}."]
    if args.videos_per_participant is not None:
        notes.append(f"Quick run: only {args.videos_per_participant} anomalous + "
                     f"{args.videos_per_participant} normal videos per participant.")
    if args.protocol == "weak":
        notes.append("The paper shows these as bars (Fig. 4 right) without values; 0/25 is its "
                     "Table 3 random-25 number. Table 2 reports 83.23 for fully weakly supervised "
                     "collaborative training (UCF).")
    if args.protocol == "weak_methods":
        notes.append("MIL and CLAWS are this library's implementations (clapjax.methods.mil from Sultani et al.'s "
                     "paper and released code, clapjax.methods.claws from the CLAWS paper's outline and stated "
                     "choices; see their module docstrings), trained on every training video's true label, each "
                     "video compressed to 32 segments. Paper column: each paper's own centralized UCF-Crime "
                     "number with C3D features (MIL 75.41, CLAWS 83.03) and CLAP's Table 2 (I3D, fully weakly "
                     "supervised, collaborative); no paper reports federated MIL or CLAWS.")
        notes.append("Local: mean over the 5 participants' own models, each on the full test set.")
    if args.protocol == "seeds":
        notes.append("Each seed also generates its own balanced random split (as in the paper's "
                     "supplementary); ± is the sample std over seeds.")
    if args.protocol == "ablation":
        start = _plr_start(args)
        notes.append(f"PLR refines labels from round {start + 1} on (of {rounds}).")
        notes.append("'local nulls': each participant's SPL scores against its own null Gaussian "
                     "(no server mixture), no PLR; '+ server mixture': CLAP's mixture, no PLR; "
                     "'+ PLR': full CLAP.")
    if args.protocol == "table1":
        notes.append("Local: mean over the 5 participants' own models, each on the full test set.")
        if set(args.methods) - {"clap"}:
            notes.append("C2FPL and GCL are this library's implementations (clapjax.methods: C2FPL from its "
                         "paper and released code, GCL from its paper; see their module docstrings), trained "
                         "by the same engine, splits and evaluation as CLAP; each participant pseudo-labels "
                         "its own videos. The paper's baseline numbers come from the CLAP authors' "
                         "re-implementation, which is not public.")
        if args.rounds is None and args.variant == "reference" and "c2fpl" in args.methods:
            notes.append("Rounds: C2FPL's reference preset trains 20 rounds (its train.sh), the others 10.")
    return notes


def run_protocol(args: ProtocolArgs, out=None) -> str:
    """Runs every row of a protocol and returns (and writes) the markdown report."""
    from experiments import run as run_lib

    out = out if out is not None else sys.stdout
    rows = rows_for(args)
    root = Path(args.workdir) / args.protocol
    t_all = time.perf_counter()
    total_work = 0.0
    results: list[tables.ResultRow] = []
    curves: dict[str, list[dict]] = {}
    n_runs = sum(len(r.configs) for r in rows)
    i = 0
    for row in rows:
        summaries, run_seconds = [], []
        for j, cfg in enumerate(row.configs):
            i += 1
            name = _slug(row.label) + (f"/seed{cfg.seed}" if len(row.configs) > 1 else "")
            cfg = dataclasses.replace(cfg, workdir=root / name)
            t_run = time.perf_counter()
            summary = run_lib.execute(cfg, out=io.StringIO())
            summaries.append(summary)
            run_seconds.append(_working_seconds(summary, time.perf_counter() - t_run))
            if not args.quiet:
                fin = summary["final"]["auc"] if summary.get("final") else None
                print(f"[{i}/{n_runs}] {args.protocol} {row.label}"
                      + (f" seed {cfg.seed}" if len(row.configs) > 1 else "")
                      + f": final AUC {'n/a' if fin is None else f'{fin:.4f}'}"
                      + f" ({format_seconds(time.perf_counter() - t_run)})", file=sys.stderr, flush=True)
            if j == 0:
                from clapjax.report.rundir import RunDir

                curves[row.label] = RunDir(root / name).read_metrics()
        seconds = sum(run_seconds)
        total_work += seconds
        if len(summaries) == 1:
            results.append(tables.ResultRow(row.label, row.paper, summaries[0], seconds))
        else:
            finals = [s["final"]["auc"] for s in summaries if s.get("final")]
            bests = [s["best"]["auc"] for s in summaries if s.get("best")]
            fm, fs = tables.mean_std(finals)
            bm, bs = tables.mean_std(bests)
            aps = {k: tables.mean_std([s["final"][k] for s in summaries if s.get("final")])[0]
                   for k in ("ap_sklearn", "ap_trapezoid")}
            merged = {"final": {"auc": fm, **aps}, "best": {"auc": bm, "selected_on": "test set"}}
            results.append(tables.ResultRow(row.label, row.paper, merged, seconds,
                                            runs=len(summaries), final_std=fs, best_std=bs))
    total = time.perf_counter() - t_all
    if total_work > total + 1.0:  # some runs had finished before this invocation
        notes_extra = [f"Runs finished before this invocation are reused; their times are their own "
                       f"working times (summary.json timing_s.elapsed_s), {format_seconds(total_work)} "
                       f"in all; this invocation took {format_seconds(total)}."]
    else:
        notes_extra = []
    synthetic = args.features_dir is None
    features = f"preset {args.preset}" if synthetic else f"real features from {args.features_dir}"
    md = tables.protocol_markdown(TITLES[args.protocol], results, features=features,
                                  synthetic=synthetic, total_seconds=total, notes=_notes(args) + notes_extra)
    target = args.out or (Path(args.workdir) / f"{args.protocol}-{args.preset if synthetic else 'real'}.md")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(md)
    if args.plots:
        from clapjax.report import plots

        plots.auc_per_round(curves, target.with_suffix(".png"), title=TITLES[args.protocol], synthetic=synthetic)
        if args.protocol == "weak_methods":
            _roc_plots(rows, root, target)
    print(md, file=out, flush=True)
    if not args.quiet:
        print(f"table written to {target}", file=sys.stderr)
    return md


def _working_seconds(summary: dict, measured: float) -> float:
    """Wall seconds a run worked, over all its sessions (``timing_s.elapsed_s``
    of its summary.json; a finished run read back keeps its own time), else the
    time measured around it here."""
    value = (summary.get("timing_s") or {}).get("elapsed_s")
    return float(value) if value is not None else float(measured)


def _roc_plots(rows: list[RowSpec], root: Path, target: Path) -> list[Path]:
    """One ROC plot per method (its rows' final models) beside the table: ``<table>-roc-<method>.png``."""
    from clapjax.report import plots
    from experiments.run import roc_of_run

    by_method: dict[str, dict] = {}
    for row in rows:
        method = row.configs[0].method
        by_method.setdefault(method, {}).update(roc_of_run(root / _slug(row.label), row.label))
    return [plots.roc_curves(curves, target.with_name(f"{target.stem}-roc-{method}.png"),
                             title=f"{method}: frame-level ROC of the final models")
            for method, curves in by_method.items()]


def main(argv: Sequence[str] | None = None) -> str:
    args = tyro.cli(ProtocolArgs, args=argv, prog="python -m experiments.protocols")
    return run_protocol(args)


def cli(argv: Sequence[str] | None = None) -> int:
    """Console entry point: one-line errors with exit status 2 (as ``experiments.run``)."""
    from experiments.run import describe_error

    try:
        main(argv)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - describe_error decides what is user-facing
        message = " ".join(str(e).split()) if isinstance(e, ProtocolError) else describe_error(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
