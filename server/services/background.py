"""One base for the server's background loops (HPO manager, workflow engine, lease reaper, MLflow
bridge): a daemon thread with a stop and a wake event. Each loop keeps its own ``_run`` (its own
timing: a fixed interval, a wait cut short by :meth:`wake`, a back-off); the base only starts
the thread, wakes it and stops it."""

from __future__ import annotations

import threading


class BackgroundLoop:
    """Subclasses set ``THREAD_NAME`` and write ``_run`` (returning once ``self._stop`` is set)."""

    THREAD_NAME = "phpo-background"
    JOIN_TIMEOUT = 10.0  # seconds stop() waits for the pass in progress

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.THREAD_NAME, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Ask for a pass now (a loop that waits on ``self._wake`` returns from its wait)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.JOIN_TIMEOUT)

    def _run(self) -> None:
        raise NotImplementedError
