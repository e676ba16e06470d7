"""PostgreSQL session-level advisory locks, on a connection of their own (the lock lives as
long as that connection's session): the HPO manager's leader election."""

from __future__ import annotations

from sqlalchemy.engine import Connection


def try_advisory_lock(conn: Connection, *, key: int) -> bool:
    """Take the lock ``key`` for ``conn``'s session if no other session holds it."""
    return bool(conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({int(key)})").scalar())


def holds_advisory_lock(conn: Connection, *, key: int) -> bool:
    """Whether ``conn``'s session holds the lock ``key`` (from ``pg_locks``)."""
    held = conn.exec_driver_sql(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        f" AND pid = pg_backend_pid() AND classid = 0 AND objid = {int(key)} AND objsubid = 1"
    ).scalar()
    return bool(held)
