"""``python -m experiments.run``: one CLAP experiment with a run directory.

Example (the paper's event split, 13 participants, synthetic features)::

    python -m experiments.run --split=event --participants=13

Stages: data → statistics → VPL → null model → server mixture → SPL →
rounds (+PLR) → evaluation (see :mod:`clapjax.pipeline`). Every round appends
one line to ``<workdir>/metrics.jsonl`` and checkpoints the engine state, so
re-running the same command resumes; ``--help`` lists every option.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tyro

from experiments.config import ConfigError, ResolvedRun, RunConfig, validate


@dataclasses.dataclass
class RunHooks:
    """Test/automation hooks (not command-line options).

    Attributes:
      after_round: called with ``(round, metrics record)`` after the round is
        checkpointed and logged; raising stops the run like a kill would.
    """

    after_round: Callable[[int, dict], None] | None = None


def _features_description(resolved: ResolvedRun) -> str:
    c = resolved.config
    if c.dataset == "custom":
        test = f", test features from {c.test_features_dir}" if c.test_features_dir else ""
        return f"custom dataset: real features from {c.features_dir}{test}"
    if not resolved.synthetic:
        origin = c.features_dir or c.train_array or c.train_list
        return f"real features from {origin}"
    return f"synthetic features (preset {c.preset})"


def open_sources(resolved: ResolvedRun):
    """Train and test feature sources of the configuration, checked against each other.

    Only the files of the videos the run uses are opened: the training videos
    of the (possibly shrunk) split, and the test videos (``--test-list``).
    """
    from clapjax import data

    c = resolved.config
    if resolved.custom is not None:
        return resolved.custom.train, resolved.custom.test
    used = np.unique(np.concatenate([np.asarray(p, np.int64) for p in resolved.split.participants]))
    test_videos = None if c.test_list is None else data.read_video_list(c.test_list)
    if resolved.synthetic:
        cfg = data.SyntheticConfig.preset(c.preset)
        return (data.open_source(c.dataset, "train", synthetic=cfg, videos=used),
                data.open_source(c.dataset, "test", synthetic=cfg, videos=test_videos))
    layout = c.feature_layout.replace("-", "_")

    def origin(array, listing) -> dict:
        if array is not None:
            return dict(concatenated=array, ranges=listing)
        from experiments.config import _is_feature_list

        if _is_feature_list(listing):
            return dict(features_dir=c.features_dir, list_file=listing, layout=layout)
        return dict(features_dir=c.features_dir, layout=layout)

    train = data.open_source(c.dataset, "train", videos=used, **origin(c.train_array, c.train_list))
    test = data.open_source(c.dataset, "test", videos=test_videos, **origin(c.test_array, c.test_list))
    data.check_compatible(train, test)
    return train, test


def pseudo_label_report(ts, pl) -> dict[str, Any]:
    """Quality of VPL and SPL against the truth (``pseudo_labels.json``)."""
    from clapjax.report import quality

    if ts.true_video_labels is None:  # a custom dataset with unlabelled training videos
        unknown = {"accuracy": None, "per_participant": [None] * ts.num_participants}
        return {
            "vpl": unknown, "video_labels_used": unknown,
            "pseudo_anomalous_videos": [int(pl.video_labels[a:b].sum()) for a, b in ts.video_ranges],
            "true_anomalous_videos": None,
            "vpl_notes": list(pl.notes),
            "null": {"mean": pl.null_means, "var": pl.null_vars, "count": pl.null_counts},
            "participants": list(ts.participant_names),
            "spl": None, "spl_note": "training labels unknown",
        }
    out: dict[str, Any] = {
        "vpl": quality.participant_video_accuracy(pl.vpl, ts.true_video_labels, ts.video_ranges),
        "video_labels_used": quality.participant_video_accuracy(
            pl.video_labels, ts.true_video_labels, ts.video_ranges),
        "pseudo_anomalous_videos": [int(pl.video_labels[a:b].sum()) for a, b in ts.video_ranges],
        "true_anomalous_videos": [int(ts.true_video_labels[a:b].sum()) for a, b in ts.video_ranges],
        "vpl_notes": list(pl.notes),
        "null": {"mean": pl.null_means, "var": pl.null_vars, "count": pl.null_counts},
        "participants": list(ts.participant_names),
    }
    if ts.true_segment_labels is not None:
        out["spl"] = quality.participant_segment_quality(
            pl.segment_labels, ts.true_segment_labels, ts.row_ranges)
    else:
        out["spl"] = None
        out["spl_note"] = "true segment labels unknown for these features"
    return out


def _round_record(round_number: int, rm, ev: dict, label_q: dict | None, seconds: float,
                  eval_seconds: float, names: Sequence[str]) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "round": round_number,
        "auc": ev["auc"],
        "ap_sklearn": ev["ap_sklearn"],
        "ap_trapezoid": ev["ap_trapezoid"],
        "train_loss": float(np.mean(rm.mean_loss)),
        "train_loss_per_participant": [float(x) for x in rm.mean_loss],
        "plr_applied": bool(rm.plr_applied),
        "labels_changed": int(np.sum(rm.labels_changed)),
        "label_quality": label_q,
        "train_seconds": round(float(rm.seconds), 3),
        "eval_seconds": round(eval_seconds, 3),
        "time_s": round(seconds, 3),
        "upload_bytes_per_participant": int(rm.upload_bytes),
    }
    if ev.get("per_participant") is not None:
        rec["auc_per_participant"] = [p["auc"] for p in ev["per_participant"]]
        rec["ap_sklearn_per_participant"] = [p["ap_sklearn"] for p in ev["per_participant"]]
        rec["ap_trapezoid_per_participant"] = [p["ap_trapezoid"] for p in ev["per_participant"]]
        rec["participants"] = list(names)
    return rec


def _label_quality(ts, labels: np.ndarray) -> dict | None:
    from clapjax.report import quality

    if ts.true_segment_labels is None:
        return None
    q = quality.participant_segment_quality(labels, ts.true_segment_labels, ts.row_ranges)
    return {"segments": {k: q[k] for k in ("precision", "recall", "iou")},
            "per_participant": q["per_participant"]}


def _write_plots(resolved: ResolvedRun, rd, metrics: list[dict], test, scores: np.ndarray) -> list[Path]:
    from clapjax.report import plots

    out = [plots.participant_distribution(
        resolved.federated_split.anomalous_counts(), resolved.federated_split.participant_names,
        rd.plots_dir / "participants.png",
        title=f"{resolved.config.dataset} {resolved.split_label} split: videos per participant")]
    if resolved.config.setting == "local":
        out.append(plots.local_auc_per_round(metrics, resolved.federated_split.participant_names,
                                             rd.plots_dir / "auc.png"))
        scores = scores[0]
    else:
        out.append(plots.auc_per_round({resolved.config.setting: metrics}, rd.plots_dir / "auc.png"))
    if any(m.get("label_quality") for m in metrics):
        out.append(plots.label_quality_per_round(metrics, rd.plots_dir / "label_quality.png"))
    ends = np.cumsum(test.lengths)
    starts = ends - test.lengths
    gt = test.ground_truth.reshape(-1, 16)
    anomalous = [i for i in range(len(test.names)) if gt[starts[i]:ends[i]].any()]
    normal = [i for i in range(len(test.names)) if not gt[starts[i]:ends[i]].any()]
    pick = anomalous[:3] + normal[:1]
    videos = [(test.names[i], scores[starts[i]:ends[i]], gt[starts[i]:ends[i]].reshape(-1)) for i in pick]
    out.append(plots.score_curves(videos, rd.plots_dir / "scores.png"))
    return out


def execute(config: RunConfig, *, hooks: RunHooks | None = None, argv: Sequence[str] | None = None,
            out=None, err=None) -> dict[str, Any]:
    """Runs (or resumes) one experiment and returns its summary.

    Raises:
      ConfigError, clapjax.report.RunDirError: invalid configuration or workdir.
    """
    from clapjax import pipeline
    from clapjax.report import progress as progress_lib
    from clapjax.report import rundir as rundir_lib

    hooks = hooks or RunHooks()
    t_start, cpu_start = time.perf_counter(), time.process_time()
    resolved = validate(config)
    mode = "json" if config.json else ("quiet" if config.quiet else "normal")
    rep = progress_lib.Reporter(mode, out, err)
    record = {"format": rundir_lib.FORMAT_VERSION, **resolved.record(),
              "features": _features_description(resolved),
              "command": list(argv) if argv is not None else None,
              "environment": rundir_lib.environment()}
    rd = rundir_lib.prepare(resolved.workdir, record, overwrite=config.overwrite)
    done_before = rd.read_metrics()
    train_opts = resolved.train
    total_rounds = train_opts.rounds
    rep.info(
        f"clapjax: {config.dataset} {resolved.split_label} split, K={resolved.num_participants}, "
        f"{config.setting}, variant {config.variant}, {total_rounds} rounds; "
        f"{_features_description(resolved)}",
        workdir=str(rd.path), resumed=rd.resumed,
    )
    rep.info(f"run directory: {rd.path}" + (f" (resuming after round {len(done_before)})"
                                             if rd.resumed else ""))
    if resolved.synthetic:
        rep.info("note: synthetic features; numbers are not comparable to the paper's I3D results")
    for note in (resolved.custom.notes if resolved.custom is not None else ()):
        rep.info(f"note: {note}")
    if config.dataset != "custom" and config.test_list is not None:
        rep.info(f"note: test videos from {config.test_list}; numbers on a test subset are not "
                 "comparable to the paper's")
    timing: dict[str, float] = {}

    t0, c0 = time.perf_counter(), time.process_time()
    train_source, test_source = open_sources(resolved)
    ts = pipeline.load_training_set(train_source, resolved.split, rep,
                                    segment_labels_dir=config.train_segment_labels)
    with rep.stage("reading test features"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        test = pipeline.load_test_set(test_source, config.ground_truth, config.ground_truth_check)
    for w in caught:  # ground-truth notes (unevaluated intervals, --ground-truth-check warn)
        rep.warn(str(w.message))
    timing["data_s"] = time.perf_counter() - t0
    timing["data_cpu_s"] = time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    cache = rd.path / "pseudo_labels.npz"
    pl = None
    if rd.resumed and cache.exists():
        try:
            pl = pipeline.load_pseudo_labels(cache, ts)
            rep.info("pseudo-labels: reused from pseudo_labels.npz")
        except (ValueError, OSError, KeyError) as e:
            rep.warn(f"{cache} unusable ({e}); recomputing pseudo-labels")
    if pl is None:
        pl = pipeline.pseudo_label(ts, resolved.pseudo_labels, weak_videos=resolved.weak_videos(),
                                   null_mode=config.null_model, progress=rep)
        pipeline.save_pseudo_labels(cache, pl)
    pl_report = pseudo_label_report(ts, pl)
    rundir_lib.write_json(rd.path / "pseudo_labels.json", pl_report)
    timing["pseudo_labels_s"] = time.perf_counter() - t0
    timing["pseudo_labels_cpu_s"] = time.process_time() - c0
    vpl_acc = pl_report["vpl"]["accuracy"]
    spl_q = pl_report["spl"]
    rep.info(
        "pseudo-labels: VPL accuracy "
        + ("n/a" if vpl_acc is None else f"{vpl_acc:.3f}")
        + (f" ({int(resolved.weak.sum())} weakly supervised participants use true video labels)"
           if resolved.weak.any() else "")
        + ("" if spl_q is None else
           f"; SPL segment precision {spl_q['precision'] or 0:.3f} recall {spl_q['recall'] or 0:.3f}"
           f" IoU {spl_q['iou'] or 0:.3f}"),
        vpl_accuracy=vpl_acc, spl=None if spl_q is None else {k: spl_q[k] for k in ("precision", "recall", "iou")},
    )

    engine = pipeline.make_engine(ts, pl, resolved.model, train_opts, resolved.pseudo_labels,
                                  checkpoint_dir=str(rd.checkpoint_dir))
    ckpt = engine.checkpointer
    metrics = done_before
    start = len(metrics)
    if start:
        steps = [s for s in ckpt.steps() if s <= start]
        usable = max(steps, default=0)
        if usable < start:
            rep.warn(f"rounds {usable + 1}..{start} are logged but not checkpointed; redoing them")
            metrics = rd.truncate_metrics(usable)
            start = usable
    if start > total_rounds:
        raise rundir_lib.RunDirError(f"{rd.path} holds {start} rounds but the run has {total_rounds}")
    state = engine.restore(start) if start else engine.init()

    clock = progress_lib.RoundClock(start + 1, total_rounds)
    ev = None
    for r in range(start, total_rounds):
        t_round, cpu_round = time.perf_counter(), time.process_time()
        state, rm = engine.run_round(state)
        t_eval = time.perf_counter()
        ev = pipeline.evaluate(engine, state, test)
        eval_s = time.perf_counter() - t_eval
        label_q = _label_quality(ts, pipeline.current_labels(engine, state))
        rec = _round_record(r + 1, rm, ev, label_q, time.perf_counter() - t_round, eval_s,
                            ts.participant_names)
        # CPU seconds of this process (all threads): comparable across loaded machines.
        rec["cpu_s"] = round(time.process_time() - cpu_round, 3)
        ckpt.save(r + 1, state)
        rd.append_metrics(rec)
        metrics = metrics + [rec]
        rd.write_summary(_summary(resolved, metrics, total_rounds, timing, pl_report, complete=False))
        rep.round(rec, total_rounds, clock.elapsed(), clock.eta(r + 1))
        if hooks.after_round is not None:
            hooks.after_round(r + 1, rec)
    if ev is None:  # nothing left to train: evaluate the restored final state
        ev = pipeline.evaluate(engine, state, test)
    final_scores = ev["scores"]
    np.save(rd.path / rundir_lib.TEST_SCORES_FILE, np.asarray(final_scores, np.float32))
    timing["rounds_s"] = clock.elapsed()
    timing["session_s"] = time.perf_counter() - t_start
    timing["session_cpu_s"] = time.process_time() - cpu_start
    summary = _summary(resolved, metrics, total_rounds, timing, pl_report, complete=True)
    if config.plots:
        with rep.stage("plots"):
            summary["plots"] = [str(p.relative_to(rd.path)) for p in _write_plots(resolved, rd, metrics, test, final_scores)]
    rd.write_summary(summary)
    ckpt.close()
    rep.final(summary, _final_line(summary, rd.path))
    return summary


def _summary(resolved: ResolvedRun, metrics: list[dict], total_rounds: int, timing: dict,
             pl_report: dict, complete: bool) -> dict[str, Any]:
    from clapjax.report import rundir as rundir_lib

    s = rundir_lib.best_and_final(metrics)
    c = resolved.config
    if resolved.config.setting == "local" and metrics:
        s["final"]["auc_per_participant"] = metrics[-1].get("auc_per_participant")
        s["final"]["note"] = "local setting: mean over the participants' own models"
    spl = pl_report.get("spl")
    return {
        "complete": complete and len(metrics) == total_rounds,
        "rounds": total_rounds,
        **s,
        "dataset": c.dataset,
        "split": resolved.split_label,
        "participants": resolved.num_participants,
        "setting": c.setting,
        "variant": c.variant,
        "aggregator": c.aggregator,
        "seed": c.seed,
        "features": _features_description(resolved),
        "synthetic": resolved.synthetic,
        "comparable_to_paper": False if resolved.synthetic else None,
        "pseudo_labels": {
            "vpl_accuracy": pl_report["vpl"]["accuracy"],
            "vpl_accuracy_per_participant": pl_report["vpl"]["per_participant"],
            "spl": None if spl is None else {k: spl[k] for k in ("precision", "recall", "iou")},
            "weak_participants": [int(k) for k in np.flatnonzero(resolved.weak)],
        },
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
        "total_train_seconds": round(sum(m.get("time_s", 0.0) for m in metrics), 2),
    }


def _final_line(summary: dict, path: Path) -> str:
    final, best = summary.get("final"), summary.get("best")
    if not final:
        return f"no rounds completed; run directory {path}"
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    text = (f"final AUC {fmt(final['auc'])} (round {final['round']}), AP sklearn "
            f"{fmt(final['ap_sklearn'])}, AP trapezoid {fmt(final['ap_trapezoid'])}")
    if best:
        text += f"; best AUC {fmt(best['auc'])} at round {best['round']} (selected on the test set)"
    return f"{text}; run directory {path}"


def parse(argv: Sequence[str] | None = None) -> RunConfig:
    """Parses command-line arguments into a :class:`RunConfig` (tyro)."""
    return tyro.cli(RunConfig, args=argv, prog="python -m experiments.run")


def main(argv: Sequence[str] | None = None, *, hooks: RunHooks | None = None) -> dict[str, Any]:
    """Parses ``argv`` and runs; returns the summary (errors propagate)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return execute(parse(argv), hooks=hooks, argv=argv)


def cli(argv: Sequence[str] | None = None) -> int:
    """Console entry point: clear one-line errors and exit status 2 for bad input."""
    from clapjax.data import DataError
    from clapjax.report.rundir import RunDirError

    try:
        main(argv)
    except (ConfigError, RunDirError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
