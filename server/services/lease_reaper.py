"""The lease reaper: a background thread that takes back expired leases every
``--reaper-interval`` seconds. It finds the jobs whose lease expired and hands each to the
broker (:meth:`JobBroker.lose_job`), which releases the job's points the way every other end
of a job does."""

from __future__ import annotations

import logging
from typing import Protocol

from sqlalchemy.orm import Session

from ..db.engine import Database, utcnow
from ..db.tables import JobRow
from ..repositories.jobs import expired_jobs
from ..settings import Settings
from .background import BackgroundLoop

log = logging.getLogger(__name__)

BATCH = 200  # expired jobs taken back per transaction


class LeaseHolder(Protocol):
    """What the reaper needs from the job broker."""

    db: Database
    settings: Settings

    def lose_job(self, s: Session, job: JobRow, message: str) -> bool: ...

    def expire_gangs(self, s: Session) -> int: ...

    def changed(self) -> None: ...


class LeaseReaper(BackgroundLoop):
    THREAD_NAME = "phpo-lease-reaper"

    def __init__(self, broker: LeaseHolder, interval: float):
        super().__init__()
        self.broker = broker
        self.interval = interval

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reap()
            except Exception:
                log.exception("lease reaper pass failed; retrying in %s s", self.interval)

    def reap(self) -> int:
        """Expired leases: job -> lost, its leased points back to ready with one attempt spent
        (or failed, with their last error, when their attempts are used up)."""
        broker = self.broker
        now = utcnow()
        n = 0
        with broker.db.write() as s:
            for job in expired_jobs(s, now=now, limit=BATCH, skip_locked=not broker.db.is_sqlite):
                n += broker.lose_job(
                    s,
                    job,
                    f"lease lost: no heartbeat from agent {job.agent!r} at site "
                    f"{job.site!r} within {broker.settings.lease_seconds:g} s",
                )
            n += broker.expire_gangs(s)  # points of several agents whose gang did not form in time
        if n:
            log.info("reaper: %d expired lease(s) taken back", n)
            broker.changed()
        return n
