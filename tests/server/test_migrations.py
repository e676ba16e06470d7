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
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
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
