"""CLAP through the method interface computes bit for bit what the engine
computed before methods were pluggable (golden values of commit d274329)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))
import clap_golden  # noqa: E402

GOLDEN = json.loads(clap_golden.GOLDEN.read_text())
SAME_MACHINE = GOLDEN["machine"] == clap_golden.machine()
FAST = ("tiny_fedavg_vmap", "tiny_fedavg_loop", "tiny_scaffold", "tiny_local", "wide_fedavg_vmap")


def _check(name):
    case = next(c for c in clap_golden.CASES if c.name == name)
    got, want = clap_golden.compute(case), GOLDEN["cases"][name]
    if not SAME_MACHINE:
        # XLA's CPU code depends on the CPU: only the discrete outcomes must agree exactly.
        for g, w in zip(got["rounds"], want["rounds"]):
            assert g["steps"] == w["steps"]
            for a, b in zip(g["loss"], w["loss"]):
                assert float.fromhex(a) == pytest.approx(float.fromhex(b), rel=1e-4)
        return
    assert got == want


@pytest.mark.parametrize("name", FAST)
def test_clap_is_bit_identical_to_the_engine_before_methods(name):
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in clap_golden.CASES if c.name not in FAST])
def test_clap_is_bit_identical_to_the_engine_before_methods_all_cases(name):
    _check(name)
