"""Progress output modes, markdown protocol tables and plots."""

import io
import json

import numpy as np
import pytest

from clapjax.report import progress, tables


def _round_record():
    return {"round": 2, "auc": 0.75, "ap_sklearn": 0.3, "ap_trapezoid": 0.29, "train_loss": 0.41,
            "label_quality": {"segments": {"precision": 0.5, "recall": 0.4, "iou": 0.3}}}


def test_normal_mode_round_line_and_stage():
    out, err = io.StringIO(), io.StringIO()
    rep = progress.Reporter("normal", out, err)
    with rep.stage("statistics", total=3) as st:
        for i in range(3):
            st.update(i + 1)
    rep.round(_round_record(), total_rounds=10, elapsed=65.0, eta=300.0)
    line = out.getvalue().strip()
    assert line.startswith("round  2/10  AUC 0.7500") and "loss 0.4100" in line
    assert "elapsed 1:05" in line and "ETA 5:00" in line and "label IoU 0.300" in line
    assert "statistics 3/3 done" in err.getvalue()


def test_quiet_and_json_modes():
    out, err = io.StringIO(), io.StringIO()
    rep = progress.Reporter("quiet", out, err)
    with rep.stage("x"):
        pass
    rep.info("hello")
    rep.round(_round_record(), 10, 1.0, 1.0)
    rep.final({"a": 1}, "final AUC 0.7")
    assert out.getvalue() == "final AUC 0.7\n" and err.getvalue() == ""

    out = io.StringIO()
    rep = progress.Reporter("json", out, io.StringIO())
    with rep.stage("statistics"):
        pass
    rep.round(_round_record(), 10, 1.0, None)
    rep.final({"final": {"auc": 0.7}}, "ignored")
    events = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["stage", "round", "summary"]
    assert events[1]["auc"] == 0.75 and events[1]["eta_s"] is None


def test_format_seconds_and_clock():
    assert progress.format_seconds(3725) == "1:02:05"
    assert progress.format_seconds(None) == "?"
    clock = progress.RoundClock(first_round=3, total_rounds=10)
    assert clock.eta(2) is None and clock.eta(3) >= 0


def test_protocol_markdown_is_well_formed():
    summary = {"final": {"auc": 0.71, "ap_sklearn": 0.2, "ap_trapezoid": 0.19},
               "best": {"auc": 0.73, "selected_on": "test set"}}
    rows = [tables.ResultRow("random 5", 78.02, summary, 12.0),
            tables.ResultRow("seeds", "77.32 ± 0.19", summary, 30.0, runs=5,
                             final_std=0.01, best_std=0.02)]
    md = tables.protocol_markdown("Table 3", rows, features="preset tiny", synthetic=True,
                                  total_seconds=42.0)
    assert "NOT comparable" in md and "synthetic" in md and "0:42" in md
    table_lines = [l for l in md.splitlines() if l.startswith("|")]
    assert len(table_lines) == 4 and len({l.count("|") for l in table_lines}) == 1
    assert "| random 5 | 78.02 | 71.00 | 73.00 | 20.00 | 19.00 | 1 | 0:12 |" in md
    assert "71.00 ± 1.00" in md
    with pytest.raises(ValueError, match="cells"):
        tables.markdown_table(["a", "b"], [["x"]])
    assert tables.mean_std([0.5, None, 0.7]) == (pytest.approx(0.6), pytest.approx(np.std([0.5, 0.7], ddof=1)))


def test_auc_axis_range_holds_chance_values_and_a_minimum_span():
    from clapjax.report.plots import MIN_AUC_SPAN, auc_axis_range

    lo, hi = auc_axis_range([71.0, 71.3])  # a 0.3-point change is not a cliff
    assert hi - lo >= MIN_AUC_SPAN and lo <= 50.0 <= hi and lo <= 71.0 and 71.3 <= hi
    lo, hi = auc_axis_range([20.0, 99.5])
    assert (lo, hi) == (17.0, 100.0)
    lo, hi = auc_axis_range([1.0, 2.0, float("nan")])
    assert lo == 0.0 and hi >= 53.0
    lo, hi = auc_axis_range([])
    assert lo <= 50.0 <= hi and hi - lo == pytest.approx(MIN_AUC_SPAN)
    lo, hi = auc_axis_range([99.9])
    assert hi == 100.0 and hi - lo >= MIN_AUC_SPAN and lo <= 50.0


def test_auc_plot_has_chance_line_references_and_synthetic_mark(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from clapjax.report import plots

    seen = {}
    save = plots._save

    def spy(fig, path):
        ax = fig.axes[0]
        seen["ylim"] = ax.get_ylim()
        seen["hlines"] = sorted(round(float(line.get_ydata()[0]), 3) for line in ax.get_lines()
                                if len(set(line.get_ydata())) == 1 and len(line.get_ydata()) == 2)
        seen["texts"] = [t.get_text() for t in ax.texts]
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    recs = [dict(_round_record(), round=r, auc=0.70 + 0.001 * r) for r in (1, 2, 3)]
    plots.auc_per_round({"a": recs}, tmp_path / "auc.png", references={"floor": 0.6, "ceiling": 0.9},
                        synthetic=True)
    assert seen["hlines"] == [50.0, 60.0, 90.0]
    lo, hi = seen["ylim"]
    assert lo <= 50.0 and hi >= 90.0
    assert any("synthetic features" in t for t in seen["texts"])
    plots.auc_per_round({"a": recs}, tmp_path / "auc2.png")
    assert seen["hlines"] == [50.0] and not seen["texts"] and seen["ylim"][1] - seen["ylim"][0] >= 20.0


def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from clapjax.report import plots

    recs = [dict(_round_record(), round=r, auc=0.5 + 0.1 * r, auc_per_participant=[0.5, 0.6])
            for r in (1, 2)]
    paths = [
        plots.auc_per_round({"a": recs, "b": recs}, tmp_path / "auc.png"),
        plots.local_auc_per_round(recs, ["p0", "p1"], tmp_path / "local.png"),
        plots.label_quality_per_round(recs, tmp_path / "q.png"),
        plots.score_curves([("v", np.array([0.1, 0.9]), np.r_[np.zeros(16), np.ones(16)])],
                           tmp_path / "s.png"),
        plots.participant_distribution(np.array([[3, 1], [2, 2]]), ["a", "b"], tmp_path / "d.png"),
        # compressed segments (Sultani's 32 per video) carry their own frame counts
        plots.score_curves([("v", np.array([0.1, 0.9]), np.r_[np.zeros(40), np.ones(3)], np.array([40, 3]))],
                           tmp_path / "s32.png"),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
