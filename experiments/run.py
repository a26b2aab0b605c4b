"""``python -m experiments.run``: one experiment with a run directory.

Example (the paper's event split, 13 participants, synthetic features)::

    python -m experiments.run --split=event --participants=13
    python -m experiments.run --method c2fpl --setting local     # a baseline, same splits/evaluation

Stages: data → statistics → VPL → null model → server mixture → SPL →
rounds (+PLR) → evaluation (see :mod:`clapjax.pipeline`). Every round appends
one line to ``<workdir>/metrics.jsonl`` and checkpoints the engine state, so
re-running the same command resumes (a larger ``--rounds`` extends a finished
run); ``--help`` lists every option.

Inputs are validated before the run directory is created; the directory is
locked while the run uses it (:mod:`clapjax.report.rundir`). :func:`cli` turns
every user-facing error into one line ``error: <file, video or option>:
<problem> (<hint>)`` with exit status 2 (``--debug``: with the traceback).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tyro

from experiments.config import EXTENDABLE, ConfigError, ResolvedRun, RunConfig, validate


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
        return (data.open_source(c.dataset, "train", synthetic=cfg, videos=used, crops=c.crops),
                data.open_source(c.dataset, "test", synthetic=cfg, videos=test_videos, crops=c.crops))
    layout = c.feature_layout.replace("-", "_")

    def origin(array, listing) -> dict:
        if array is not None:
            return dict(concatenated=array, ranges=listing, crops=c.crops)
        from experiments.config import _is_feature_list

        if _is_feature_list(listing):
            return dict(features_dir=c.features_dir, list_file=listing, layout=layout, crops=c.crops)
        return dict(features_dir=c.features_dir, layout=layout, crops=c.crops)

    if c.features_dir is not None and c.train_list is None and c.train_array is None and not any(
            f.endswith((".npy", ".txt")) for _, _, fs in os.walk(c.features_dir, followlinks=True) for f in fs):
        raise data.DataError(
            f"{c.features_dir}: holds no feature files (expected <video>.npy, <video>_i3d.npy, "
            f"<video>__<crop>.npy or Sultani <video>.txt files, in any subfolder)")
    train = data.open_source(c.dataset, "train", videos=used, nonfinite=c.nonfinite,
                             **origin(c.train_array, c.train_list))
    test = data.open_source(c.dataset, "test", videos=test_videos, **origin(c.test_array, c.test_list))
    data.check_compatible(train, test)
    return train, test


def pseudo_label_report(ts, pl, method: str = "clap") -> dict[str, Any]:
    """Quality of VPL and SPL against the truth (``pseudo_labels.json``);
    ``pl`` None: the method has no pseudo-labelling stage before training."""
    from clapjax.report import quality

    if pl is None:
        return {"method": method, "vpl": {"accuracy": None, "per_participant": None}, "spl": None,
                "note": f"{method} makes its pseudo-labels inside training (no stage before it)",
                "participants": list(ts.participant_names)}
    if ts.true_video_labels is None:  # a custom dataset with unlabelled training videos
        unknown = {"accuracy": None, "per_participant": [None] * ts.num_participants}
        return {
            "method": method, "vpl": unknown, "video_labels_used": unknown,
            "pseudo_anomalous_videos": [int(pl.video_labels[a:b].sum()) for a, b in ts.video_ranges],
            "true_anomalous_videos": None,
            "vpl_notes": list(pl.notes),
            "null": {"mean": pl.null_means, "var": pl.null_vars, "count": pl.null_counts},
            "participants": list(ts.participant_names),
            "spl": None, "spl_note": "training labels unknown",
        }
    out: dict[str, Any] = {
        "method": method,
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
        "plr_participants": None if rm.plr_participants is None else int(np.sum(rm.plr_participants)),
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


#: The final model's frame-level ROC curve in a run directory (``fpr [G]``,
#: ``tpr [K, G]``: one curve per model, K > 1 in the local setting, and ``auc [K]``).
ROC_FILE = "roc.npz"


def _save_roc(path: Path, test, scores: np.ndarray) -> None:
    """Writes the final model(s)' ROC curves (sampled at 201 false-positive rates), atomically."""
    from clapjax import evaluation
    from clapjax.report import rundir as rundir_lib

    per_model = np.asarray(scores).reshape(-1, np.asarray(scores).shape[-1])
    tprs, aucs = [], []
    for s in per_model:
        fpr, tpr = evaluation.frame_roc(s, test.lengths, test.ground_truth, test.names, test.segment_frames)
        tprs.append(tpr)
        aucs.append(evaluation.frame_metrics(s, test.lengths, test.ground_truth, test.names,
                                             test.segment_frames)["auc"])
    with rundir_lib.atomic_write(path) as fh:
        np.savez(fh, fpr=fpr, tpr=np.stack(tprs), auc=np.asarray(aucs))


def roc_of_run(run_dir: Path, label: str) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """``{label: (fpr, tpr, auc)}`` of a finished run (local setting: the
    participants' curves averaged vertically, and their mean AUC)."""
    with np.load(Path(run_dir) / ROC_FILE) as f:
        return {label: (f["fpr"], f["tpr"].mean(axis=0), float(f["auc"].mean()))}


def _write_plots(resolved: ResolvedRun, rd, metrics: list[dict], test, scores: np.ndarray,
                 references: dict | None = None) -> list[Path]:
    from clapjax.report import plots

    refs = references or {}
    lines = {label: refs[key]["auc"] for key, label in (("feature_norm", "feature-norm scorer"),
                                                        ("oracle", "supervised oracle")) if refs.get(key)}
    deco = dict(references=lines, synthetic=resolved.synthetic)

    out = [plots.participant_distribution(
        resolved.federated_split.anomalous_counts(), resolved.federated_split.participant_names,
        rd.plots_dir / "participants.png",
        title=f"{resolved.config.dataset} {resolved.split_label} split: videos per participant")]
    if resolved.config.setting == "local":
        out.append(plots.local_auc_per_round(metrics, resolved.federated_split.participant_names,
                                             rd.plots_dir / "auc.png", **deco))
        scores = scores[0]
    else:
        out.append(plots.auc_per_round({resolved.config.setting: metrics}, rd.plots_dir / "auc.png", **deco))
    if any(m.get("label_quality") for m in metrics):
        out.append(plots.label_quality_per_round(metrics, rd.plots_dir / "label_quality.png"))
    ends = np.cumsum(test.lengths)
    starts = ends - test.lengths
    # Frames per segment: 16, or the compressed features' own counts (e.g. Sultani's 32 segments).
    per_segment = (np.full(int(ends[-1]) if len(ends) else 0, 16, np.int64) if test.segment_frames is None
                   else np.asarray(test.segment_frames, np.int64))
    frame_ends = np.concatenate([[0], np.cumsum(per_segment)])
    gt = [test.ground_truth[frame_ends[a]:frame_ends[b]] for a, b in zip(starts, ends)]
    anomalous = [i for i in range(len(test.names)) if gt[i].any()]
    normal = [i for i in range(len(test.names)) if not gt[i].any()]
    pick = anomalous[:3] + normal[:1]
    videos = [(test.names[i], scores[starts[i]:ends[i]], gt[i], per_segment[starts[i]:ends[i]]) for i in pick]
    out.append(plots.score_curves(videos, rd.plots_dir / "scores.png"))
    title = f"{resolved.method_spec.title}, {resolved.config.setting}: frame-level ROC"
    out.append(plots.roc_curves(roc_of_run(rd.path, "final model" if resolved.config.setting != "local"
                                           else "participants' models, averaged"), rd.plots_dir / "roc.png", title))
    return out


def _source_files(source) -> list[Path] | None:
    """Per-video files of a feature source (None when it does not say)."""
    files = getattr(source, "files", None)
    if files is not None:
        return [Path(p) for f in files for p in f]
    path = getattr(source, "path", None)
    return [Path(path)] if path is not None else None


def _video_file(source, name: str) -> Path | None:
    """The (first) file holding video ``name`` in ``source``, if known."""
    files = getattr(source, "files", None)
    try:
        if files is not None:
            return Path(files[source.index_of(name)][0])
    except Exception:  # noqa: BLE001 - best effort, only to name a file in a message
        return None
    path = getattr(source, "path", None)
    return Path(path) if path is not None else None


def _train_positions(resolved: ResolvedRun, train_source) -> np.ndarray:
    from clapjax import pipeline

    order = np.concatenate([np.asarray(p, np.int64) for p in resolved.split.participants])
    return pipeline._source_positions(train_source, order)


def check_inputs(resolved: ResolvedRun, train_source, test_source) -> None:
    """Cheap checks of everything the run will read, before anything is written:
    the split's videos exist in the features, the test features match the
    frame ground truth, the true segment labels (if given) fit the videos.

    Raises:
      clapjax.data.DataError: naming the video and file.
    """
    from clapjax import data, pipeline

    positions = _train_positions(resolved, train_source)
    c = resolved.config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notes are reported when the test set is read
        data.frame_ground_truth(test_source, c.ground_truth, check=c.ground_truth_check)
    if c.train_segment_labels is not None:
        pipeline.read_segment_labels(c.train_segment_labels,
                                     [train_source.names[int(i)] for i in positions],
                                     np.asarray(train_source.lengths, np.int64)[positions])


def input_fingerprint(resolved: ResolvedRun, train_source, test_source) -> dict | None:
    """:func:`clapjax.report.rundir.data_fingerprint` of the files the run reads
    (the split's training videos, every test video, feature lists and arrays,
    annotations, ground truth, true segment labels, the split file); None for
    synthetic features (fixed by the code)."""
    from clapjax.report import rundir as rundir_lib

    c = resolved.config
    if resolved.synthetic:
        return None
    root = Path(c.features_dir) if c.features_dir is not None else None
    train_files = getattr(train_source, "files", None)
    if train_files is not None:
        paths = [Path(p) for i in _train_positions(resolved, train_source) for p in train_files[int(i)]]
    else:
        paths = _source_files(train_source)
    test_paths = _source_files(test_source)
    if (paths is None or test_paths is None) and root is not None:  # unknown layout: the whole folder
        paths, test_paths = _walk(root), []
    files: dict[str, Path] = {}

    def add(path: Path, label: str | None = None) -> None:
        if label is None and root is not None:
            with contextlib.suppress(ValueError):
                label = str(path.relative_to(root))
        files[label or str(path)] = path

    for p in [*(paths or []), *(test_paths or [])]:
        add(p)
    for flag in ("train_list", "test_list", "split_file"):
        value = getattr(c, flag)
        if value is not None:
            add(Path(value), f"<{flag.replace('_', '-')}> {Path(value).name}")
    for value in c.annotations:
        add(Path(value), f"<annotations> {Path(value).name}")
    for flag in ("ground_truth", "train_segment_labels"):
        value = getattr(c, flag)
        if value is not None:
            value = Path(value)
            for p in (_walk(value) if value.is_dir() else [value]):
                add(p, f"<{flag.replace('_', '-')}> {p.relative_to(value) if value.is_dir() else p.name}")
    return rundir_lib.data_fingerprint(files.items())


def _walk(folder: Path) -> list[Path]:
    return [Path(d) / f for d, _, fs in os.walk(folder, followlinks=True) for f in fs]


#: Largest float32.
_F32_MAX = float(np.finfo(np.float32).max)


def _overflowing_video(features: np.ndarray, lengths: Sequence[int], names: Sequence[str]):
    """``(name, max |value|)`` of the first video whose squared feature norms overflow
    float32 (what the statistics and the scorer compute), or None.

    One pass of ``min``/``max`` per video (no temporary copies); the exact
    squared norms are computed only for videos whose largest value could overflow.
    """
    start = 0
    dim = int(np.prod(features.shape[2:])) if features.ndim > 2 else 1
    for name, m in zip(names, np.asarray(lengths, np.int64).tolist()):
        block = features[start:start + m]
        start += m
        if block.size == 0:
            continue
        biggest = max(abs(float(block.max())), abs(float(block.min())))
        if biggest * biggest * dim < _F32_MAX:
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            sq = np.square(block).sum(axis=-1)
        if not np.isfinite(sq).all():
            return name, float(np.nanmax(np.abs(block)))
    return None


def _huge_values_error(source, features, lengths, names, what: str, err: Exception):
    """A DataError naming the video and file whose values overflow, or None."""
    from clapjax.data import DataError

    found = _overflowing_video(features, lengths, names)
    if found is None:
        return None
    name, biggest = found
    file = _video_file(source, name)
    where = f"video {name!r}" + (f" (file {file})" if file is not None else "")
    cause = "" if err is None else f"; {type(err).__name__}: {' '.join(str(err).split())[:160]}"
    return DataError(
        f"{where}: {what} feature values up to {biggest:.3g} overflow float32 when squared{cause} "
        f"(I3D features are of order 1: check or rescale this file)"
    )


@contextlib.contextmanager
def _warnings_to(target):
    """Python warnings raised inside (e.g. segments dropped by ``--nonfinite drop``)
    become one-line warnings: ``target.warn(message)`` of a Reporter, or appended
    to a list to be reported later. Each distinct message once."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen = set()
    for w in caught:
        text = " ".join(str(w.message).split())
        if text in seen:
            continue
        seen.add(text)
        if isinstance(target, list):
            target.append(text)
        else:
            target.warn(text)


def _pseudo_labels_cached(rd, ts, rep):
    """The cached pseudo-labels of a resumed run, or None (unreadable ones are recomputed)."""
    from clapjax import pipeline
    from clapjax.report import rundir as rundir_lib

    cache = rd.path / rundir_lib.PSEUDO_LABELS_FILE
    if not (rd.resumed and cache.exists()):
        return None
    try:
        pl = pipeline.load_pseudo_labels(cache, ts)
    except Exception as err:  # noqa: BLE001 - any damage (BadZipFile, EOFError, ...) means recompute
        rep.warn(f"{cache}: unreadable ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
                 f"recomputing the pseudo-labels")
        return None
    rep.info("pseudo-labels: reused from pseudo_labels.npz")
    return pl


def execute(config: RunConfig, *, hooks: RunHooks | None = None, argv: Sequence[str] | None = None,
            out=None, err=None) -> dict[str, Any]:
    """Runs (or resumes, or extends) one experiment and returns its summary.

    Inputs are validated (flags, feature file headers, the split's videos, the
    test ground truth) before anything is written, so a bad input leaves no
    run directory. The run directory is locked for the whole run.

    Raises:
      ConfigError: invalid flags.
      clapjax.report.RunDirError: the workdir is in use, holds a different
        run or changed input data, or fewer rounds than it completed.
      clapjax.data.DataError: bad input data (naming the video and file).
      OSError: a file that cannot be read or written (e.g. disk full).
      FloatingPointError: training diverged (non-finite loss).
    """
    from clapjax.report import progress as progress_lib
    from clapjax.report import rundir as rundir_lib
    from experiments import preflight

    hooks = hooks or RunHooks()
    session = (time.perf_counter(), time.process_time())
    resolved = validate(config)
    config = resolved.config  # paths normalised
    caught: list[str] = []
    # Preflight before anything is written: sources open on file headers
    # only; the plan says in memory or streaming, or refuses.
    with _warnings_to(caught):
        train_source, test_source = open_sources(resolved)
        check_inputs(resolved, train_source, test_source)
    plan = preflight.check(resolved, train_source, test_source)
    fingerprint = input_fingerprint(resolved, train_source, test_source)
    record = {"format": rundir_lib.FORMAT_VERSION, **resolved.record(),
              "features": _features_description(resolved),
              "resources": plan.record(),
              "command": list(argv) if argv is not None else None,
              "environment": rundir_lib.environment()}
    rd = rundir_lib.prepare(resolved.workdir, record, overwrite=config.overwrite,
                            fingerprint=fingerprint, allowed_changes=EXTENDABLE)
    mode = "json" if config.json else ("quiet" if config.quiet else "normal")
    rep = progress_lib.Reporter(mode, out, err)
    for message in caught:
        rep.warn(message)
    try:
        return _execute_locked(resolved, rd, rep, hooks, train_source, test_source, session, plan)
    finally:
        rep.close()
        rd.close()


def _extension(rd, total_rounds: int, completed: int) -> tuple[int, int] | None:
    """``(old, new)`` rounds when this run changes its round count (checked here)."""
    from clapjax.report import rundir as rundir_lib

    change = dict((path, (old, new)) for path, old, new in rd.changes).get("resolved.train.rounds")
    if change is None:
        return None
    if total_rounds < completed:
        raise rundir_lib.RunDirError(
            f"workdir {rd.path}: holds {completed} completed rounds, more than --rounds "
            f"{total_rounds} (use --rounds {completed} or more to continue it, --overwrite to start "
            f"again, or choose another --workdir)")
    return change


def _execute_locked(resolved: ResolvedRun, rd, rep, hooks: RunHooks, train_source, test_source,
                    session: tuple[float, float], plan) -> dict[str, Any]:
    from clapjax import pipeline
    from clapjax.report import progress as progress_lib
    from clapjax.report import rundir as rundir_lib

    config = resolved.config
    train_opts = resolved.train.replace(streaming=not plan.in_memory)
    total_rounds = train_opts.rounds
    done_before = rd.repair_metrics()
    extension = _extension(rd, total_rounds, len(done_before))
    clock = progress_lib.RunClock(done_before[-1].get("elapsed_s", 0.0) if done_before else 0.0,
                                  start=session[0])
    rep.clock = clock

    summary = rd.read_summary()
    if (summary and summary.get("complete") and extension is None and summary.get("rounds") == total_rounds
            and len(done_before) == total_rounds and (rd.path / rundir_lib.TEST_SCORES_FILE).exists()
            and (not config.plots or summary.get("plots"))):
        # A finished run: answer from the run directory (no features are read).
        rep.info(f"run directory: {rd.path} (finished: {total_rounds} rounds; re-run with a larger "
                 f"--rounds to extend it)", workdir=str(rd.path), resumed=True, finished=True)
        rep.final(summary, _final_line(summary, rd.path))
        return summary

    rep.info(
        f"clapjax: {resolved.method_spec.title}, {config.dataset} {resolved.split_label} split, "
        f"K={resolved.num_participants}, "
        f"{config.setting}, variant {config.variant}, {total_rounds} rounds; "
        f"{_features_description(resolved)}",
        workdir=str(rd.path), resumed=rd.resumed,
    )
    rep.info(f"run directory: {rd.path}" + (f" (resuming after round {len(done_before)})"
                                             if rd.resumed else ""))
    if extension is not None:
        rep.info(f"extending the run from {extension[0]} to {extension[1]} rounds",
                 extended_from=extension[0], rounds=extension[1])
    if resolved.synthetic:
        rep.info("note: synthetic features; numbers are not comparable to the paper's I3D results")
    for note in (resolved.custom.notes if resolved.custom is not None else ()):
        rep.info(f"note: {note}")
    if config.dataset != "custom" and config.test_list is not None:
        rep.info(f"note: test videos from {config.test_list}; numbers on a test subset are not "
                 "comparable to the paper's")
    rep.info(plan.describe(), resources=plan.record())
    timing: dict[str, float] = {}

    t0, c0 = time.perf_counter(), time.process_time()
    with _warnings_to(rep):
        ts = pipeline.load_training_set(train_source, resolved.split, rep,
                                        segment_labels_dir=config.train_segment_labels,
                                        in_memory=plan.in_memory)
    with rep.stage("reading test features" if plan.in_memory else "opening test features"), \
            _warnings_to(rep):
        # ground-truth notes (unevaluated intervals, --ground-truth-check warn) become warnings
        test = pipeline.load_test_set(test_source, config.ground_truth, config.ground_truth_check,
                                      in_memory=plan.in_memory)
    # Values whose squares overflow float32 would surface later as a NaN deep in
    # the statistics or as saturated test scores: name the video and file now.
    # Streamed features are not scanned here: that pass would read every
    # feature file once more before training.
    if plan.in_memory:
        for source, feats, lengths, names, what in (
                (train_source, ts.features, ts.lengths, ts.video_names, "training"),
                (test_source, test.features, test.lengths, test.names, "test")):
            found = _huge_values_error(source, feats, lengths, names, what, None)
            if found is not None:
                raise found
    timing["data_s"] = time.perf_counter() - t0
    timing["data_cpu_s"] = time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    spec = resolved.method_spec
    if spec.prepare is not None:  # e.g. the weakly supervised methods' 32-segment compression
        with rep.stage(f"preparing the training set ({spec.title})"):
            ts = spec.prepare(ts, resolved.method_options)
    pl = _pseudo_labels_cached(rd, ts, rep) if spec.pseudo_label is not None else None
    if pl is None and spec.pseudo_label is not None:
        try:
            pl = spec.pseudo_label(ts, resolved.pseudo_labels, resolved.method_options,
                                   weak_videos=resolved.weak_videos(), null_mode=config.null_model, progress=rep)
        except (ValueError, FloatingPointError) as err:
            better = (_huge_values_error(train_source, ts.features, ts.lengths, ts.video_names, "training", err)
                      if plan.in_memory else None)
            if better is not None:
                raise better from err
            raise
        with rundir_lib.atomic_write(rd.path / rundir_lib.PSEUDO_LABELS_FILE) as fh:
            pipeline.save_pseudo_labels(fh, pl)
    for name, note in zip(ts.participant_names, pl.notes if pl is not None else ()):
        if note:  # a degenerate case of VPL (e.g. nothing to cluster): never silent
            rep.warn(f"pseudo-labels: participant {name}: {note}")
    pl_report = pseudo_label_report(ts, pl, config.method)
    rundir_lib.write_json(rd.path / "pseudo_labels.json", pl_report)
    timing["pseudo_labels_s"] = time.perf_counter() - t0
    timing["pseudo_labels_cpu_s"] = time.process_time() - c0
    vpl_acc = pl_report["vpl"]["accuracy"]
    spl_q = pl_report["spl"]
    if pl is None:
        rep.info(f"pseudo-labels: {pl_report['note']}")
    else:
        rep.info(
            "pseudo-labels: VPL accuracy "
            + ("n/a" if vpl_acc is None else f"{vpl_acc:.3f}")
            + (f" ({int(resolved.weak.sum())} weakly supervised participants use true video labels)"
               if resolved.weak.any() else "")
            + ("" if spl_q is None else
               f"; SPL segment precision {spl_q['precision'] or 0:.3f} recall {spl_q['recall'] or 0:.3f}"
               f" IoU {spl_q['iou'] or 0:.3f}"),
            vpl_accuracy=vpl_acc,
            spl=None if spl_q is None else {k: spl_q[k] for k in ("precision", "recall", "iou")},
        )

    refs = _references(resolved, rd, rep, train_source, test)

    engine = pipeline.make_engine(ts, pl, resolved.build_method(), train_opts,
                                  checkpoint_dir=str(rd.checkpoint_dir))
    ckpt = engine.checkpointer
    metrics = done_before
    start = len(metrics)
    state = engine.init()
    if start:
        step, state, skipped = ckpt.restore_latest_readable(state, max_step=start)
        if skipped:
            rep.warn("unreadable checkpoint(s) skipped: " + "; ".join(
                f"{rd.checkpoint_dir / str(s)} ({why})" for s, why in skipped)
                + f"; resuming from {'round ' + str(step) if step else 'the start'}")
        usable = step or 0
        if usable < start:
            rep.warn(f"rounds {usable + 1}..{start} are logged but have no readable checkpoint; "
                     f"redoing them")
            metrics = rd.truncate_metrics(usable)
            start = usable
        if start == 0:
            state = engine.init()
    if extension is not None:
        rec = rd.record
        rec["rounds_history"] = list(rec.get("rounds_history", [])) + [{
            "from_rounds": extension[0], "to_rounds": extension[1], "continued_from_checkpoint": start,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
        rd.write_config(rec)

    round_times = [m.get("time_s") for m in metrics]
    t_rounds = time.perf_counter()
    ev = None
    for r in range(start, total_rounds):
        with rep.round_progress(r + 1, total_rounds, progress_lib.RunClock.typical_round(round_times)) as live:
            t_round, cpu_round = time.perf_counter(), time.process_time()
            live.phase("local training" + (" + PLR" if engine.plr_active(r) else "")
                       + ("" if config.setting == "local" else " + aggregation"))
            try:
                state, rm = engine.run_round(state)
            except FloatingPointError as err:
                better = _huge_values_error(train_source, ts.features, ts.lengths, ts.video_names,
                                            "training", err)
                raise (better or FloatingPointError(
                    f"{' '.join(str(err).split())} (lower --train.lr or --train.server-lr, or check "
                    f"the features of these participants)")) from err
            live.phase("evaluating on the test set")
            t_eval = time.perf_counter()
            try:
                ev = pipeline.evaluate(engine, state, test)
            except FloatingPointError as err:
                better = _huge_values_error(test_source, test.features, test.lengths, test.names, "test", err)
                if better is not None:
                    raise better from err
                raise
            eval_s = time.perf_counter() - t_eval
            label_q = _label_quality(ts, pipeline.current_labels(engine, state)) if pl is not None else None
            rec = _round_record(r + 1, rm, ev, label_q, time.perf_counter() - t_round, eval_s,
                                ts.participant_names)
            # CPU seconds of this process (all threads): comparable across loaded machines.
            rec["cpu_s"] = round(time.process_time() - cpu_round, 3)
            # Working time of the run so far, over all its sessions (continues after a resume).
            rec["elapsed_s"] = round(clock.elapsed(), 3)
            live.phase("saving the checkpoint")
            ckpt.save(r + 1, state)
            rd.append_metrics(rec)
            metrics = metrics + [rec]
            round_times.append(rec["time_s"])
            rd.write_summary(_summary(resolved, metrics, total_rounds, timing, pl_report, complete=False,
                                            references=refs))
        rep.round(rec, total_rounds, clock.elapsed(), clock.eta(round_times, total_rounds - (r + 1)))
        if hooks.after_round is not None:
            hooks.after_round(r + 1, rec)
    if ev is None:  # nothing left to train: evaluate the restored final state
        ev = pipeline.evaluate(engine, state, test)
    final_scores = ev["scores"]
    rundir_lib.save_npy(rd.path / rundir_lib.TEST_SCORES_FILE, np.asarray(final_scores, np.float32))
    _save_roc(rd.path / ROC_FILE, test, final_scores)
    timing["rounds_s"] = time.perf_counter() - t_rounds
    timing["session_s"] = time.perf_counter() - session[0]
    timing["session_cpu_s"] = time.process_time() - session[1]
    timing["elapsed_s"] = clock.elapsed()
    summary = _summary(resolved, metrics, total_rounds, timing, pl_report, complete=True, references=refs)
    summary["resources"] = plan.record()
    if config.plots:
        with rep.stage("plots"):
            summary["plots"] = [str(p.relative_to(rd.path)) for p in _write_plots(resolved, rd, metrics, test, final_scores, refs)]
    rd.write_summary(summary)
    ckpt.close()
    rep.final(summary, _final_line(summary, rd.path))
    return summary


#: File of the run's reference scorers (written once, read on resume).
REFERENCES_FILE = "references.json"


def _references(resolved: ResolvedRun, rd, rep, train_source, test) -> dict[str, Any]:
    """The feature-norm floor and (synthetic data) the supervised-oracle ceiling
    on the run's test set (:func:`experiments.baseline.references`), computed
    once per run directory."""
    from clapjax.report import rundir as rundir_lib
    from experiments import baseline

    path = rd.path / REFERENCES_FILE
    if rd.resumed and path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # damaged by a kill: compute again
    with rep.stage("reference scorers (feature norm" + (", supervised oracle)" if resolved.synthetic else ")")):
        t0, c0 = time.perf_counter(), time.process_time()
        # The training source holds exactly the run's training videos (open_sources).
        refs = baseline.references(train_source, np.arange(len(train_source)), test, resolved.config.seed,
                                   oracle=resolved.synthetic)
        refs["seconds"] = round(time.perf_counter() - t0, 2)
        refs["cpu_s"] = round(time.process_time() - c0, 2)
        refs["note"] = ("feature_norm: rank test segments by the L2 norm of their (crop-mean) feature, no "
                        "training (the floor); oracle: logistic regression on the TRUE segment labels of the "
                        "run's training videos (the ceiling; synthetic data only, else null)")
    rundir_lib.write_json(path, refs)
    return refs


def _summary(resolved: ResolvedRun, metrics: list[dict], total_rounds: int, timing: dict,
             pl_report: dict, complete: bool, references: dict | None = None) -> dict[str, Any]:
    from clapjax.report import rundir as rundir_lib

    s = rundir_lib.best_and_final(metrics)
    c = resolved.config
    names = list(resolved.split.participant_names)
    if resolved.config.setting == "local" and metrics:
        per = metrics[-1].get("auc_per_participant")
        s["final"]["auc_per_participant"] = None if per is None else _by_name(names, per)
        s["final"]["note"] = "local setting: mean over the participants' own models"
    spl = pl_report.get("spl")
    return {
        "complete": complete and len(metrics) == total_rounds,
        "rounds": total_rounds,
        **s,
        "method": c.method,
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
            "vpl_accuracy_per_participant": _by_name(pl_report["participants"],
                                                     pl_report["vpl"]["per_participant"]),
            "spl": None if spl is None else {k: spl[k] for k in ("precision", "recall", "iou")},
            "weak_participants": [resolved.federated_split.participant_names[int(k)]
                                  for k in np.flatnonzero(resolved.weak)],
        },
        "references": references,
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
        "total_train_seconds": round(sum(m.get("time_s", 0.0) for m in metrics), 2),
    }


def _by_name(names: Sequence[str], values: Sequence[Any] | None) -> dict[str, Any] | None:
    """Per-participant values keyed by participant name (summary.json); None stays None."""
    return None if values is None else {str(n): v for n, v in zip(names, values)}


def _final_line(summary: dict, path: Path) -> str:
    final, best = summary.get("final"), summary.get("best")
    if not final:
        return f"no rounds completed; run directory {path}"
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    text = (f"final AUC {fmt(final['auc'])} (round {final['round']}), AP sklearn "
            f"{fmt(final['ap_sklearn'])}, AP trapezoid {fmt(final['ap_trapezoid'])}")
    if best:
        text += f"; best AUC {fmt(best['auc'])} at round {best['round']} (selected on the test set)"
    refs = summary.get("references") or {}
    if refs.get("feature_norm"):
        text += f"; feature-norm scorer AUC {fmt(refs['feature_norm']['auc'])} (floor)"
    if refs.get("oracle"):
        text += f", supervised oracle AUC {fmt(refs['oracle']['auc'])} (ceiling)"
    return f"{text}; run directory {path}"


class UsageError(ValueError):
    """A command line that tyro could not parse (unknown flag, bad value)."""


def _condense_usage(text: str) -> str:
    """tyro's error message (boxed on a terminal, plain otherwise) as one line:
    the section after the title, without borders, separators and help text."""
    import re

    before, body, started = [], [], False
    for raw in text.splitlines():
        line = raw.strip().strip("╭╮╰╯│|").strip()
        if not line:
            continue
        if re.fullmatch(r"[-─━]+", line.replace(" ", "")):  # a separator
            if body:
                break  # the rest is help text
            started = True
            continue
        if re.match(r"^(─+|━+|-{2,})\s*\S", line):  # a top border holding the title
            started = True
            continue
        (body if started else before).append(line)
    words = " ".join(body or before).split(" Got errors:")[0]  # tyro's per-type attempts
    return f"{words or 'invalid command line'} (see python -m experiments.run --help)"


def parse(argv: Sequence[str] | None = None, *, one_line_errors: bool = False) -> RunConfig:
    """Parses command-line arguments into a :class:`RunConfig` (tyro).

    Args:
      one_line_errors: raise :class:`UsageError` with tyro's message on one
        line instead of tyro printing its box and exiting.
    """
    if not one_line_errors:
        return tyro.cli(RunConfig, args=argv, prog="python -m experiments.run")
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            return tyro.cli(RunConfig, args=argv, prog="python -m experiments.run")
    except SystemExit as exit_:
        if exit_.code in (0, None):
            raise
        raise UsageError(_condense_usage(buf.getvalue())) from None


def main(argv: Sequence[str] | None = None, *, hooks: RunHooks | None = None) -> dict[str, Any]:
    """Parses ``argv`` and runs; returns the summary (errors propagate)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return execute(parse(argv), hooks=hooks, argv=argv)


#: errno -> what the user can do about it.
_OS_HINTS = {
    "ENOSPC": "free disk space, then re-run the same command: the run resumes from its last complete round",
    "EDQUOT": "free disk space (quota), then re-run the same command: the run resumes",
    "EACCES": "check the permissions of that path, or choose another --workdir",
    "EPERM": "check the permissions of that path, or choose another --workdir",
    "EROFS": "the file system is read-only: choose another --workdir",
    "ENOENT": "check the path",
    "ENOTDIR": "a part of the path is a file, not a folder: check the path",
    "EISDIR": "the path is a folder, not a file: check the path",
    "EIO": "the disk reported an input/output error: check the disk, then re-run to resume",
}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe_error(err: BaseException) -> str | None:
    """The one-line message (``<file, video or option>: <problem> (<hint>)``) of a
    user-facing error, or None for a bug (which keeps its traceback).

    User-facing: bad flags (ConfigError, UsageError), run directory problems
    (RunDirError), bad data (DataError, ValueError from the data checks,
    damaged files: EOFError, BadZipFile), file and disk errors (OSError),
    diverged training (FloatingPointError) and running out of memory.
    """
    import errno
    import zipfile

    from clapjax.data import DataError
    from clapjax.report.rundir import RunDirError

    if isinstance(err, (ConfigError, UsageError, RunDirError, DataError)):
        return _one_line(err)
    if isinstance(err, OSError):
        code = errno.errorcode.get(err.errno or -1, "")
        hint = _OS_HINTS.get(code, "re-run with --debug for the traceback")
        what = err.strerror or _one_line(err) or type(err).__name__
        name = err.filename if err.filename is not None else None
        where = f"{name}: " if name is not None else ""
        if err.filename2 is not None:
            where = f"{err.filename} -> {err.filename2}: "
        return f"{where}{_one_line(what)} ({hint})"
    if isinstance(err, MemoryError):
        return ("out of memory (fewer participants or videos per run, --train.streaming True, "
                "or a machine with more memory)")
    if isinstance(err, FloatingPointError):
        text = _one_line(err)
        return text if text.endswith(")") else f"{text} (lower --train.lr, or check the features)"
    if isinstance(err, (ValueError, EOFError, zipfile.BadZipFile)):
        text = _one_line(err) or type(err).__name__
        return text if text.endswith(")") else f"{text} (re-run with --debug for the traceback)"
    return None


def cli(argv: Sequence[str] | None = None) -> int:
    """Console entry point: one-line errors with exit status 2 for bad input
    (``--debug`` adds the traceback); 130 on Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        execute(parse(argv, one_line_errors=True), argv=argv)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - describe_error decides what is user-facing
        message = describe_error(err)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
