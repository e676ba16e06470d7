"""The Alembic migrations build exactly the schema of the table models, on both databases,
and are safe to apply twice."""

from __future__ import annotations

import importlib
import pkgutil

import phpo.server.db
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from phpo.server.db.engine import MIGRATIONS_DIR, Database
from phpo.server.db.tables import Base

# every table module registers its tables on Base (as migrations/env.py does)
for _m in pkgutil.iter_modules(phpo.server.db.__path__):
    if _m.name.endswith("tables"):
        importlib.import_module(f"phpo.server.db.{_m.name}")


def test_migrations_match_models(db_url):
    db = Database(db_url)
    try:
        db.migrate()
        db.migrate()  # idempotent
        with db.engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        assert diff == [], diff
    finally:
        db.dispose()


def test_migration_files_ship_as_package_data():
    # setuptools' find_packages only ships folders with an __init__.py; script.py.mako is package data
    assert (MIGRATIONS_DIR / "__init__.py").exists()
    assert (MIGRATIONS_DIR / "versions" / "__init__.py").exists()
    assert (MIGRATIONS_DIR / "script.py.mako").exists()


def test_fast_head_check_agrees_with_alembic():
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from phpo.server.db.engine import head_revision

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert head_revision() == ScriptDirectory.from_config(cfg).get_current_head()


def test_upgrade_keeps_tokens_made_before_site_scopes(db_url):
    """A database at 0004 with a token: after the upgrade the token still works, for any site."""
    import hashlib

    from alembic import command
    from phpo.server.db.engine import _alembic_config
    from phpo.server.repositories.tokens import create_token, lookup
    from sqlalchemy import text

    db = Database(db_url)
    try:
        cfg = _alembic_config()
        with db.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0004_mlflow_artifacts")
            conn.commit()
            conn.execute(
                text(
                    "INSERT INTO tokens (name, role, token_hash, created_at, revoked) VALUES "
                    "('old-agent', 'agent', :h, CURRENT_TIMESTAMP, false)"
                ),
                {"h": hashlib.sha256(b"phpo_old").hexdigest()},
            )
            conn.execute(
                text(
                    "INSERT INTO tasks (id, owner, state, spec, optimizer, n_segments, failed_iterations, "
                    "created_at, updated_at) VALUES (1, 'alice', 'running', '{}', 'random', 1, 0, "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
            for jid, holder, state in (
                (1, "old-agent", "running"),
                (2, "old-agent", "succeeded"),
                (3, "gone-agent", "running"),
            ):
                conn.execute(
                    text(
                        "INSERT INTO jobs (id, kind, task_id, holder, state, point_ids, results, "
                        "created_at) VALUES (:id, 'evaluation', 1, :h, :st, '[]', '{}', CURRENT_TIMESTAMP)"
                    ),
                    {"id": jid, "h": holder, "st": state},
                )
            conn.commit()
        db.migrate()
        with db.read() as s:
            old = lookup(s, "phpo_old")
            holders = dict(s.execute(text("SELECT id, holder FROM jobs ORDER BY id")).all())
        assert old is not None and old.name == "old-agent" and old.sites is None and old.site_ok("ANY")
        # the running job of a live token keeps its agent (holder NAME#ID); the rest is left alone
        assert (
            holders == {1: old.holder, 2: "old-agent", 3: "gone-agent"}
            and old.holder == f"old-agent#{old.token_id}"
        )
        with db.write() as s:
            token, _ = create_token(s, "new-agent", "agent", ["B", "A"])
        with db.read() as s:
            assert lookup(s, token).sites == frozenset({"A", "B"})
    finally:
        db.dispose()
