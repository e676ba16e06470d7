"""`python -m phpo.server create-token` (what `phpo server create-token` runs)."""

from __future__ import annotations

import re
import subprocess
import sys


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phpo.server", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_create_token_prints_only_the_token(tmp_path, db_url):
    p = _run("create-token", "--name", "alice", "--role", "agent", "--database-url", db_url)
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(r"phpo_[A-Za-z0-9_\-]{40,}\n", p.stdout), p.stdout
    # options before the subcommand count too
    p2 = _run("--data-dir", str(tmp_path / "d"), "create-token", "--name", "bob")
    assert p2.returncode == 0 and (tmp_path / "d" / "phpo.db").exists()
    assert p2.stdout.strip() != p.stdout.strip()


def test_create_token_refuses_unknown_role(tmp_path):
    p = _run("create-token", "--name", "x", "--role", "boss", "--data-dir", str(tmp_path))
    assert p.returncode == 2 and "boss" in p.stderr and p.stdout == ""
