"""Every code block of README.md and docs/*.md runs as pasted and shows a result.

How it works (new blocks are picked up automatically):

* Every fenced block of ``README.md`` and ``docs/**/*.md`` must name its
  language. ``python`` and ``bash`` blocks are code and are executed, one test
  per block; ``text``, ``toml``, ``json``, ``csv`` and ``yaml`` blocks are data
  or listings and are not.
* A code block that cannot run here says so in an HTML comment on a line
  directly above its fence (other marker comments, e.g. ``<!-- run-command -->``,
  may sit between): ``<!-- not-executed: <reason> -->``, with the reason
  stated (e.g. it needs a 64 GB download, or certificates and other machines).
  ``<!-- slow: <reason> -->`` executes the block only in the slow set
  (``python -m pytest -m slow``), for blocks that take minutes.
* Each block runs in a fresh directory that links every top-level entry of the
  repository (so paths relative to the repository root work; ``../shared``
  too, where it exists) and keeps what the block writes (``runs/``), with this
  checkout first on ``PYTHONPATH`` and this interpreter first on ``PATH``.
* The tiny preset replaces the default one, so that a block takes seconds:
  in Python, ``preset("default")`` becomes ``preset("tiny")``; in bash, the
  flags of ``QUICK_FLAGS`` are appended to every ``python -m experiments.<module>``
  command of the modules listed there (appended flags win over earlier ones),
  and ``pip install`` commands are skipped (the test command has installed the
  package and its extras already).
* The last statement of a Python block must print (a ``print(...)`` call, or a
  loop or ``if`` holding one), and every executed block must print something
  on stdout: a block ends with a visible result.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
CODE_LANGUAGES = ("python", "bash")
DATA_LANGUAGES = ("text", "toml", "json", "csv", "yaml")
#: Flags appended to ``python -m experiments.<module>`` commands in bash blocks.
QUICK_FLAGS = {
    "experiments.run": "--preset tiny --videos-per-participant 2 --rounds 2",
    "experiments.protocols": "--preset tiny --videos-per-participant 2 --rounds 2",
    "experiments.deploy": "--preset tiny --videos-per-participant 2 --rounds 2",
    # The full benchmark takes ~15 minutes; its tiny size with one group shows the same report.
    "experiments.bench": "--size tiny --groups training --backends vmap loop",
}
PYTHON_SUBSTITUTIONS = (('preset("default")', 'preset("tiny")'),)
TIMEOUT_S = 900

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[^`\s]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<body>.*?)\s*-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    document: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    markers: tuple[str, ...]  # bodies of the HTML comments directly above the fence

    @property
    def id(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"

    def marker(self, name: str) -> str | None:
        """The text after ``name:`` of a marker comment, "" for a bare marker, None if absent."""
        for body in self.markers:
            if body == name:
                return ""
            if body.startswith(name + ":"):
                return body[len(name) + 1 :].strip()
        return None


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, with their marker comments."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, indent = i, len(m["indent"])
        j = start - 1
        markers = []
        while j >= 0 and (mm := _MARKER.match(lines[j])):
            markers.insert(0, mm["body"])
            j -= 1
        body = []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            line = lines[i]
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path.relative_to(ROOT)}:{start + 1}: code fence never closed")
        out.append(Block(path, start + 1, m["lang"], "\n".join(body) + "\n", tuple(markers)))
        i += 1
    return out


ALL_BLOCKS = [b for doc in DOCUMENTS for b in blocks(doc)]
CODE_BLOCKS = [b for b in ALL_BLOCKS if b.language in CODE_LANGUAGES]


def quick_bash(code: str) -> str:
    """The bash block with the tiny preset substituted (see the module docstring)."""
    code = re.sub(r"\s*\\\n\s*", " ", code)  # join continuation lines
    code = re.sub(r"(?:python -m )?pip install[^&|;#\n]*?(?=\s*(?:&&|\||;|#|$))", "true", code, flags=re.M)
    for module, flags in QUICK_FLAGS.items():
        code = re.sub(rf"(python -m {re.escape(module)}(?![\w.])[^&|;#\n]*?)(\s*(?:#.*)?$|\s*(?=&&|\||;))",
                      lambda m: f"{m[1]} {flags}{m[2]}", code, flags=re.M)
    return code


def quick_python(code: str) -> str:
    for old, new in PYTHON_SUBSTITUTIONS:
        code = code.replace(old, new)
    return code


def sandbox(tmp_path: Path) -> Path:
    """A directory that looks like the repository root (links) and keeps the block's outputs."""
    work = tmp_path / "repo"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".git", "runs"):
            (work / entry.name).symlink_to(entry)
    if (ROOT.parent / "shared").exists():
        (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    return work


def environment() -> dict[str, str]:
    """This process's environment without what conftest.py adds for the tests (8 host
    devices), with this checkout importable and this interpreter's scripts first."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
    if flags:
        env["XLA_FLAGS"] = flags
    else:
        env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def _param(block: Block):
    marks = []
    if block.marker("not-executed") is not None:
        marks.append(pytest.mark.skip(reason=f"not executed: {block.marker('not-executed')}"))
    if block.marker("slow") is not None:
        marks.append(pytest.mark.slow)
    return pytest.param(block, id=block.id, marks=marks)


def test_every_block_names_its_language_and_opt_outs_give_a_reason():
    assert CODE_BLOCKS, "no code blocks found"
    for b in ALL_BLOCKS:
        assert b.language in CODE_LANGUAGES + DATA_LANGUAGES, (
            f"{b.id}: fence language {b.language!r}; use python/bash (executed) or one of "
            f"{', '.join(DATA_LANGUAGES)} (not code)")
        for name in ("not-executed", "slow"):
            reason = b.marker(name)
            assert reason is None or reason, f"{b.id}: <!-- {name}: ... --> must state a reason"
        if b.language in DATA_LANGUAGES:
            assert b.marker("not-executed") is None, f"{b.id}: a {b.language} block is never executed"


def test_the_extraction_finds_the_known_blocks():
    ids = {b.id.split(":")[0] for b in CODE_BLOCKS}
    assert {"README.md", "docs/flower.md"} <= ids
    first = next(b for b in CODE_BLOCKS if b.marker("run-command") is not None)
    assert "experiments.run --split=event --participants=13" in first.code
    assert quick_bash(first.code).strip() == (
        "true && python -m experiments.run --split=event --participants=13 "
        "--preset tiny --videos-per-participant 2 --rounds 2")
    assert quick_bash("python -m experiments.run --help   # all\npython -m experiments.protocols a \\\n  --x 1\n") == (
        "python -m experiments.run --help --preset tiny --videos-per-participant 2 --rounds 2   # all\n"
        "python -m experiments.protocols a --x 1 --preset tiny --videos-per-participant 2 --rounds 2\n")


@pytest.mark.parametrize("block", [_param(b) for b in CODE_BLOCKS])
def test_block_runs_and_shows_a_result(block: Block, tmp_path):
    work = sandbox(tmp_path)
    if block.language == "python":
        last = ast.parse(block.code).body[-1]
        assert any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print" for n in ast.walk(last)), (
            f"{block.id}: the block's last statement must print its result")
        script = work / "block.py"
        script.write_text(quick_python(block.code))
        argv = [sys.executable, str(script)]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", quick_bash(block.code)]
    proc = subprocess.run(argv, cwd=work, env=environment(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (
        f"{block.id} failed (exit {proc.returncode})\n--- code ---\n{argv[-1] if block.language == 'bash' else script.read_text()}"
        f"\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")
    assert proc.stdout.strip(), f"{block.id} printed nothing on stdout"
