"""The lease reaper: a background thread that takes back expired leases every
``--reaper-interval`` seconds (see :meth:`JobBroker.reap`)."""

from __future__ import annotations

import logging
import threading

from .job_broker import JobBroker

log = logging.getLogger(__name__)


class LeaseReaper:
    def __init__(self, broker: JobBroker, interval: float):
        self.broker = broker
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="phpo-lease-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.broker.reap()
            except Exception:
                log.exception("lease reaper pass failed; retrying in %s s", self.interval)
