"""``WorkSignal``: wakes agents' long-polling ``acquire`` calls when jobs may have become ready.

Anything that may make a point or a steering job ready (the HPO manager storing points, a result
or a lost lease giving a point back, a task submitted or resumed, the MLflow bridge creating
runs) calls :meth:`notify`. A waiting ``acquire`` (an ``async`` route) sleeps on an asyncio
future, so a thousand idle agents cost no thread; ``notify`` may be called from any thread.
A notification only means "try again": the waiter re-runs the acquire, which decides.
"""

from __future__ import annotations

import asyncio
import threading


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class WorkSignal:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.generation = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    def notify(self, n: int | None = None) -> None:
        """Wake the ``n`` longest-waiting acquires (all when None): ``n`` new points wake ``n``
        agents, not every idle one into an acquire that finds nothing (a waiter that finds
        nothing after all waits again; at worst until its own ``wait_s`` runs out)."""
        with self._lock:
            self.generation += 1
            if n is None or n >= len(self._waiters):
                waiters, self._waiters = self._waiters, []
            else:
                waiters, self._waiters = self._waiters[:max(0, n)], self._waiters[max(0, n):]
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
