"""``WorkSignal``: wakes agents' long-polling ``acquire`` calls when jobs may have become ready.

Anything that may make a point or a steering job ready (the HPO manager storing points, a result
or a lost lease giving a point back, a task submitted or resumed, the MLflow bridge creating
runs) calls :meth:`notify`. A waiting ``acquire`` (an ``async`` route) sleeps on an asyncio
future, so a thousand idle agents cost no thread; ``notify`` may be called from any thread.
A notification only means "try again": the waiter re-runs the acquire, which decides.

With several replicas on one PostgreSQL, ``forward`` (given by the app:
:meth:`ReplicaSignal.publish_ready <phpo.server.services.replica_signal.ReplicaSignal.publish_ready>`)
passes each notification on to the other replicas, whose agents wait there; what arrives from
them is applied with ``local=True`` (not sent back).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class WorkSignal:
    def __init__(self, forward: Callable[[int | None], None] | None = None) -> None:
        self._lock = threading.Lock()
        self.generation = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self.forward = forward

    def notify(self, n: int | None = None, *, local: bool = False) -> None:
        """Wake the ``n`` longest-waiting acquires (all when None): ``n`` new points wake ``n``
        agents, not every idle one into an acquire that finds nothing (a waiter that finds
        nothing after all waits again; at worst until its own ``wait_s`` runs out). The other
        replicas are told too, unless ``local``."""
        if not local and self.forward is not None:
            self.forward(n)
        with self._lock:
            self.generation += 1
            if n is None or n >= len(self._waiters):
                waiters, self._waiters = self._waiters, []
            else:
                waiters, self._waiters = self._waiters[: max(0, n)], self._waiters[max(0, n) :]
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # that loop has closed (server shutting down)
                pass

    async def wait(self, generation: int, timeout: float) -> bool:
        """Wait until a notification newer than ``generation`` (at most ``timeout`` s); returns
        whether one came."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if self.generation != generation:
                return True
            self._waiters.append((loop, fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                try:
                    self._waiters.remove((loop, fut))
                except ValueError:
                    pass


class ReadyWork:
    """Waking waiting agents, for everything that makes work ready: :meth:`notify` at once, or
    :meth:`mark_ready` inside a transaction and :meth:`flush` after its commit (an agent woken
    before the commit would find nothing). Built once per server and given to the broker and the
    HPO manager."""

    def __init__(self, signal: WorkSignal | None = None) -> None:
        self.signal = signal or WorkSignal()
        self._tl = threading.local()  # .ready: points this thread's transaction made ready

    def notify(self, n: int | None = None) -> None:
        self.signal.notify(n)

    def mark_ready(self, n: int = 1) -> None:
        self._tl.ready = getattr(self._tl, "ready", 0) + n

    def flush(self) -> None:
        """After a commit: wake as many agents as the transaction made points ready."""
        n = getattr(self._tl, "ready", 0)
        if n:
            self._tl.ready = 0
            self.signal.notify(n)
