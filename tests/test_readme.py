"""The README's two set-up commands and CI stay in agreement."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _marked_command(marker: str) -> str:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(f"<!-- {marker} -->")
    for line in lines[start + 1 :]:
        if line.strip() and not line.startswith("```"):
            return line
    raise AssertionError(f"no command after the {marker} marker")


def test_ci_runs_the_readme_test_command_verbatim():
    readme_cmd = _marked_command("test-command")
    # Ask the CI script's own extraction what it would run.
    script = (ROOT / ".ci" / "run").read_text()
    extract = next(l for l in script.splitlines() if l.startswith("cmd=$(awk"))
    out = subprocess.run(
        ["bash", "-c", f"{extract}; printf '%s' \"$cmd\""],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    assert out == readme_cmd
    # CI installs the bench extra: the PyTorch peer of experiments.bench is tested there.
    assert 'pip install -e ".[test,flower,bench]"' in readme_cmd and "pytest" in readme_cmd


def test_readme_main_command_runs_the_event_13_job():
    cmd = _marked_command("run-command")
    assert cmd.startswith("python -m pip install -e .")
    assert cmd.endswith("python -m experiments.run --split=event --participants=13")
