"""Leader election among server replicas: one HPO manager steers at a time.

Several replicas may share one PostgreSQL: only the holder of a session-level advisory lock
(:data:`MANAGER_LOCK_KEY`) runs manager passes; the others take over when its connection ends.
SQLite has one server process by construction."""

from __future__ import annotations

import logging
from typing import Any

from ...db.engine import Database
from ...repositories.locks import holds_advisory_lock, try_advisory_lock

log = logging.getLogger(__name__)

MANAGER_LOCK_KEY = 7263542  # PostgreSQL advisory lock: one manager among server replicas


class LeaderLock:
    """The manager's advisory lock, held on a connection of its own."""

    def __init__(self, db: Database, key: int = MANAGER_LOCK_KEY):
        self.db = db
        self.key = key
        self._conn: Any = None

    @property
    def held(self) -> bool:
        """Whether this server runs the manager now (always with SQLite: one server process)."""
        return self.db.is_sqlite or self._conn is not None

    def acquire(self) -> bool:
        """Whether this server may run a pass now, taking the lock when no one holds it.

        The lock lives as long as its connection: before each pass the leader asks, on that
        connection, whether it still holds it. A connection that was terminated (an operator's
        ``pg_terminate_backend``, a restarted PostgreSQL, a network cut) has released the lock and
        another replica may already steer, so this one steps down at once and tries to acquire
        the lock again like any other replica (two managers steering one task would hand out
        points beyond its parallelism)."""
        if self.db.is_sqlite:
            return True
        if self._conn is not None:
            if self._still_holds():
                return True
            log.warning(
                "this server lost the HPO manager's advisory lock %d (its database connection "
                "ended); it stops steering until it holds the lock again",
                self.key,
            )
            self.release()
        conn = self.db.engine.connect()
        try:
            got = try_advisory_lock(conn, key=self.key)
            conn.commit()
        except Exception:
            conn.invalidate()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        log.info("this server runs the HPO manager (advisory lock %d held)", self.key)
        return True

    def _still_holds(self) -> bool:
        """Whether the lock connection is alive and its session holds the manager's lock."""
        try:
            held = holds_advisory_lock(self._conn, key=self.key)
            self._conn.commit()
        except Exception as e:  # noqa: BLE001 - a dead connection raises anything the driver has
            log.debug("the manager's lock connection failed its check: %s", e)
            return False
        return held

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()  # closing the session releases the advisory lock
            except Exception:  # the connection may be gone already
                log.debug("dropping the manager's lock connection failed", exc_info=True)
            self._conn = None
