"""experiments.calibrate: its statistics against plain references, and the
synthetic default inside the ranges measured on real I3D features."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import calibrate


def _ar1(n, phi, rng):
    x = np.zeros(n)
    e = rng.standard_normal(n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def test_lag1_autocorrelation_of_ar1():
    rng = np.random.default_rng(0)
    for phi in (0.0, 0.5, 0.9):
        assert calibrate.lag1_autocorrelation(_ar1(20_000, phi, rng)) == pytest.approx(phi, abs=0.03)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 12), d=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_spectrum_matches_covariance_eigenvalues(m, d, seed):
    x = np.random.default_rng(seed).standard_normal((m, d))
    p = calibrate.spectrum(x)
    c = x - x.mean(0)
    ev = np.sort(np.clip(np.linalg.eigvalsh(c.T @ c), 0, None))[::-1]
    ref = ev / ev.sum()
    n = min(m, d)
    np.testing.assert_allclose(p[:n], ref[:n], atol=1e-9)
    assert p.sum() == pytest.approx(1.0)
    ent = -sum(v * np.log(v) for v in ref if v > 0)
    assert calibrate.entropy(p) == pytest.approx(ent, abs=1e-6)


def test_entropy_of_uniform_and_direction_measures():
    assert calibrate.entropy(np.full(8, 1 / 8)) == pytest.approx(np.log(8))
    rng = np.random.default_rng(1)
    base = rng.gamma(4.0, 1.0, 32)
    # Scaled copies of one direction: no direction spread; crops all equal: no deviation.
    same = [np.outer(rng.uniform(1, 2, 5), base) * s for s in (1.0, 3.0)]
    assert calibrate.direction_spread(same) == pytest.approx(0.0, abs=1e-12)
    assert calibrate.direction_spread(same[:1]) is None
    crops = np.repeat(same[0][:, None, :], 3, axis=1)
    dev = calibrate.crop_deviation([crops])
    assert dev["relative_rms"] == pytest.approx(0.0, abs=1e-12) and dev["norm_cv"] == pytest.approx(0.0, abs=1e-12)
    assert calibrate.crop_deviation([crops[:, :1]]) is None
    # Gamma shape of per-dimension means (method of moments).
    mu = rng.gamma(3.0, 1.0, 4000)
    assert calibrate.dimension_mean_shape([mu[None, :]]) == pytest.approx(3.0, rel=0.1)


def test_direction_shift_is_zero_without_a_shift_and_grows_with_one():
    rng = np.random.default_rng(2)
    f = 5.0 + rng.standard_normal((400, 16))
    lab = np.zeros(400, bool)
    lab[150:250] = True
    assert calibrate.direction_shift(f, lab) < 0.2
    g = f.copy()
    shift = np.zeros(16)
    shift[:8], shift[8:] = 1.0, -1.0  # orthogonal to the mean direction
    # The normal spread orthogonal to the mean direction is sqrt(15) (15 unit-variance dims).
    g[lab] += 2.0 * np.sqrt(15.0) * shift / np.linalg.norm(shift)
    assert calibrate.direction_shift(g, lab) == pytest.approx(2.0, rel=0.15)


def test_command_writes_table_and_json(tmp_path):
    out, md = tmp_path / "c.json", tmp_path / "c.md"
    assert calibrate.main(["--no-c3d", "--synthetic-preset", "tiny", "--out", str(out), "--markdown", str(md)]) == 0
    data = json.loads(out.read_text())
    (res,) = data["sets"]
    assert res["name"] == "synthetic tiny" and res["videos"] == 290
    table = md.read_text()
    assert table.count("\n") == len(table.splitlines()) and "| non-positive values |" in table
    assert 0.0 <= res["nonpositive_fraction"] < 0.01
    assert 0.5 < res["norm_rise"]["auc_min_median_max"][1] <= 1.0


def test_missing_folder_is_one_line_error(tmp_path, capsys):
    assert calibrate.main(["--no-c3d", "--cctv", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


#: Ranges of the real I3D sets in the calibration table (CCTV and Ped2, centre
#: crop and 10 crops; README "The embedded synthetic dataset"), widened by a
#: margin: the default preset is fitted to these, so it must stay inside.
REAL_RANGES = {
    "nonpositive_fraction": (0.0, 0.006),
    "norm_mean": (8.0, 10.5),
    "norm_cv_window": (0.03, 0.065),
    "lag1_features": (0.13, 0.28),
    "top1_share": (0.37, 0.47),
    "h8": (1.45, 1.70),
    "h16": (1.95, 2.25),
    "norm_auc_median": (0.68, 0.86),
    "norm_ratio_median": (0.025, 0.07),
    "direction_spread": (0.25, 0.40),
}


def test_synthetic_default_inside_the_real_ranges():
    r = calibrate.measure(calibrate.synthetic_set("default"))
    got = {
        "nonpositive_fraction": r["nonpositive_fraction"],
        "norm_mean": r["norms"]["mean"],
        "norm_cv_window": r["norms"]["within_video_cv"],
        "lag1_features": r["lag1_autocorrelation_features"],
        "top1_share": r["spectrum_top1_share"],
        "h8": r["entropy_by_length"]["8"]["median"],
        "h16": r["entropy_by_length"]["16"]["median"],
        "norm_auc_median": r["norm_rise"]["auc_min_median_max"][1],
        "norm_ratio_median": r["norm_rise"]["ratio_median"],
        "direction_spread": r["direction_spread_across_videos"],
    }
    outside = {k: v for k, v in got.items() if not REAL_RANGES[k][0] <= v <= REAL_RANGES[k][1]}
    assert not outside, f"synthetic default outside the real ranges: {outside}"
