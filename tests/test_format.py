"""The code stays as ``ruff format`` writes it (with the settings of pyproject.toml): a change
that is not formatted fails here, so ``make test`` (and CI) checks it. ``ruff format`` fixes it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> str:
    exe = Path(sys.executable).with_name("ruff")
    if exe.exists():
        return str(exe)
    found = shutil.which("ruff")
    if not found:
        pytest.skip("ruff is not installed (it comes with the test extra: pip install -e '.[test]')")
    return found


def test_code_is_formatted():
    r = subprocess.run(
        [_ruff(), "format", "--check", "--diff", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, "run `ruff format` on these:\n" + (r.stdout + r.stderr)[-6000:]
