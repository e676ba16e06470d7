"""Fixtures of the compatibility suite: real upstream tools from PyPI.

- ``panda_client``: panda-client 2.2.0, installed with pip into a directory of its own (once per
  environment, under the venv): panda-client installs a console script named ``phpo``, which
  must not replace phpo's own in the test environment's ``bin``.
- ``hpogrid``: the ``hpogrid`` steering tool (with nevergrad), from the ``test`` extra.

Where a tool cannot be installed the tests that need it skip, naming the reason.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.conftest import podman_service, start_agent  # noqa: F401 - fixtures shared with tests/agent

PANDA_CLIENT = "panda-client==2.2.0"


def _skip(msg: str) -> None:
    print(f"\nSKIPPING: {msg}", file=sys.stderr)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def panda_client() -> Path:
    """A directory holding panda-client's packages (for ``PYTHONPATH``)."""
    target = Path(sys.prefix) / "compat-tools" / PANDA_CLIENT.replace("==", "-")
    if not (target / "pandaclient" / "PhpoScript.py").exists():
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        p = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp), PANDA_CLIENT],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if p.returncode != 0:
            _skip(f"{PANDA_CLIENT} cannot be installed here: {p.stderr[-500:]}")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


@pytest.fixture(scope="session")
def hpogrid() -> str:
    """The ``hpogrid`` command of this environment (``pip install '.[test]'`` brings it)."""
    exe = Path(sys.executable).parent / "hpogrid"
    try:
        import nevergrad  # noqa: F401
    except ImportError as e:
        _skip(f"nevergrad is not installed ({e}); pip install '.[test]'")
    if not exe.exists():
        _skip(f"hpogrid is not installed in {exe.parent}; pip install '.[test]'")
    return str(exe)
