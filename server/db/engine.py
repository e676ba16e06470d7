"""Engine, sessions and migrations for SQLite and PostgreSQL (same code for both).

SQLite runs in WAL mode so readers never wait for the writer. Writers are serialized: every
writing transaction goes through :meth:`Database.write`, which holds a process lock and opens
the transaction with ``BEGIN IMMEDIATE`` (so a second process, e.g. ``create-token``, waits on
the busy timeout instead of failing half-way). PostgreSQL uses ordinary transactions; the job
broker adds row locks (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every datetime we store is UTC."""
    if dt is None:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` for PostgreSQL: we use the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 60},
            pool_size=20,
            max_overflow=40,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _rec):
            # take transaction control away from pysqlite so BEGIN IMMEDIATE is ours to emit
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            immediate = conn.get_execution_options().get("phpo_immediate", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_size=20, max_overflow=40, pool_pre_ping=True)


class Database:
    """Sessions for reading and for writing; see the module docstring for why they differ."""

    def __init__(self, url: str):
        self.url = normalize_url(url)
        self.engine = make_engine(self.url)
        self.backend = self.engine.dialect.name  # "sqlite" | "postgresql"
        self.is_sqlite = self.backend == "sqlite"
        self._write_engine = (
            self.engine.execution_options(phpo_immediate=True) if self.is_sqlite else self.engine
        )
        self._write_lock = threading.Lock()

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """One writing transaction: committed when the block ends, rolled back on an exception."""
        if self.is_sqlite:
            with self._write_lock, Session(self._write_engine, expire_on_commit=False) as s, s.begin():
                yield s
        else:
            with Session(self.engine, expire_on_commit=False) as s, s.begin():
                yield s

    def migrate(self) -> None:
        migrate(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def lock_conflict(exc: BaseException) -> bool:
    """A PostgreSQL deadlock or serialization failure (SQLSTATE 40P01 / 40001): the database
    aborted this transaction, nothing of it was written, and the same work may simply be asked
    again."""
    state = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return state in ("40P01", "40001")


def _alembic_config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


_REV = re.compile(r"^revision(?:\s*:[^=]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN = re.compile(r"^down_revision(?:\s*:[^=]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)


def head_revision() -> str | None:
    """The newest revision read from the version files' text (no Alembic import); None when
    that is not clear-cut, and then Alembic decides."""
    revs, downs = set(), set()
    for f in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = f.read_text()
        if m := _REV.search(text):
            revs.add(m.group(1))
        if d := _DOWN.search(text):
            downs.add(d.group(1))
    heads = revs - downs
    return next(iter(heads)) if len(heads) == 1 else None


def current_revisions(engine: Engine) -> list[str] | None:
    try:
        with engine.connect() as conn:
            return list(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())
    except Exception:  # noqa: BLE001 - no table yet (a fresh database)
        return None


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe to call from several processes at once.
    An up-to-date database is recognized without importing Alembic (``create-token`` and
    server start stay fast)."""
    head = head_revision()
    if head is not None and current_revisions(engine) == [head]:
        return
    from alembic import command

    cfg = _alembic_config()
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(7263541)"))
            conn.commit()
            try:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(7263541)"))
                conn.commit()
        return
    db = engine.url.database
    lock_file = None
    if db and db != ":memory:":
        import fcntl

        lock_file = open(Path(db).expanduser().with_suffix(".migrate.lock"), "w")  # noqa: SIM115
        fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
    finally:
        if lock_file is not None:
            lock_file.close()
