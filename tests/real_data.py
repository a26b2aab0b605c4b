"""Where the shared real data (``../shared/real`` next to the repository) is.

Tests that read it skip when it is absent (e.g. a fresh clone on its own).
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def real_dir() -> Path | None:
    """``shared/real`` beside the checkout (or above a worktree folder), or ``$CLAPJAX_REAL_DATA``."""
    env = os.environ.get("CLAPJAX_REAL_DATA")
    candidates = ([Path(env)] if env else []) + [
        ROOT.parent / "shared" / "real", ROOT.parent.parent / "shared" / "real"]
    for c in candidates:
        if (c / "README.md").is_file():
            return c
    return None


REAL = real_dir()
needs_real = pytest.mark.skipif(REAL is None, reason="../shared/real is not available")
