"""Iterations of the built-in optimizers: ask and tell, in a thread pool.

Built-in optimizers run in a pool of ``steering_workers`` threads, one iteration per segment at
a time, so a slow optimizer never blocks the API or other tasks. One optimizer instance per
(task, segment) lives in memory; it is told each finished point once, and after a restart it is
rebuilt from the database with :meth:`Optimizer.restore` - nothing lives only in memory."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from phpo.schemas.states import PointState
from phpo.schemas.tasks import TaskSpec
from phpo.steering.base import FAILED, HistoryItem, Optimizer, Pruned

from ...db.engine import Database, utcnow
from ...db.tables import PointRow
from ...repositories import points as point_repo
from ..pruning import steps_of
from .planning import SegmentPlan
from .records import IterationRecords
from .specs import TaskSpecs, optimizer_config

log = logging.getLogger(__name__)

Key = tuple[int, int]  # (task id, segment index)


class AgentNotifier(Protocol):
    """Wakes ``n`` agents waiting in acquire (all when None): new points are ready."""

    def notify(self, n: int | None = None) -> None: ...


@dataclass
class OptState:
    """One optimizer of one (task, segment) and what it has been told."""

    opt: Optimizer
    told: set[int] = field(default_factory=set)
    own: set[int] = field(default_factory=set)  # points this instance handed out
    # points not yet told that may end (ready/leased when last seen): only these are looked at
    # for new results, so an iteration costs O(points in flight), not O(points of the segment)
    open: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def result_of(r: PointRow, spec: TaskSpec) -> Any:
    """What the optimizer is told of an ended point."""
    if r.state == PointState.evaluated:
        return r.loss
    if r.state == PointState.pruned:  # told as Optuna's PRUNED, with its last intermediate value
        inter = steps_of(r.intermediate)
        return Pruned(inter[max(inter)], max(inter)) if inter else Pruned(None)
    if spec.penaltyLoss is not None:
        return [spec.penaltyLoss] * spec.n_objectives if spec.n_objectives > 1 else spec.penaltyLoss
    return FAILED


class BuiltinSteering:
    """The optimizer instances, the pool their iterations run in, and which iterations are in
    flight. ``on_done([key])`` is called once an iteration of ``key`` ended (the manager's wake)."""

    def __init__(
        self,
        db: Database,
        workers: int,
        specs: TaskSpecs,
        records: IterationRecords,
        waker: AgentNotifier | None,
        on_done: Callable[[list[Key]], None],
    ):
        self.db = db
        self.specs = specs
        self.records = records
        self.waker = waker
        self.on_done = on_done
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="phpo-steering")
        self._lock = threading.Lock()
        self._inflight: dict[Key, Future] = {}
        self._generation: dict[Key, int] = {}  # iterations ended per (task, segment)
        self._opts: dict[Key, OptState] = {}

    def in_flight(self) -> set[Key]:
        """The segments with an iteration submitted and not ended."""
        with self._lock:
            return set(self._inflight)

    def snapshot(self) -> tuple[set[Key], dict[Key, int]]:
        """The segments in flight and how many iterations each segment has ended. A pass takes
        it before reading the database: an iteration that ends after this may have stored points
        that read does not see, so :meth:`submit` skips its segment until the next pass."""
        with self._lock:
            return set(self._inflight), dict(self._generation)

    def submit(self, plan: SegmentPlan, generation: dict[Key, int]) -> None:
        """Start an iteration of ``plan``'s segment unless one is in flight or one ended since
        ``generation`` (:meth:`snapshot`) was taken."""
        key = (plan.task_id, plan.seg_idx)
        with self._lock:
            if key in self._inflight or self._generation.get(key, 0) != generation.get(key, 0):
                return
            self._inflight[key] = self._pool.submit(self._iterate, plan.task_id, plan.seg_idx, plan.n)

    def forget_except(self, running: set[int]) -> None:
        """Drop the optimizers of tasks no longer running."""
        with self._lock:
            for key in [k for k in self._opts if k[0] not in running]:
                del self._opts[key]
            for key in [k for k in self._generation if k[0] not in running and k not in self._inflight]:
                del self._generation[key]

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ one iteration

    def _opt_state(self, task_id: int, seg_idx: int) -> OptState:
        key = (task_id, seg_idx)
        with self._lock:
            st = self._opts.get(key)
        if st is not None:
            return st
        from phpo.steering.registry import create_optimizer

        with self.db.read() as s:
            spec = self.specs.get(s, task_id)
            rows = point_repo.segment_points(s, task_id=task_id, segment_idx=seg_idx)
        opt = create_optimizer(spec.optimizer_name, optimizer_config(spec, seg_idx))
        history, told, open_ = [], set(), set()
        for r in rows:
            if r.state in (PointState.evaluated, PointState.failed, PointState.pruned):
                history.append(HistoryItem(params=r.params, result=result_of(r, spec)))
                told.add(r.id)
            elif r.state in (PointState.ready, PointState.leased):
                history.append(HistoryItem(params=r.params, result=None))
                open_.add(r.id)
        if history:
            opt.restore(history)
        st = OptState(opt=opt, told=told, open=open_)
        with self._lock:
            self._opts[key] = st
        return st

    def _iterate(self, task_id: int, seg_idx: int, n: int) -> None:
        started, t0 = utcnow(), time.monotonic()
        key = (task_id, seg_idx)
        try:
            st = self._opt_state(task_id, seg_idx)
            with st.lock:
                spec = self._tell_new(st, task_id)
                pending = self._pending(st, task_id, seg_idx)
                points = st.opt.ask(n, pending)
                space = st.opt.space
                for i, p in enumerate(points):
                    problems = space.problems(p) if space is not None else []
                    if problems:
                        raise ValueError(
                            f"point {i} from {spec.optimizer_name} does not fit the space: "
                            f"{'; '.join(problems)}"
                        )
                    json.dumps(p)
                ids = self.records.store_points(
                    task_id,
                    seg_idx,
                    points,
                    requested=n,
                    started=started,
                    duration=time.monotonic() - t0,
                    optimizer=spec.optimizer_name,
                    exhausted=not points,
                )
                st.own.update(ids)
                st.open.update(ids)
            if ids and self.waker is not None:
                self.waker.notify(len(ids))  # agents waiting in acquire: new points are ready
        except Exception as e:  # noqa: BLE001 - recorded as a failed iteration
            log.warning("steering iteration of task %d segment %d failed: %s", task_id, seg_idx, e)
            with self._lock:
                self._opts.pop(key, None)  # rebuilt from the database next time
            try:
                self.records.record_failure(
                    task_id, seg_idx, n, started, time.monotonic() - t0, f"{type(e).__name__}: {e}"
                )
            except Exception:
                log.exception("could not record the failed iteration")
        finally:
            with self._lock:
                self._inflight.pop(key, None)
                self._generation[key] = self._generation.get(key, 0) + 1
            self.on_done([key])

    def _tell_new(self, st: OptState, task_id: int) -> TaskSpec:
        """Tell the optimizer the points that ended since its last iteration. Only points it saw
        in flight can have ended (every point of a built-in optimizer's segment is stored by
        :meth:`IterationRecords.store_points`, and :meth:`_opt_state` starts from the database)."""
        with self.db.read() as s:
            spec = self.specs.get(s, task_id)
            rows = point_repo.ended_points(s, ids=sorted(st.open))
        for r in sorted(rows, key=lambda r: r.serial):
            st.open.discard(r.id)
            if r.state != PointState.cancelled and r.id not in st.told:
                st.opt.tell(r.params, result_of(r, spec))
                st.told.add(r.id)
        return spec

    def _pending(self, st: OptState, task_id: int, seg_idx: int) -> list[dict[str, Any]]:
        with self.db.read() as s:
            rows = point_repo.pending_points(s, task_id=task_id, segment_idx=seg_idx)
        return [params for pid, params in rows if pid not in st.own]
