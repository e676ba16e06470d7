"""``ReplicaSignal``: carries wake-ups between server replicas on one PostgreSQL (LISTEN/NOTIFY).

Several ``phpo server`` processes may share one PostgreSQL behind a load balancer. Only one of
them runs the HPO manager (the holder of its advisory lock), yet an agent long-polls ``acquire``
on whichever replica the balancer picked. Without this, an agent waiting on a replica that is not
the manager was never woken for the manager's new points: it slept out its whole ``wait_s``
(20 s by default) after every iteration, and a result reported to such a replica woke no manager
until its next full pass.

Each replica keeps one extra connection that ``LISTEN``s on :data:`CHANNEL`; every local
:meth:`WorkSignal.notify` and every HPO manager wake on a replica that is not the manager are
published with ``pg_notify`` (from a background thread, coalesced, never in a request's path).
A replica ignores its own messages. Messages:

- ``<sender> ready <n>`` / ``<sender> ready *``: wake ``n`` (all) local acquires;
- ``<sender> steer *`` / ``<sender> steer t:s,t:s``: wake the local HPO manager (a full pass,
  or those (task, segment) pairs); a replica that is not the manager does nothing with it.

Notifications are hints ("try again"), never the truth: a lost one costs latency, not work, and
after a reconnect of the listening connection every local waiter and the manager are woken once,
since anything sent while it was away is lost.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

CHANNEL = "phpo_work"
MAX_PAIRS = 200  # a steer message names at most this many (task, segment) pairs, else asks for a full pass


def _psycopg_dsn(url: str) -> str:
    """The libpq connection string of a SQLAlchemy URL (``postgresql+psycopg://...``)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class ReplicaSignal:
    def __init__(
        self,
        database_url: str,
        *,
        on_ready: Callable[[int | None], None],
        on_steer: Callable[[list[tuple[int, int]] | None], None],
        reconnect_s: float = 1.0,
    ):
        self.dsn = _psycopg_dsn(database_url)
        self.sender = uuid.uuid4().hex[:12]
        self.on_ready, self.on_steer = on_ready, on_steer
        self.reconnect_s = reconnect_s
        self._stop = threading.Event()
        self._cv = threading.Condition()
        self._ready: int | None = 0  # coalesced: None = all
        self._steer: set[tuple[int, int]] | None = set()  # None = full pass
        self._steer_pending = False
        self._threads: list[threading.Thread] = []
        self.listening = threading.Event()  # set while the LISTEN connection is up

    # ------------------------------------------------------------ publishing (any thread)

    def publish_ready(self, n: int | None) -> None:
        with self._cv:
            if self._ready is not None:
                self._ready = None if n is None else self._ready + n
            self._cv.notify()

    def publish_steer(self, segments: Iterable[tuple[int, int]] | None) -> None:
        with self._cv:
            self._steer_pending = True
            if segments is None:
                self._steer = None
            elif self._steer is not None:
                self._steer.update(segments)
            self._cv.notify()

    def _take(self) -> list[str]:
        with self._cv:
            while not self._stop.is_set() and self._ready == 0 and not self._steer_pending:
                self._cv.wait(1.0)
            msgs = []
            if self._ready != 0:
                msgs.append(f"{self.sender} ready {'*' if self._ready is None else self._ready}")
            if self._steer_pending:
                pairs = self._steer
                if pairs is None or len(pairs) > MAX_PAIRS:
                    msgs.append(f"{self.sender} steer *")
                else:
                    msgs.append(f"{self.sender} steer " + ",".join(f"{t}:{s}" for t, s in sorted(pairs)))
            self._ready, self._steer, self._steer_pending = 0, set(), False
            return msgs

    def _publisher(self) -> None:
        import psycopg

        conn = None
        while not self._stop.is_set():
            msgs = self._take()
            if not msgs:
                continue
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                for m in msgs:
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, m))
                    log.debug("told the other replicas: %s", m)
            except Exception as e:  # noqa: BLE001 - the database may be away; the next message retries
                log.warning("could not publish a wake-up to the other replicas: %s", e)
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(self.reconnect_s)
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------ listening

    def handle(self, payload: str) -> None:
        """Act on one message (another replica's; our own are ignored)."""
        parts = payload.split(" ", 2)
        if len(parts) != 3 or parts[0] == self.sender:
            return
        log.debug("replica message: %s", payload)
        _sender, kind, arg = parts
        if kind == "ready":
            self.on_ready(None if arg == "*" else max(1, int(arg)))
        elif kind == "steer":
            if arg == "*":
                self.on_steer(None)
            else:
                pairs = []
                for item in arg.split(","):
                    t, _, s = item.partition(":")
                    pairs.append((int(t), int(s)))
                self.on_steer(pairs)

    def _listener(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    # anything published while this connection was away is lost: try everything once
                    self.on_ready(None)
                    self.on_steer(None)
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=1.0):
                            try:
                                self.handle(n.payload)
                            except Exception:  # noqa: BLE001 - a malformed message must not end the loop
                                log.warning(
                                    "ignored a malformed replica message %r", n.payload, exc_info=True
                                )
            except Exception as e:  # noqa: BLE001
                if self._stop.is_set():
                    break
                log.warning(
                    "the replica wake-up connection failed (%s); reconnecting in %.1f s", e, self.reconnect_s
                )
            finally:
                self.listening.clear()
            self._stop.wait(self.reconnect_s)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for target, name in (
            (self._listener, "phpo-replica-listen"),
            (self._publisher, "phpo-replica-notify"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
