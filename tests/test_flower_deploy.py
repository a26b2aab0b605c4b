"""K = 3 tiny participants through Flower's real deployment runtime on loopback.

One SuperLink and three SuperNodes run as separate processes; every ClientApp
message runs in its own process. The shared deployment goes through the
launcher of ``python -m experiments.deploy``. Checks: the final global model
equals the in-process engine's, only summaries and deltas cross the wire (from
both ends' logs), the launcher prints what ``experiments.run`` prints and keeps
the logs in the run directory, and a participant killed mid-run is reported
without a hang.

Needs the ``flower`` extra (skipped otherwise; the README's test command
installs it, so CI runs these). Every ClientApp message starts a fresh Python +
JAX process, so one deployment takes 1-2 min on 2 cores: the shared deployment
and the killed-participant run are in the default run (about 2.5 min); the
SecAgg+ run (about 2 min more) is marked slow.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("flwr")

import jax  # noqa: E402

from clapjax_flower import codec, wire  # noqa: E402
from clapjax_flower.config import DeployConfig, resolve  # noqa: E402
from clapjax_flower.coordinator import param_shapes  # noqa: E402
from clapjax_flower.inprocess import run_inprocess  # noqa: E402
from clapjax_flower.launch import DeploymentError, LocalFederation, live_group_members  # noqa: E402

K = 3
TINY = DeployConfig(participants=K, generate_split=True, preset="tiny", videos_per_participant=2, rounds=2,
                    round_timeout=240)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """One loopback deployment run (2 rounds, PLR from round 1) through the
    launcher of ``python -m experiments.deploy``, its output and its logs."""
    from experiments import deploy

    root = tmp_path_factory.mktemp("flower")
    run_dir = root / "run"
    cfg = TINY.replace(run_dir=str(run_dir))
    out, err = io.StringIO(), io.StringIO()
    feds = []
    cmd = deploy.DeployCommand(run=cfg, workdir=run_dir, state_root=root / "nodes", timeout=600)
    summary = deploy.main(cmd, out=out, err=err, on_start=feds.append)
    (fed,) = feds
    participant_logs = [wire.read_log(p) for i in range(K) for p in fed.state_dir(i).glob("run_*/wire.jsonl")]
    return dict(cfg=cfg, run_dir=run_dir, summary=summary, participant_logs=participant_logs,
                processes=[fed.superlink, *fed.supernodes], stdout=out.getvalue(), stderr=err.getvalue(),
                log_dir=fed.log_dir)


def test_final_model_matches_in_process_engine(deployment):
    """Same configuration and seed → same global model.

    Tolerance atol 1e-6 / rtol 1e-5: both sides run the same jitted local
    update on the same inputs, but (1) the participant vmaps over one
    participant where the engine vmaps over three, which XLA may compile to
    differently ordered float32 reductions, and (2) the server receives
    Δ_k = θ_k − θ and re-forms θ + Δ_k, rounding to float32 once more
    (≤ 1 ulp of |θ| ≈ 1e-8 here). Observed differences are ~1e-8.
    """
    ref = run_inprocess(deployment["cfg"], evaluate=True)
    final = np.load(deployment["run_dir"] / "final_params.npz")
    names = codec.leaf_names(ref.params)
    assert sorted(final.files) == sorted(names)
    for name, leaf in zip(names, jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(final[name], np.asarray(leaf), rtol=1e-5, atol=1e-6, err_msg=name)
    # Per-round test metrics agree as well.
    metrics = [json.loads(line) for line in (deployment["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2]
    for ours, theirs in zip(metrics, ref.metrics):
        assert ours["auc"] == pytest.approx(theirs["auc"], abs=1e-4)
    assert (deployment["run_dir"] / "summary.json").exists() and (deployment["run_dir"] / "checkpoints").is_dir()
    assert json.loads((deployment["run_dir"] / "deploy_status.json").read_text())["status"] == "completed"


def test_launcher_prints_one_clean_line_per_round_and_the_run_final_line(deployment):
    """The terminal output of ``experiments.deploy``: what ``experiments.run`` prints."""
    from experiments.run import _final_line

    out, err = deployment["stdout"], deployment["stderr"]
    assert "\x1b" not in out + err  # no colour codes
    lines = out.splitlines()
    assert len(lines) == len(set(lines)), "a line was printed twice"
    assert not any(re.match(r"(INFO|DEBUG|WARNING)\b", line) for line in lines), out  # Flower's log is not echoed
    rounds = [line for line in lines if line.startswith("round ")]
    pattern = r"round {}/2  AUC \d\.\d{{4}}  AP \d\.\d{{4}}  loss \d\.\d{{4}}  elapsed \d+:\d\d  ETA \d+:\d\d"
    assert len(rounds) == 2 and all(re.fullmatch(pattern.format(r), line) for r, line in zip((1, 2), rounds)), rounds
    metrics = [json.loads(line) for line in (deployment["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    assert [f"AUC {m['auc']:.4f}" in line for m, line in zip(metrics, rounds)] == [True, True]
    # The same final line as experiments.run, the AUC rounded to 4 digits.
    assert lines[-1] == _final_line(deployment["summary"], deployment["run_dir"])
    assert re.match(r"final AUC \d\.\d{4} \(round 2\), AP sklearn \d\.\d{4}, AP trapezoid \d\.\d{4}; best AUC", lines[-1])
    # The printed log folder is the run directory's and outlives the launcher.
    log_dir = deployment["log_dir"]
    assert log_dir == deployment["run_dir"] / "logs" and f"their logs: {log_dir}" in out
    names = {p.name for p in log_dir.iterdir()}
    assert {"superlink.log", "flwr_run.log", *(f"supernode_{i}.log" for i in range(K))} <= names
    assert "\x1b" not in (log_dir / "flwr_run.log").read_text()
    assert "[clapjax server] round 2/2" in (log_dir / "flwr_run.log").read_text()


def _check_entry(entry: dict, param_shape: dict, k: int) -> None:
    allowed = codec.PROTOCOL[(entry["direction"], entry["message_type"])]
    for rec in entry["records"]:
        assert rec["name"] in allowed, f"unexpected record {rec['name']!r} in {entry['message_type']}"
        assert rec["kind"] == allowed[rec["name"]]
        if rec["kind"] == "array":
            # Every array is a parameter-shaped tree: the model, a delta or a control variate.
            shapes = {a["key"]: tuple(a["shape"]) for a in rec["arrays"]}
            assert shapes == param_shape, f"{rec['name']} arrays are not parameter-shaped"
        else:
            keys = {e["key"] for e in rec["entries"]}
            assert keys <= codec.SCALAR_KEYS[rec["name"]], f"{rec['name']} has keys {keys}"
            for e in rec["entries"]:
                # Scalars, or the K mixture components: never a per-segment or per-video array.
                assert e["length"] is None or (rec["name"] == "mixture" and e["length"] == k), e


def test_only_summaries_and_deltas_cross_the_wire(deployment):
    cfg = deployment["cfg"]
    res = resolve(cfg)
    # The tiny preset has D = 16 features and 2 crops per segment.
    from clapjax import data

    syn = data.SyntheticConfig.preset("tiny")
    shapes = param_shapes(res, syn.feature_dim, syn.crops)
    param_shape = dict(zip(codec.leaf_names(shapes), (tuple(s.shape) for s in jax.tree.leaves(shapes))))
    server_log = wire.read_log(deployment["run_dir"] / "wire" / "server.jsonl")
    logs = deployment["participant_logs"]
    assert len(logs) == K and all(logs)
    for entry in server_log + [e for log in logs for e in log]:
        assert "error" not in entry
        _check_entry(entry, param_shape, K)
    # Both ends saw the same messages: per participant 1 summary + 2 rounds, each way.
    for log in logs:
        assert [(e["message_type"], e["direction"]) for e in log] == [
            ("query.summary", "down"), ("query.summary", "up"),
            ("train", "down"), ("train", "up"), ("train", "down"), ("train", "up")]
    ups = [e for e in server_log if e["direction"] == "up"]
    assert sorted(e["bytes"] for e in ups) == sorted(e["bytes"] for log in logs for e in log if e["direction"] == "up")
    # The upload of a round is exactly one delta (+ scalars): no more bytes than the model.
    model_bytes = sum(int(np.prod(s)) * 4 for s in param_shape.values())
    train_up = [e for e in ups if e["message_type"] == "train"]
    raw = [sum(a["nbytes"] for r in e["records"] if r["kind"] == "array" for a in r["arrays"]) for e in train_up]
    assert raw == [model_bytes] * (2 * K)
    summary_up = [e["bytes"] for e in ups if e["message_type"] == "query.summary"]
    assert max(summary_up) < 200  # (Γ, Θ, M0) and the partition id


def test_processes_are_stopped_after_the_run(deployment):
    for proc in deployment["processes"]:
        assert proc.popen.poll() is not None, f"{proc.name} still running"
        # No member of its process group (SuperExec, ClientApp, ServerApp) survives.
        assert live_group_members(proc.pid) == [], proc.name


@pytest.mark.slow  # four processes and a kill; the default run keeps the deployment's equality test
def test_killed_participant_is_reported_without_hang(tmp_path):
    run_dir = tmp_path / "run"
    cfg = TINY.replace(rounds=20, run_dir=str(run_dir))
    killed_at = {}
    with LocalFederation(K, workdir=tmp_path / "nodes") as fed:
        victim = fed.supernodes[1]

        def kill_after_its_summary():
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                logs = list(fed.state_dir(1).glob("run_*/wire.jsonl"))
                if logs and any(e["direction"] == "up" for e in wire.read_log(logs[0])):
                    os.killpg(victim.pid, signal.SIGKILL)
                    killed_at["t"] = time.monotonic()
                    return
                time.sleep(0.2)

        killer = threading.Thread(target=kill_after_its_summary, daemon=True)
        killer.start()
        with pytest.raises(DeploymentError, match=r"participant 1 \(SuperNode pid \d+\) exited"):
            fed.run(cfg.to_run_config(), run_dir, timeout=400)
        reported = time.monotonic()
        killer.join(timeout=5)
        processes = [fed.superlink, *fed.supernodes]
    assert "t" in killed_at, "the participant never replied to the summary request"
    assert reported - killed_at["t"] < 30
    for proc in processes:
        assert proc.popen.poll() is not None, f"{proc.name} still running"
        assert live_group_members(proc.pid) == [], proc.name


@pytest.mark.slow
def test_secure_aggregation_matches_in_process_within_quantisation(tmp_path):
    """SecAgg+ (4 stages per round): the server only unmasks the mean delta.

    One round, so the comparison isolates SecAgg+'s quantisation (entries
    clipped to ±secagg_clip = 1 and mapped to 2^22 levels: 4.8e-7 per entry)
    from later rounds' PLR decisions, which can flip on such differences.
    """
    run_dir = tmp_path / "run"
    cfg = TINY.replace(rounds=1, secagg=True, run_dir=str(run_dir))
    with LocalFederation(K, workdir=tmp_path / "nodes") as fed:
        result = fed.run(cfg.to_run_config(), run_dir, timeout=600)
        logs = [wire.read_log(p) for i in range(K) for p in fed.state_dir(i).glob("run_*/wire.jsonl")]
    assert result.status["status"] == "completed"
    ref = run_inprocess(cfg, evaluate=False)
    final = np.load(run_dir / "final_params.npz")
    for name, leaf in zip(codec.leaf_names(ref.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(final[name], np.asarray(leaf), rtol=0, atol=2e-6, err_msg=name)
    # No participant ever uploads a float32 parameter array: only masked integer vectors.
    for log in logs:
        for e in log:
            if e["direction"] == "up":
                assert all(r["kind"] != "array" or not r["arrays"] for r in e["records"]), e
