"""The HPO manager's loop: one background thread makes a *pass* every ``manager_interval``
seconds over every running task, and in between a *partial pass* at once when woken (a result
names its (task, segment): only the segments named since the last pass are read). It composes
the parts of this package:

- :class:`~.leader.LeaderLock`: only one replica on a PostgreSQL runs passes;
- :class:`~.planning.PassPlanner`: reads the segments and plans each one;
- :class:`~.finishing.SegmentFinisher`: ends finished segments and tasks;
- :class:`~.iterations.BuiltinSteering`: ask/tell of the built-in optimizers, in a pool;
- :class:`~.external.ExternalSteering`: steering jobs for a steering command.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from ...db.engine import Database
from ...settings import Settings
from ..background import BackgroundLoop
from .external import ExternalSteering, ReadyMarker
from .finishing import SegmentFinisher
from .iterations import AgentNotifier, BuiltinSteering
from .leader import LeaderLock
from .planning import PassPlanner
from .records import IterationRecords
from .specs import TaskSpecs

log = logging.getLogger(__name__)

SteerForward = Callable[[list[tuple[int, int]] | None], None]


class AgentWaker(AgentNotifier, ReadyMarker, Protocol):
    """What the manager needs to wake agents waiting for work: at once (:meth:`notify`), or after
    the caller's commit (:meth:`mark_ready`, inside the broker's transaction of a steering job)."""


class HpoManager(BackgroundLoop):
    """``waker`` wakes agents waiting in acquire (the server's ``ReadyWork``); ``forward``, with
    several replicas, passes a wake on to the replica that runs the manager
    (``ReplicaSignal.publish_steer``)."""

    THREAD_NAME = "phpo-hpo-manager"

    def __init__(
        self,
        db: Database,
        settings: Settings,
        waker: AgentWaker | None = None,
        *,
        forward: SteerForward | None = None,
    ):
        super().__init__()
        self.db = db
        self.settings = settings
        self.waker = waker
        self.forward = forward
        self.leader = LeaderLock(db)
        self.specs = TaskSpecs()
        records = IterationRecords(db, settings, self.specs)
        self.planner = PassPlanner(db, self.specs)
        self.finisher = SegmentFinisher(db, self.specs)
        self.iterations = BuiltinSteering(
            db, settings.steering_workers, self.specs, records, waker, on_done=self.wake
        )
        self.external = ExternalSteering(db, self.specs, records, waker)
        self._lock = threading.Lock()
        self._pass_lock = threading.Lock()
        self._dirty: set[tuple[int, int]] = set()  # segments named by wakes since the last pass
        self._full = True  # a wake without segments asks for a full pass

    @property
    def is_leader(self) -> bool:
        """Whether this server runs the manager now (always with SQLite: one server process)."""
        return self.leader.held

    def wake(self, segments: Iterable[tuple[int, int]] | None = None, *, local: bool = False) -> None:
        """Ask for a pass now: over the (task_id, segment_idx) pairs given, or a full one. On a
        replica that does not run the manager the wake goes to the one that does (unless
        ``local``: it came from another replica)."""
        if not local and self.forward is not None and not self.is_leader:
            segments = None if segments is None else list(segments)
            self.forward(segments)
        with self._lock:
            if segments is None:
                self._full = True
            else:
                self._dirty.update(segments)
        self._wake.set()

    def stop(self) -> None:
        super().stop()
        self.iterations.shutdown()

    def _run(self) -> None:
        interval = self.settings.manager_interval
        last_full = -interval
        while not self._stop.is_set():
            self._wake.clear()  # before the snapshot: a wake from now on makes the wait return at once
            with self._lock:
                full = self._full or time.monotonic() - last_full >= interval
                dirty, self._dirty = self._dirty, set()
                if full:
                    self._full = False
            if full:
                last_full = time.monotonic()
            try:
                if self.leader.acquire():
                    self.run_once(None if full else dirty)
            except Exception:
                log.exception("HPO manager pass failed")
                self.leader.release()
            self._wake.wait(max(0.0, interval - (time.monotonic() - last_full)))
        self.leader.release()

    def run_once(self, segments: set[tuple[int, int]] | None = None) -> None:
        """One pass: over every running task, or only over the (task_id, segment_idx) given."""
        if segments is not None and not segments:
            return
        with self._pass_lock:
            self._pass(segments)

    def _pass(self, only: set[tuple[int, int]] | None) -> None:
        # taken before reading the database (see BuiltinSteering.snapshot)
        busy, generation = self.iterations.snapshot()
        plan = self.planner.plan(only, busy)
        if only is None:  # tasks no longer running: their optimizers and specs are dropped
            running = set(plan.running)
            self.iterations.forget_except(running)
            self.specs.forget_except(running)
        if plan.finishes or plan.done_tasks:
            self.finisher.finish(plan.finishes, plan.done_tasks)
        for tid, n in plan.external_asks.items():
            self.external.queue_steering_job(tid, self.specs[tid], n)
        if plan.external_asks and self.waker is not None:
            self.waker.notify(len(plan.external_asks))  # steering jobs queued: waiting agents take them
        for ask in plan.asks:
            self.iterations.submit(ask, generation)
