"""The protocol runner: row definitions and a tiny end-to-end table."""

import dataclasses

import pytest

from clapjax.report import tables
from experiments import protocols
from experiments.config import validate


def _args(protocol, **kw):
    return protocols.ProtocolArgs(protocol=protocol, preset="tiny", **kw)


@pytest.mark.parametrize("protocol, n_rows, n_runs", [
    ("table1", 18, 18), ("table3", 6, 6), ("ablation", 3, 3), ("aggregators", 3, 3),
    ("weak", 4, 4), ("seeds", 1, 5),
])
def test_rows_are_valid_configurations(protocol, n_rows, n_runs):
    rows = protocols.rows_for(_args(protocol))
    assert len(rows) == n_rows and sum(len(r.configs) for r in rows) == n_runs
    for row in rows:
        for cfg in row.configs:
            validate(cfg)  # every configuration passes the CLI's validation
    if protocol == "ablation":
        resolved = [validate(r.configs[0]) for r in rows]
        assert [r.config.null_model for r in resolved] == ["local", "server_mixture", "server_mixture"]
        assert [r.train.plr_start_round is None for r in resolved] == [True, True, False]
    if protocol == "weak":
        assert [int(validate(r.configs[0]).weak.sum()) for r in rows] == [0, 10, 17, 25]
    if protocol == "seeds":
        seeds = [c.seed for c in rows[0].configs]
        assert seeds == [0, 1, 2, 3, 4] and all(c.generate_split for c in rows[0].configs)
    if protocol == "table1":
        resolved = [validate(r.configs[0]) for r in rows]
        assert {r.config.dataset for r in resolved} == {"ucf", "xd"}
        assert [r.config.method for r in resolved[:3]] == ["gcl", "c2fpl", "clap"]
        assert [r.paper for r in rows[:3]] == [71.04, 80.65, 80.9]  # UCF centralized: GCL, C2FPL, CLAP
        assert rows[-1].paper == tables.PAPER_AUC["table1"]["clap xd/collaborative"] == 77.65
        assert len({r.label for r in rows}) == 18


def test_ablation_protocol_writes_a_well_formed_table(tmp_path, capsys):
    args = _args("ablation", rounds=2, videos_per_participant=1, workdir=tmp_path, quiet=True)
    md = protocols.run_protocol(args)
    assert (tmp_path / "ablation-tiny.md").read_text() == md
    assert "NOT comparable to the paper's I3D results" in md and "synthetic (preset tiny)" in md
    assert "Total wall time" in md
    rows = [l for l in md.splitlines() if l.startswith("|")]
    assert len(rows) == 2 + 3 and len({l.count("|") for l in rows}) == 1
    assert rows[2].startswith("| local nulls | 76.20 |") and rows[4].startswith("| + PLR | 78.02 |")
    for line in rows[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert 0.0 <= float(cells[2]) <= 100.0 and 0.0 <= float(cells[3]) <= 100.0
    assert md in capsys.readouterr().out
    # Re-running reuses the finished run directories.
    again = protocols.run_protocol(dataclasses.replace(args, out=tmp_path / "again.md"))
    again_rows = [l for l in again.splitlines() if l.startswith("|")]
    assert again_rows[2].split("|")[3] == rows[2].split("|")[3]
    # ... and reports each row with its runs' own working time (not the seconds of reading
    # them back), identical to the first invocation's, with a note saying so.
    assert [l.split("|")[-2] for l in again_rows[2:]] == [l.split("|")[-2] for l in rows[2:]]
    assert "Runs finished before this invocation are reused" in again
    assert "Runs finished before this invocation are reused" not in md


def test_real_features_for_table1_need_both_datasets(tmp_path):
    with pytest.raises(protocols.ProtocolError, match="--xd-features-dir"):
        protocols.rows_for(protocols.ProtocolArgs(protocol="table1", features_dir=tmp_path))
    rows = protocols.rows_for(protocols.ProtocolArgs(
        protocol="table1", features_dir=tmp_path / "ucf", xd_features_dir=tmp_path / "xd"))
    assert {r.configs[0].features_dir for r in rows} == {tmp_path / "ucf", tmp_path / "xd"}
    assert protocols.cli(["seeds", "--seeds", "1", "--workdir", str(tmp_path)]) == 2


def test_table1_methods_subset():
    rows = protocols.rows_for(_args("table1", methods=("c2fpl",)))
    assert [r.label for r in rows[:3]] == ["ucf centralized C2FPL", "ucf local C2FPL", "ucf collaborative C2FPL"]
    assert all(r.configs[0].method == "c2fpl" for r in rows) and len(rows) == 6
    with pytest.raises(protocols.ProtocolError, match="--methods"):
        protocols.rows_for(_args("table1", methods=()))
