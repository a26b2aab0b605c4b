"""Full-size real-layout benchmark: the CLI on features bigger than RAM (JSON).

Two commands::

    # 1. Write the synthetic dataset as real per-video feature files,
    #    <video>_i3d.npy of shape (m, crops, D) float32 (the RTFM UCF layout):
    python -m experiments.bench_fullsize generate --out DIR --crops 10 --dim 2048

    # 2. Measure python -m experiments.run --features-dir DIR on them:
    python -m experiments.bench_fullsize run --features-dir DIR --out bench_fullsize.json

``run`` measures, in this order (JSON keys):

* ``disk``: this disk's sequential read speed (16 MiB reads of every 7th
  feature file, page cache dropped first when possible), in bytes/s: the
  median of ``disk_probes``, interleaved with the reader probes.
* ``reader``: the streaming reader alone (no training): the first round's
  batches of the run's split read as the engine streams them (step-count
  groups, chunks), shuffled (the paper) and in split order (the released
  code), with a cold cache where possible: bytes/s and its fraction of
  ``disk``. This is the I/O ceiling of a training round.
* ``streaming``: ``experiments.run`` for ``--rounds`` rounds (default 2)
  streaming from disk (``--train.streaming True``) in a child process,
  sampled every 0.25 s: peak RSS (``VmHWM`` = everything resident in the
  process, file-backed pages included, and ``RssAnon``: the process's own
  memory; the kernel's page cache is not part of either and is reported
  separately as the growth of ``Cached``), seconds per round, the bytes the
  process read from storage per round (``/proc/<pid>/io`` ``read_bytes``:
  page-cache misses only) and their rate against ``disk``, the statistics
  stage time, and the preflight's estimate. Load averages before and after.
* ``fits_in_ram`` (``--compare '--crops mean ...'``): the same run with
  these extra flags (a size that fits in RAM) once streaming and once in
  memory; ``comparison`` says whether the per-round metrics, test scores and
  pseudo-labels are the same bit for bit.

The files are the synthetic generator's (``clapjax.data.SyntheticConfig``
default preset at the given size); write them on local disk and delete them
afterwards. Dropping the page cache needs root (``/proc/sys/vm/drop_caches``);
``cache_dropped`` says whether it worked.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- generation


def write_features(out: str | Path, dataset: str = "ucf", crops: int = 10, feature_dim: int = 2048,
                   preset: str = "default", parts=("train", "test"), log=None, videos: dict | None = None,
                   **overrides) -> dict:
    """Writes every video of ``parts`` as ``<out>/<part>/<video>_i3d.npy`` ``(m, crops, D)`` float32.

    ``videos`` (part -> table indices) restricts a part to those videos.

    The values are the synthetic generator's (``SyntheticConfig.preset(preset,
    crops=..., feature_dim=..., **overrides)``), so a run on these files is a
    run on that synthetic dataset through the real-feature path. Existing
    files of the right size are kept (an interrupted generation resumes);
    each file is written to a temporary name and renamed.

    Returns:
      ``{"files", "bytes", "seconds"}``.
    """
    from clapjax import data

    cfg = data.SyntheticConfig.preset(preset, crops=crops, feature_dim=feature_dim, **overrides)
    out = Path(out)
    t0, files, nbytes = time.perf_counter(), 0, 0
    for part in parts:
        src = data.open_source(dataset, part, synthetic=cfg, videos=(videos or {}).get(part))
        folder = out / part
        folder.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(src.names):
            path = folder / f"{name}_i3d.npy"
            m = int(src.lengths[i])
            expect = m * crops * feature_dim * 4
            if path.exists() and path.stat().st_size >= expect:
                nbytes += path.stat().st_size
                files += 1
                continue
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                np.save(f, src.read(i))
            os.replace(tmp, path)
            nbytes += path.stat().st_size
            files += 1
            if log and (i % 100 == 0 or m > 10000):
                log(f"{part} {i + 1}/{len(src.names)} ({nbytes / 2**30:.1f} GiB, {time.perf_counter() - t0:.0f} s)")
    return {"files": files, "bytes": nbytes, "seconds": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------- measuring


def drop_caches() -> bool:
    """Writes back dirty pages and drops the page cache (root only); True if it worked."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def _meminfo(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def sequential_read_speed(files: list[Path], max_bytes: int, block: int = 16 << 20) -> dict:
    """Bytes/s of reading ``files`` in order with ``block``-byte reads (cold cache if possible)."""
    dropped = drop_caches()
    buf = bytearray(block)
    view = memoryview(buf)
    done, t0 = 0, time.perf_counter()
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            while done < max_bytes:
                n = os.readv(fd, [view])
                if n <= 0:
                    break
                done += n
        finally:
            os.close(fd)
        if done >= max_bytes:
            break
    dt = time.perf_counter() - t0
    return {"bytes": done, "seconds": round(dt, 3), "bytes_per_s": done / dt, "block_bytes": block,
            "cache_dropped": dropped}


def reader_throughput(features_dir: Path, args, shuffle: bool, max_bytes: int) -> dict:
    """The streaming reader alone on the first round's batches (no training)."""
    from clapjax import data, pipeline
    from clapjax.engine import data as data_lib
    from clapjax.engine.backends import stream_chunks
    from clapjax.engine.options import TrainOptions
    from experiments.config import RunConfig, validate

    resolved = validate(RunConfig(features_dir=features_dir, split=args.split, participants=args.participants,
                                  crops=args.crops))
    src = data.open_source(resolved.config.dataset, "train", features_dir=features_dir, crops=args.crops)
    ts = pipeline.load_training_set(src, resolved.split, in_memory=False)
    opts: TrainOptions = resolved.train
    parts = [ts.participant_rows(k) for k in range(ts.num_participants)]
    counts = np.array([p.size for p in parts])
    steps = data_lib.plan_steps(counts, opts.batch_size, opts.local_epochs)
    plan = data_lib.make_plan(parts, opts.batch_size, opts.local_epochs, shuffle, opts.seed, 0, steps)
    groups = data_lib.step_groups(data_lib.steps_per_epoch(counts, opts.batch_size) * opts.local_epochs,
                                  opts.vmap_groups)
    row_bytes = 4 * int(np.prod(ts.features.shape[1:]))
    dropped = drop_caches()
    done = rows = 0
    io0, t0 = _io_read_bytes(os.getpid()), time.perf_counter()
    for idx in groups:
        valid = plan.step_valid[idx].sum(axis=1)
        sub = data_lib.BatchPlan(*(a[idx, : max(1, int(valid.max()))] for a in plan))
        per_step = idx.size * opts.batch_size * row_bytes
        tc = max(1, min(opts.chunk_steps, opts.stream_chunk_bytes // per_step))
        for x, _, m, _ in stream_chunks(ts.features, sub, tc):
            done += x.nbytes
            rows += int(m.sum())
            if done >= max_bytes:
                break
        if done >= max_bytes:
            break
    dt = time.perf_counter() - t0
    storage = _io_read_bytes(os.getpid()) - io0
    ts.features.close()
    return {"shuffle": shuffle, "bytes_gathered": done, "real_rows": rows, "seconds": round(dt, 3),
            "bytes_per_s": done / dt, "storage_read_bytes": storage, "cache_dropped": dropped,
            "io_threads": ts.features._reader.io_threads}


def _io_read_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _status(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


class _Sampler(threading.Thread):
    """Samples a child's memory and storage reads every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.25, kill_above: int | None = None):
        super().__init__(daemon=True)
        self.pid, self.interval, self.kill_above = pid, interval, kill_above
        self.killed = False
        self.peak: dict[str, int] = {}
        self.cached0 = _meminfo("Cached")
        self.cached_peak = self.cached0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            st = _status(self.pid)
            for k, v in st.items():
                self.peak[k] = max(self.peak.get(k, 0), v)
            if self.kill_above and st.get("VmRSS", 0) > self.kill_above and not self.killed:
                # Protect the machine's other users: a run over the limit is stopped.
                self.killed = True
                os.kill(self.pid, 9)
            self.cached_peak = max(self.cached_peak, _meminfo("Cached"))
            time.sleep(self.interval)


def run_cli(argv: list[str], workdir: Path, nice: int, log, kill_above: int | None = None) -> dict:
    """Runs ``python -m experiments.run ARGV --json`` and measures it."""
    # ``nice`` is the child's niceness, not an increment on top of ours.
    more = max(0, nice - os.nice(0))
    cmd = (["nice", "-n", str(more)] if more else []) + [sys.executable, "-m", "experiments.run", *argv,
                                                         "--workdir", str(workdir), "--json"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    sampler = _Sampler(proc.pid, kill_above=kill_above)
    sampler.start()
    events = []
    err_lines: list[str] = []
    err_thread = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    err_thread.start()
    for line in proc.stdout:
        now = time.perf_counter() - t0
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        ev["_t"] = now
        ev["_read_bytes"] = _io_read_bytes(proc.pid)
        ev["_status"] = _status(proc.pid)
        events.append(ev)
        if ev.get("event") in ("stage", "round"):
            log(f"  {ev.get('event')} {ev.get('name', ev.get('round'))} at {now:.0f} s")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    err_thread.join(timeout=5)
    if proc.returncode != 0:
        why = f"resident memory above {kill_above} bytes: stopped" if sampler.killed else ''.join(err_lines[-20:])
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {why}")
    return {"command": cmd, "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "events": events, "ru_maxrss_bytes": usage.ru_maxrss * 1024,
            "sampled_peak_bytes": sampler.peak, "page_cache_growth_bytes": sampler.cached_peak - sampler.cached0,
            "loadavg_before": load0, "loadavg_after": os.getloadavg()}


def summarise_run(res: dict, disk_bps: float | None) -> dict:
    """Per-round seconds and storage reads, statistics time, peaks, preflight."""
    events = res["events"]
    rounds, last = [], None
    for ev in events:
        if ev.get("event") == "round":
            start = last
            dt = ev["_t"] - start["_t"]
            read = ev["_read_bytes"] - start["_read_bytes"]
            rounds.append({"round": ev["round"], "seconds": round(dt, 1), "train_seconds": ev.get("train_seconds"),
                           "eval_seconds": ev.get("eval_seconds"), "storage_read_bytes": read,
                           "storage_read_bytes_per_s": read / dt,
                           "fraction_of_disk_sequential": None if not disk_bps else read / dt / disk_bps,
                           "auc": ev.get("auc"), "train_loss": ev.get("train_loss")})
        if ev.get("event") in ("stage", "round", "info"):
            last = ev
    stages = {ev["name"]: ev["seconds"] for ev in events if ev.get("event") == "stage"}
    preflight = next((ev for ev in events if ev.get("event") == "info" and "resources" in ev), {})
    summary = next((ev for ev in events if ev.get("event") == "summary"), {})
    peak = res["sampled_peak_bytes"]
    return {
        "command": " ".join(res["command"]),
        "wall_s": res["wall_s"],
        "cpu_s": res["cpu_s"],
        "rounds": rounds,
        "statistics_s": stages.get("video statistics"),
        "stages_s": stages,
        "peak_rss_bytes": res["ru_maxrss_bytes"],
        "peak_rss_gib": round(res["ru_maxrss_bytes"] / 2**30, 3),
        "peak_rss_anon_bytes": peak.get("RssAnon"),
        "peak_rss_file_bytes": peak.get("RssFile"),
        "page_cache_growth_bytes": res["page_cache_growth_bytes"],
        "preflight": preflight.get("resources"),
        "loadavg_before": res["loadavg_before"],
        "loadavg_after": res["loadavg_after"],
        "final_auc": (summary.get("final") or {}).get("auc") if isinstance(summary, dict) else None,
    }


def _same_numbers(a: Path, b: Path) -> dict:
    ma = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    keys = ("auc", "ap_sklearn", "ap_trapezoid", "train_loss", "train_loss_per_participant", "labels_changed")
    metrics_equal = [all(x[k] == y[k] for k in keys) for x, y in zip(ma, mb)]
    sa, sb = np.load(a / "test_scores.npy"), np.load(b / "test_scores.npy")
    pa, pb = np.load(a / "pseudo_labels.npz"), np.load(b / "pseudo_labels.npz")
    pl_equal = all(np.array_equal(pa[k], pb[k]) for k in pa.files)
    return {"metrics_equal_per_round": metrics_equal, "test_scores_bitwise_equal": bool(np.array_equal(sa, sb)),
            "pseudo_labels_bitwise_equal": bool(pl_equal),
            "same_numbers": bool(all(metrics_equal) and len(ma) == len(mb) and np.array_equal(sa, sb) and pl_equal)}


def run(args, log) -> dict:
    features_dir = Path(args.features_dir)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    # A spread of files (every 7th by name) rather than the largest: files
    # written at different times may sit differently on the virtual disk.
    train_files = sorted((features_dir / "train").glob("*.npy"))[::7]
    report: dict = {"features_dir": str(features_dir), "machine": {"cpus": os.cpu_count(),
                    "mem_total_bytes": _meminfo("MemTotal")},
                    "feature_bytes_on_disk": sum(p.stat().st_size for p in features_dir.rglob("*.npy"))}
    # Disk and reader probes interleaved (this disk's speed varies with other
    # users): the reader's fraction is taken against the median disk speed.
    report["disk_probes"], report["reader"] = [], []
    for rep in range(args.probe_repeats):
        log("disk sequential read speed ...")
        report["disk_probes"].append(sequential_read_speed(train_files, args.disk_probe_bytes))
        log(f"  {report['disk_probes'][-1]['bytes_per_s'] / 1e9:.2f} GB/s")
        for shuffle in (True, False):
            log(f"reader alone (shuffle={shuffle}) ...")
            r = reader_throughput(features_dir, args, shuffle, args.reader_probe_bytes)
            report["reader"].append(r)
            log(f"  {r['bytes_per_s'] / 1e9:.2f} GB/s")
    disk_bps = float(np.median([d["bytes_per_s"] for d in report["disk_probes"]]))
    report["disk"] = {"median_bytes_per_s": disk_bps, "cache_dropped": report["disk_probes"][0]["cache_dropped"]}
    for r in report["reader"]:
        r["fraction_of_disk_sequential"] = r["bytes_per_s"] / disk_bps
    base = ["--features-dir", str(features_dir), "--split", args.split, "--rounds", str(args.rounds),
            "--crops", args.crops, *(["--participants", str(args.participants)] if args.participants else [])]
    if not args.skip_full:
        drop_caches()
        log("full-size run, streaming ...")
        try:
            res = run_cli(base + ["--train.streaming", "True", "--overwrite"], work / "full", args.nice, log,
                          kill_above=int(args.kill_above_gib * 2**30))
            report["streaming"] = summarise_run(res, disk_bps)
        except RuntimeError as err:
            report["streaming_error"] = str(err)
    if args.compare is not None:
        cmp_args = base + shlex.split(args.compare)
        out = {"extra_args": args.compare}
        try:
            for access, flag in (("streaming", "True"), ("in_memory", "False")):
                drop_caches()
                log(f"{args.compare}, {access} ...")
                res = run_cli(cmp_args + ["--train.streaming", flag, "--overwrite"], work / f"cmp_{access}",
                              args.nice, log, kill_above=int(args.kill_above_gib * 2**30))
                out[access] = summarise_run(res, disk_bps)
            out["comparison"] = _same_numbers(work / "cmp_streaming", work / "cmp_in_memory")
        except RuntimeError as err:
            out["error"] = str(err)
        report["fits_in_ram"] = out
    report["targets"] = targets(report)
    return report


def targets(report: dict) -> dict:
    """The benchmark's targets (issue 14) against the measured numbers."""
    out = {}
    s = report.get("streaming")
    if s:
        out["peak_rss_le_6GiB"] = {"measured_gib": s["peak_rss_gib"], "met": s["peak_rss_gib"] <= 6.0}
        fr = [r["fraction_of_disk_sequential"] for r in s["rounds"]]
        out["training_read_ge_70pct_of_disk"] = {"measured": fr, "met": bool(fr and min(fr) >= 0.7)}
    rd = report.get("reader")
    if rd:
        out["reader_alone_fraction_of_disk"] = {
            name: float(np.median([r["fraction_of_disk_sequential"] for r in rd if r["shuffle"] == shuffle]))
            for name, shuffle in (("shuffled", True), ("split_order", False))}
    f = report.get("fits_in_ram")
    if f and "comparison" in f:
        out["streaming_equals_in_memory"] = f["comparison"]["same_numbers"]
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write the synthetic dataset as per-video .npy files")
    g.add_argument("--out", required=True)
    g.add_argument("--dataset", choices=("ucf", "xd"), default="ucf")
    g.add_argument("--crops", type=int, default=10)
    g.add_argument("--dim", type=int, default=2048)
    g.add_argument("--preset", default="default")
    g.add_argument("--parts", nargs="+", default=["train", "test"])
    r = sub.add_parser("run", help="measure experiments.run on the files")
    r.add_argument("--features-dir", required=True)
    r.add_argument("--workdir", default="runs/bench_fullsize")
    r.add_argument("--out", default=None)
    r.add_argument("--split", default="random")
    r.add_argument("--participants", type=int, default=None)
    r.add_argument("--rounds", type=int, default=2)
    r.add_argument("--crops", choices=("keep", "mean"), default="keep")
    r.add_argument("--compare", default=None,
                   help="extra run flags of a size that fits in RAM (e.g. '--crops mean'), run streaming "
                        "and in memory and compared")
    r.add_argument("--skip-full", action="store_true", help="skip the full-size streaming run")
    r.add_argument("--nice", type=int, default=10, help="niceness of the measured runs")
    r.add_argument("--disk-probe-bytes", type=int, default=4 << 30)
    r.add_argument("--reader-probe-bytes", type=int, default=4 << 30)
    r.add_argument("--probe-repeats", type=int, default=3)
    r.add_argument("--kill-above-gib", type=float, default=8.0,
                   help="stop a measured run whose resident memory exceeds this (protects a shared machine)")
    return p


def main(argv=None) -> dict:
    args = parser().parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.command == "generate":
        report = write_features(args.out, args.dataset, args.crops, args.dim, args.preset, tuple(args.parts), log)
    else:
        report = run(args, log)
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if getattr(args, "out", None) and args.command == "run":
        Path(args.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
