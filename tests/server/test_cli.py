"""`python -m phpo.server create-token` (what `phpo server create-token` runs)."""

from __future__ import annotations

import re
import subprocess
import sys


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "phpo.server", *args], capture_output=True, text=True, timeout=60, check=False
    )


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


def test_migrate_brings_a_fresh_database_to_the_newest_revision_and_exits(db_url):
    from phpo.server.db.engine import Database, current_revisions, head_revision

    p = _run("migrate", "--database-url", db_url)
    assert p.returncode == 0, p.stderr
    assert f"at revision {head_revision()}" in p.stdout
    db = Database(db_url)
    try:
        assert current_revisions(db.engine) == [head_revision()]
    finally:
        db.dispose()
    assert _run("migrate", "--database-url", db_url).returncode == 0  # again: nothing to do


def test_create_token_registers_the_token_of_a_file_once(tmp_path, db_url):
    """What the Helm chart's migration Job does with the agents' generated Secret."""

    f = tmp_path / "token"
    f.write_text("phpo_" + "k" * 43 + "\n")
    args = (
        "create-token",
        "--name",
        "agents",
        "--role",
        "agent",
        "--site",
        "k8s",
        "--token-file",
        str(f),
        "--database-url",
        db_url,
    )
    p = _run(*args)
    assert p.returncode == 0 and p.stdout == "", p.stderr
    again = _run(*args)  # every upgrade runs it again
    assert again.returncode == 0 and "registered already" in again.stderr
    listed = _run("list-tokens", "--database-url", db_url).stdout
    assert listed.count("agents") == 1 and "k8s" in listed
    assert _run("revoke-token", "agents", "--database-url", db_url).returncode == 0
    revoked = _run(*args)
    assert revoked.returncode == 1 and "was revoked" in revoked.stderr
    f.write_text("short")
    bad = _run(*args)
    assert bad.returncode == 2 and "at least 32 characters" in bad.stderr
    assert _run("list-tokens", "--database-url", db_url).stdout.count("agents") == 1
