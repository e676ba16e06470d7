"""The HPO manager: keeps every running task's pipeline full and ends tasks when their budget
is spent.

One background thread makes a *pass* every ``manager_interval`` seconds over every running task,
and in between a *partial pass* at once when woken: a result names its (task, segment), and only
the segments named since the last pass are read, so a result costs O(1) segments, not O(S) (with
300 segments a full pass per result made server CPU per evaluation grow with S); submit, resume
and the reaper ask for a full pass. A pass reads, for each segment it covers, how many points
are ready/leased/evaluated/failed, and:

- refills: for a built-in optimizer by default when ``ready + leased < nParallelEvaluation``
  (asking for the deficit, at most ``nPointsPerIteration``); with ``minUnevaluatedPoints`` m,
  upstream's meaning: a new iteration starts when ``ready + leased <= m``, asking
  ``nPointsPerIteration``. A steering command keeps upstream's default m = 0 (an iteration
  waits for the slowest point: tools that subtract the pending points need it). Never beyond
  ``maxPoints`` generated.
- finishes a segment when ``maxPoints`` points are evaluated or failed, when
  ``maxEvaluationJobs`` jobs were used (once its running jobs ended; its ready points are
  cancelled), or when the optimizer returned no points (search exhausted);
- finishes the task when all its segments have finished;
- fails the task after ``steering_retries`` (3) failed steering iterations in a row, keeping
  the last error in the task's message.

Built-in optimizers run in a thread pool (``steering_workers``), one iteration per segment at
a time, so a slow optimizer never blocks the API or other tasks. One optimizer instance per
(task, segment) lives in memory; it is told each finished point once, and after a restart it is
rebuilt from the database with :meth:`Optimizer.restore` - nothing lives only in memory.

External steering (``steeringExec``) never runs here: the manager queues a steering job whose
``%IN`` content it builds (:func:`phpo.steering.external.build_steering_input`); an agent runs
the command and hands back ``%OUT``, which :meth:`steering_succeeded` checks with
:func:`phpo.steering.external.parse_steering_output` before storing any point. A segmented task
has one steering job for all its segments (upstream's segmented ``%IN``/``%OUT``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from phpo.schemas.tasks import TaskSpec
from phpo.steering.base import FAILED, HistoryItem, Optimizer, OptimizerConfig
from sqlalchemy import and_, func, insert, or_, select
from sqlalchemy.orm import Session, defer

from ..db.engine import Database, aware, utcnow
from ..db.tables import JobRow, PointRow, SegmentRow, SteeringIterationRow, TaskRow
from ..orchestration.transitions import set_state
from ..settings import Settings
from .tasks import cancel_open_work

log = logging.getLogger(__name__)

MANAGER_LOCK_KEY = 7263542  # PostgreSQL advisory lock: one manager among server replicas
EXHAUSTED = "the optimizer has no more points (search space exhausted)"
STEERING_EMPTY = "the steering returned no points"


@dataclass
class _OptState:
    """One optimizer of one (task, segment) and what it has been told."""

    opt: Optimizer
    told: set[int] = field(default_factory=set)
    own: set[int] = field(default_factory=set)  # points this instance handed out
    # points not yet told that may end (ready/leased when last seen): only these are looked at
    # for new results, so an iteration costs O(points in flight), not O(points of the segment)
    open: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _SegPlan:
    task_id: int
    seg_idx: int
    n: int = 0  # points to ask for
    finish: str | None = None  # reason, when the segment is done


def _directions(spec: TaskSpec) -> list[str]:
    return list(spec.directions or ["minimize"])


def optimizer_config(spec: TaskSpec, seg_idx: int) -> OptimizerConfig:
    space = spec.segment_spaces()[seg_idx]
    options = dict(spec.optimizerOptions)
    seed = options.pop("seed", None)
    return OptimizerConfig(space=space, directions=_directions(spec), seed=seed, options=options)


def validate_optimizer(spec: TaskSpec) -> None:
    """Build (and drop) the optimizer of each segment: a bad name or option is refused at submit."""
    if spec.optimizer_name == "external":
        return
    from phpo.steering.registry import create_optimizer

    seen: set[int] = set()
    for i, space in enumerate(spec.segment_spaces()):
        if id(space) not in seen:  # one space cloned over the segments is checked once
            seen.add(id(space))
            create_optimizer(spec.optimizer_name, optimizer_config(spec, i))


class HpoManager:
    def __init__(self, db: Database, settings: Settings, broker: Any = None):
        self.db = db
        self.settings = settings
        self.broker = broker
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(settings.steering_workers, thread_name_prefix="phpo-steering")
        self._inflight: dict[tuple[int, int], Future] = {}
        self._generation: dict[tuple[int, int], int] = {}  # iterations ended per (task, segment)
        self._specs: dict[int, TaskSpec] = {}
        self._leader_conn: Any = None
        self._opts: dict[tuple[int, int], _OptState] = {}
        self._lock = threading.Lock()
        self._pass_lock = threading.Lock()
        self._dirty: set[tuple[int, int]] = set()  # segments named by wakes since the last pass
        self._full = True  # a wake without segments asks for a full pass

    # ------------------------------------------------------------ lifecycle

    def wake(self, segments: Iterable[tuple[int, int]] | None = None) -> None:
        """Ask for a pass now: over the (task_id, segment_idx) pairs given, or a full one."""
        with self._lock:
            if segments is None:
                self._full = True
            else:
                self._dirty.update(segments)
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="phpo-hpo-manager", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)

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
                if self._is_leader():
                    self.run_once(None if full else dirty)
            except Exception:
                log.exception("HPO manager pass failed")
                self._drop_leadership()
            self._wake.wait(max(0.0, interval - (time.monotonic() - last_full)))
        self._drop_leadership()

    def _is_leader(self) -> bool:
        """Several server replicas may share one PostgreSQL: only the holder of a session-level
        advisory lock runs manager passes (the others take over when its connection ends).
        SQLite has one server process by construction.

        The lock lives as long as its connection: before each pass the leader asks, on that
        connection, whether it still holds it. A connection that was terminated (an operator's
        ``pg_terminate_backend``, a restarted PostgreSQL, a network cut) has released the lock and
        another replica may already steer, so this one steps down at once and tries to acquire
        the lock again like any other replica (two managers steering one task would hand out
        points beyond its parallelism)."""
        if self.db.is_sqlite:
            return True
        if self._leader_conn is not None:
            if self._still_holds_lock():
                return True
            log.warning("this server lost the HPO manager's advisory lock %d (its database connection "
                        "ended); it stops steering until it holds the lock again", MANAGER_LOCK_KEY)
            self._drop_leadership()
        conn = self.db.engine.connect()
        try:
            got = conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({MANAGER_LOCK_KEY})").scalar()
            conn.commit()
        except Exception:
            conn.invalidate()
            raise
        if not got:
            conn.close()
            return False
        self._leader_conn = conn
        log.info("this server runs the HPO manager (advisory lock %d held)", MANAGER_LOCK_KEY)
        return True

    def _still_holds_lock(self) -> bool:
        """Whether the lock connection is alive and its session holds the manager's lock."""
        try:
            held = self._leader_conn.exec_driver_sql(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                f" AND pid = pg_backend_pid() AND classid = 0 AND objid = {MANAGER_LOCK_KEY} AND objsubid = 1"
            ).scalar()
            self._leader_conn.commit()
        except Exception as e:  # noqa: BLE001 - a dead connection raises anything the driver has
            log.debug("the manager's lock connection failed its check: %s", e)
            return False
        return bool(held)

    def _drop_leadership(self) -> None:
        if self._leader_conn is not None:
            try:
                self._leader_conn.invalidate()  # closing the session releases the advisory lock
            except Exception:  # the connection may be gone already
                log.debug("dropping the manager's lock connection failed", exc_info=True)
            self._leader_conn = None

    # ------------------------------------------------------------ one pass

    def run_once(self, segments: set[tuple[int, int]] | None = None) -> None:
        """One pass: over every running task, or only over the (task_id, segment_idx) given."""
        if segments is not None and not segments:
            return
        with self._pass_lock:
            self._pass(segments)

    def _pass(self, only: set[tuple[int, int]] | None = None) -> None:
        # taken before reading the database: an iteration that ends after this point may have
        # stored points the read below does not see, so its segment waits for the next pass
        with self._lock:
            busy = set(self._inflight)
            generation = dict(self._generation)
        by_tid: dict[int, set[int]] = {}
        for tid, idx in only or ():
            by_tid.setdefault(tid, set()).add(idx)
        with self.db.read() as s:
            tstmt = select(TaskRow.id, TaskRow.optimizer).where(TaskRow.state == "running")
            if only is not None:
                tstmt = tstmt.where(TaskRow.id.in_(sorted(by_tid)))
            tasks = list(s.execute(tstmt).all())
            if not tasks:
                if only is None:
                    self._forget_except(set())
                return
            ids = [t[0] for t in tasks]
            new = [tid for tid in ids if tid not in self._specs]  # specs never change: decode each once
            for tid, raw in (s.execute(select(TaskRow.id, TaskRow.spec).where(TaskRow.id.in_(new))) if new else ()):
                self._spec(tid, raw)
            # a partial pass reads only the segments it was woken for (and their points)
            seg_where = SegmentRow.task_id.in_(ids) if only is None else or_(*(
                and_(SegmentRow.task_id == t, SegmentRow.idx.in_(sorted(by_tid[t]))) for t in ids))
            point_where = PointRow.task_id.in_(ids) if only is None else or_(*(
                and_(PointRow.task_id == t, PointRow.segment_idx.in_(sorted(by_tid[t]))) for t in ids))
            segs = list(s.execute(select(SegmentRow).where(seg_where, SegmentRow.finished.is_(False))
                                  .order_by(SegmentRow.task_id, SegmentRow.idx)).scalars())
            # only points in flight are counted (O(in flight) per pass, not O(all points)); the
            # ended ones follow: in an unfinished segment of a running task no point is
            # cancelled, so evaluated + failed = n_generated - ready - leased (see _plan)
            counts: dict[tuple[int, int, str], int] = {}
            for tid, idx, state, n in s.execute(
                    select(PointRow.task_id, PointRow.segment_idx, PointRow.state, func.count())
                    .where(point_where, PointRow.state.in_(("ready", "leased")))
                    .group_by(PointRow.task_id, PointRow.segment_idx, PointRow.state)):
                counts[(tid, idx, state)] = n
            ext = [tid for tid, opt in tasks if opt == "external"]
            active_steering = set(s.execute(select(JobRow.task_id).where(
                JobRow.task_id.in_(ext), JobRow.kind == "steering",
                JobRow.state.in_(("queued", "running")))).scalars()) if ext else set()
            # a task whose segments have all finished has none left in ``segs`` (known only to a
            # full pass; a partial one sees some segments)
            all_done = set(ids) - {sg.task_id for sg in segs} if only is None else set()
        if only is None:
            self._forget_except(set(ids))
        specs = {tid: self._specs[tid] for tid in ids}
        optimizer = {tid: opt for tid, opt in tasks}
        by_task: dict[int, list[SegmentRow]] = {}
        for seg in segs:
            by_task.setdefault(seg.task_id, []).append(seg)

        finishes: list[_SegPlan] = []
        asks: list[_SegPlan] = []
        external_asks: dict[int, int] = {}
        done_tasks: list[int] = []
        for tid in ids:
            segments = by_task.get(tid, [])
            external = optimizer[tid] == "external"
            if tid in all_done:
                done_tasks.append(tid)
                continue
            for seg in segments:
                if not external and (tid, seg.idx) in busy:
                    continue
                plan = self._plan(specs[tid], seg, lambda st, t=tid, i=seg.idx, g=seg.n_generated: (
                    g - counts.get((t, i, "ready"), 0) - counts.get((t, i, "leased"), 0) if st == "done"
                    else counts.get((t, i, st), 0)))
                if plan.finish:
                    finishes.append(plan)
                elif plan.n > 0:
                    if external:
                        if tid not in active_steering:
                            external_asks[tid] = max(external_asks.get(tid, 0), plan.n)
                    else:
                        asks.append(plan)

        if finishes or done_tasks:
            self._finish(finishes, done_tasks)
        for tid, n in external_asks.items():
            self._queue_steering_job(tid, specs[tid], n)
        if external_asks and self.broker is not None:
            self.broker.work.notify(len(external_asks))  # steering jobs queued: waiting agents take them
        for plan in asks:
            key = (plan.task_id, plan.seg_idx)
            with self._lock:
                if key in self._inflight or self._generation.get(key, 0) != generation.get(key, 0):
                    continue
                self._inflight[key] = self._pool.submit(self._iterate, plan.task_id, plan.seg_idx, plan.n)

    def _spec(self, task_id: int, raw: dict) -> TaskSpec:
        """Specs never change after submit: parse each once."""
        spec = self._specs.get(task_id)
        if spec is None:
            spec = self._specs[task_id] = TaskSpec.model_validate(raw)
        return spec

    def _plan(self, spec: TaskSpec, seg: SegmentRow, n_of) -> _SegPlan:
        plan = _SegPlan(seg.task_id, seg.idx)
        ready, leased = n_of("ready"), n_of("leased")
        done = n_of("done")
        in_flight = ready + leased
        if done >= spec.maxPoints:
            plan.finish = f"maxPoints ({spec.maxPoints}) evaluated"
        elif seg.n_jobs >= spec.max_evaluation_jobs:
            if leased == 0:
                plan.finish = f"maxEvaluationJobs ({spec.max_evaluation_jobs}) used"
        elif seg.finished_reason:
            if in_flight == 0:
                plan.finish = seg.finished_reason
        elif seg.n_generated >= spec.maxPoints:
            if in_flight == 0:
                plan.finish = f"maxPoints ({spec.maxPoints}) generated and done"
        else:
            room = spec.maxPoints - seg.n_generated
            min_unevaluated = spec.min_unevaluated_points  # upstream's 0 for a steering command
            if min_unevaluated is None:
                deficit = spec.nParallelEvaluation - in_flight
                if deficit > 0:
                    plan.n = min(deficit, spec.nPointsPerIteration, room)
            elif in_flight <= min_unevaluated:
                plan.n = min(spec.nPointsPerIteration, room)
        return plan

    def _finish(self, finishes: list[_SegPlan], done_tasks: list[int]) -> None:
        """Lock order everywhere: task, then segment, then points (PostgreSQL deadlocks otherwise);
        task rows are locked ``FOR NO KEY UPDATE`` so foreign-key checks of inserts never wait."""
        by_task: dict[int, list[_SegPlan]] = {tid: [] for tid in done_tasks}
        for plan in finishes:
            by_task.setdefault(plan.task_id, []).append(plan)
        with self.db.write() as s:
            for tid in sorted(by_task):
                task = s.execute(select(TaskRow).options(defer(TaskRow.spec)).where(TaskRow.id == tid)
                                 .with_for_update(key_share=True)).scalar_one()
                if task.state != "running":
                    continue
                spec = self._spec_of(s, tid)
                for plan in by_task[tid]:
                    seg = s.execute(select(SegmentRow).where(SegmentRow.task_id == tid,
                                                             SegmentRow.idx == plan.seg_idx)
                                    .with_for_update()).scalar_one()
                    if seg.finished:
                        continue
                    fresh = dict(s.execute(select(PointRow.state, func.count()).where(
                        PointRow.task_id == tid, PointRow.segment_idx == plan.seg_idx)
                        .group_by(PointRow.state)).all())
                    fresh["done"] = fresh.get("evaluated", 0) + fresh.get("failed", 0)
                    if self._plan(spec, seg, lambda st, f=fresh: f.get(st, 0)).finish is None:
                        continue  # the snapshot was stale: something is in flight again
                    for p in s.execute(select(PointRow).where(
                            PointRow.task_id == tid, PointRow.segment_idx == plan.seg_idx,
                            PointRow.state == "ready").with_for_update()).scalars():
                        set_state(p, "cancelled", message=f"segment finished: {plan.finish}")
                    seg.finished = True
                    seg.finished_reason = plan.finish
                s.flush()
                segs = list(s.execute(select(SegmentRow).where(SegmentRow.task_id == tid)).scalars())
                if all(sg.finished for sg in segs):
                    reasons = "; ".join(sorted({sg.finished_reason or "done" for sg in segs}))
                    failure = self._nothing_evaluated(s, tid, reasons)
                    set_state(task, "failed" if failure else "finished", message=failure or reasons)
                    cancel_open_work(s, tid, f"the task {task.state}")
                    log.info("task %d %s: %s", tid, task.state, task.message)

    @staticmethod
    def _nothing_evaluated(s: Session, task_id: int, reasons: str) -> str | None:
        """The failure message of a task that ends without a single evaluated point (every point
        failed, the steering answered ``[]`` at once, the job budget went on lost jobs): such a
        task has no result and must never look ``finished``. ``None`` when a point has a loss."""
        counts = dict(s.execute(select(PointRow.state, func.count()).where(PointRow.task_id == task_id)
                                .group_by(PointRow.state)).all())
        if counts.get("evaluated", 0):
            return None
        failed = counts.get("failed", 0)
        if failed:
            last = s.execute(select(PointRow.id, PointRow.error).where(
                PointRow.task_id == task_id, PointRow.state == "failed")
                .order_by(PointRow.updated_at.desc(), PointRow.id.desc()).limit(1)).first()
            what = f"all {failed} point(s) failed; last error (point {last[0]}): {(last[1] or '(none)')[:4000]}"
        elif sum(counts.values()) == 0:
            what = "no point was generated"
        else:
            what = f"{sum(counts.values())} point(s) generated, none evaluated"
        return f"no point was evaluated: {what} (the search ended because {reasons})"

    # ------------------------------------------------------------ built-in optimizers

    def _forget_except(self, running: set[int]) -> None:
        with self._lock:
            for key in [k for k in self._opts if k[0] not in running]:
                del self._opts[key]
            for key in [k for k in self._generation if k[0] not in running and k not in self._inflight]:
                del self._generation[key]
            for tid in [t for t in self._specs if t not in running]:
                del self._specs[tid]

    def _opt_state(self, task_id: int, seg_idx: int) -> _OptState:
        key = (task_id, seg_idx)
        with self._lock:
            st = self._opts.get(key)
        if st is not None:
            return st
        from phpo.steering.registry import create_optimizer

        with self.db.read() as s:
            spec = self._spec_of(s, task_id)
            rows = list(s.execute(select(PointRow).where(PointRow.task_id == task_id,
                                                         PointRow.segment_idx == seg_idx)
                                  .order_by(PointRow.serial)).scalars())
        opt = create_optimizer(spec.optimizer_name, optimizer_config(spec, seg_idx))
        history, told, open_ = [], set(), set()
        for r in rows:
            if r.state in ("evaluated", "failed"):
                history.append(HistoryItem(params=r.params, result=self._result_of(r, spec)))
                told.add(r.id)
            elif r.state in ("ready", "leased"):
                history.append(HistoryItem(params=r.params, result=None))
                open_.add(r.id)
        if history:
            opt.restore(history)
        st = _OptState(opt=opt, told=told, open=open_)
        with self._lock:
            self._opts[key] = st
        return st

    @staticmethod
    def _result_of(r: PointRow, spec: TaskSpec) -> Any:
        if r.state == "evaluated":
            return r.loss
        if spec.penaltyLoss is not None:
            return [spec.penaltyLoss] * spec.n_objectives if spec.n_objectives > 1 else spec.penaltyLoss
        return FAILED

    def _iterate(self, task_id: int, seg_idx: int, n: int) -> None:
        started, t0 = utcnow(), time.monotonic()
        key = (task_id, seg_idx)
        try:
            st = self._opt_state(task_id, seg_idx)
            with st.lock:
                spec = self._tell_new(st, task_id, seg_idx)
                pending = self._pending(st, task_id, seg_idx)
                points = st.opt.ask(n, pending)
                space = st.opt.space
                for i, p in enumerate(points):
                    problems = space.problems(p) if space is not None else []
                    if problems:
                        raise ValueError(f"point {i} from {spec.optimizer_name} does not fit the space: "
                                         f"{'; '.join(problems)}")
                    json.dumps(p)
                ids = self._store_points(task_id, seg_idx, points, requested=n, started=started,
                                         duration=time.monotonic() - t0, optimizer=spec.optimizer_name,
                                         exhausted=not points)
                st.own.update(ids)
                st.open.update(ids)
            if ids and self.broker is not None:
                self.broker.work.notify(len(ids))  # agents waiting in acquire: new points are ready
        except Exception as e:  # noqa: BLE001 - recorded as a failed iteration
            log.warning("steering iteration of task %d segment %d failed: %s", task_id, seg_idx, e)
            with self._lock:
                self._opts.pop(key, None)  # rebuilt from the database next time
            try:
                self._record_failure(task_id, seg_idx, n, started, time.monotonic() - t0,
                                     f"{type(e).__name__}: {e}")
            except Exception:
                log.exception("could not record the failed iteration")
        finally:
            with self._lock:
                self._inflight.pop(key, None)
                self._generation[key] = self._generation.get(key, 0) + 1
            self.wake([key])

    def _tell_new(self, st: _OptState, task_id: int, seg_idx: int) -> TaskSpec:
        """Tell the optimizer the points that ended since its last iteration. Only points it saw
        in flight can have ended (every point of a built-in optimizer's segment is stored by
        :meth:`_store_points`, and :meth:`_opt_state` starts from the database)."""
        rows = []
        with self.db.read() as s:
            spec = self._spec_of(s, task_id)
            watch = sorted(st.open)
            for i in range(0, len(watch), 500):
                rows += list(s.execute(select(PointRow).where(
                    PointRow.id.in_(watch[i:i + 500]),
                    PointRow.state.in_(("evaluated", "failed", "cancelled")))).scalars())
        for r in sorted(rows, key=lambda r: r.serial):
            st.open.discard(r.id)
            if r.state != "cancelled" and r.id not in st.told:
                st.opt.tell(r.params, self._result_of(r, spec))
                st.told.add(r.id)
        return spec

    def _spec_of(self, s: Session, task_id: int) -> TaskSpec:
        spec = self._specs.get(task_id)
        if spec is None:
            spec = self._spec(task_id, s.execute(select(TaskRow.spec).where(TaskRow.id == task_id)).scalar_one())
        return spec

    def _pending(self, st: _OptState, task_id: int, seg_idx: int) -> list[dict[str, Any]]:
        with self.db.read() as s:
            rows = s.execute(select(PointRow.id, PointRow.params).where(
                PointRow.task_id == task_id, PointRow.segment_idx == seg_idx,
                PointRow.state.in_(("ready", "leased")))).all()
        return [params for pid, params in rows if pid not in st.own]

    def _store_points(self, task_id: int, seg_idx: int, points: Sequence[dict[str, Any]], *, requested: int,
                      started, duration: float, optimizer: str, exhausted: bool,
                      job_id: int | None = None, s: Session | None = None) -> list[int]:
        """Insert new points (serials continue the segment's), record the iteration, and reset
        the task's count of failed iterations; in the caller's transaction when ``s`` is given."""
        if s is None:
            with self.db.write() as s2:
                return self._store_points(task_id, seg_idx, points, requested=requested, started=started,
                                          duration=duration, optimizer=optimizer, exhausted=exhausted,
                                          job_id=job_id, s=s2)
        task = s.execute(select(TaskRow).options(defer(TaskRow.spec)).where(TaskRow.id == task_id)
                         .with_for_update(key_share=True)).scalar_one()
        seg = s.execute(select(SegmentRow).where(SegmentRow.task_id == task_id, SegmentRow.idx == seg_idx)
                        .with_for_update()).scalar_one()
        spec = self._spec_of(s, task_id)
        ids: list[int] = []
        if task.state == "running" and not seg.finished:
            room = max(0, spec.maxPoints - seg.n_generated)
            now = utcnow()
            rows = [{"task_id": task_id, "segment_idx": seg_idx, "serial": seg.n_generated + i, "params": p,
                     "state": "ready", "attempts": 0, "intermediate": [], "created_at": now, "updated_at": now}
                    for i, p in enumerate(list(points)[:room])]
            seg.n_generated += len(rows)
            if exhausted and not seg.finished_reason:
                seg.finished_reason = EXHAUSTED if optimizer != "external" else STEERING_EMPTY
            if rows:  # one multi-row INSERT ... RETURNING, ids in the order of the points
                ids = list(s.scalars(insert(PointRow).returning(PointRow.id, sort_by_parameter_order=True), rows))
            task.failed_iterations = 0
        s.add(SteeringIterationRow(task_id=task_id, segment_idx=seg_idx, optimizer=optimizer, requested=requested,
                                   produced=len(ids), job_id=job_id, started_at=started, duration_s=duration))
        return ids

    def _record_failure(self, task_id: int, seg_idx: int | None, requested: int, started, duration: float,
                        error: str, *, s: Session | None = None, iteration: SteeringIterationRow | None = None,
                        optimizer: str | None = None) -> None:
        if s is None:
            with self.db.write() as s2:
                return self._record_failure(task_id, seg_idx, requested, started, duration, error, s=s2,
                                            iteration=iteration, optimizer=optimizer)
        task = s.execute(select(TaskRow).where(TaskRow.id == task_id).with_for_update(key_share=True)).scalar_one()
        if iteration is None:
            s.add(SteeringIterationRow(task_id=task_id, segment_idx=seg_idx, optimizer=optimizer or task.optimizer,
                                       requested=requested, produced=0, started_at=started, duration_s=duration,
                                       error=error[:100_000]))
        else:
            iteration.error = error[:100_000]
            iteration.duration_s = duration
        task.failed_iterations += 1
        limit = self.settings.steering_retries
        if task.state == "running" and task.failed_iterations >= limit:
            set_state(task, "failed", message=f"steering failed {task.failed_iterations} times in a row; "
                                               f"last error: {error[:20_000]}")
            cancel_open_work(s, task_id, "the task failed")
            log.warning("task %d failed: steering failed %d times", task_id, task.failed_iterations)
        return None

    # ------------------------------------------------------------ external steering

    def _queue_steering_job(self, task_id: int, spec: TaskSpec, n: int) -> None:
        from phpo.steering.external import build_steering_input

        segmented = spec.segments is not None
        with self.db.write() as s:
            task = s.execute(select(TaskRow).where(TaskRow.id == task_id).with_for_update(key_share=True)).scalar_one()
            if task.state != "running":
                return
            busy = s.execute(select(func.count()).select_from(JobRow).where(
                JobRow.task_id == task_id, JobRow.kind == "steering",
                JobRow.state.in_(("queued", "running")))).scalar_one()
            if busy:
                return
            # re-plan on fresh counts: the pass's snapshot may predate a steering job's points
            fresh: dict[tuple[int, str], int] = {}
            for idx, state, cnt in s.execute(select(PointRow.segment_idx, PointRow.state, func.count()).where(
                    PointRow.task_id == task_id).group_by(PointRow.segment_idx, PointRow.state)):
                fresh[(idx, state)] = cnt
            segs = s.execute(select(SegmentRow).where(SegmentRow.task_id == task_id,
                                                      SegmentRow.finished.is_(False))).scalars()
            n = max([self._plan(spec, sg, lambda st, i=sg.idx: (
                fresh.get((i, "evaluated"), 0) + fresh.get((i, "failed"), 0) if st == "done"
                else fresh.get((i, st), 0))).n for sg in segs] or [0])
            if n <= 0:
                return
            rows = list(s.execute(select(PointRow).where(PointRow.task_id == task_id)
                                  .order_by(PointRow.segment_idx, PointRow.serial)).scalars())
            points = [{"params": r.params, "loss": r.loss, "state": r.state, "segment_id": r.segment_idx,
                       "id": r.id} for r in rows]
            data = build_steering_input(points, spec.searchSpace, segmented=segmented,
                                        n_segments=len(spec.segment_names), penalty_loss=spec.penaltyLoss)
            now = utcnow()
            it = SteeringIterationRow(task_id=task_id, segment_idx=None if segmented else 0, optimizer="external",
                                      requested=n, produced=0, started_at=now)
            s.add(it)
            s.flush()
            # %MAX_POINTS is the whole task's budget (panda-client: maxPoints x segments)
            payload = {"container": spec.steeringContainer, "exec": spec.steeringExec, "input": data,
                       "num_points": n, "max_points": spec.total_max_points,
                       "sandbox_artifact": int(spec.sandbox) if spec.sandbox else None}
            job = JobRow(kind="steering", task_id=task_id, segment_idx=None if segmented else 0, state="queued",
                         point_ids=[], results={}, payload=payload, iteration_id=it.id, created_at=now)
            s.add(job)
            s.flush()
            it.job_id = job.id

    def steering_succeeded(self, s: Session, job: JobRow, task: TaskRow, output: list[Any] | None) -> None:
        """Called by the broker inside the ``complete`` transaction of a steering job."""
        from phpo.steering.external import parse_steering_output

        # lock order: task before segments (see _finish)
        s.execute(select(TaskRow.id).where(TaskRow.id == task.id).with_for_update(key_share=True))
        spec = self._spec_of(s, task.id)
        it = s.get(SteeringIterationRow, job.iteration_id) if job.iteration_id else None
        started = aware(it.started_at) if it else utcnow()
        duration = (utcnow() - started).total_seconds()
        segmented = spec.segments is not None
        n_segments = len(spec.segment_names)
        if task.state not in ("running", "paused"):  # ended meanwhile: the output is not used
            # (a paused task keeps it: its points wait, ready, for resume)
            if it is not None:
                it.duration_s = duration
                it.error = f"not used: the task is {task.state}"
            return
        try:
            if output is None:
                raise ValueError("the steering job ended without an output file (%OUT missing or unreadable)"
                                 + (f": {job.message}" if job.message else ""))
            parsed = parse_steering_output(output, segmented=segmented, n_segments=n_segments,
                                           spaces=spec.segment_spaces())
        except ValueError as e:
            self._record_failure(task.id, job.segment_idx, job.payload.get("num_points", 0) if job.payload else 0,
                                 started, duration, str(e), s=s, iteration=it)
            return
        by_seg: dict[int, list[dict[str, Any]]] = {i: [] for i in range(n_segments)}
        if segmented:
            for seg_idx, p in parsed:  # type: ignore[misc]
                by_seg[seg_idx].append(p)
        else:
            by_seg[0] = list(parsed)  # type: ignore[arg-type]
        produced = 0
        for seg_idx, pts in by_seg.items():
            seg = s.execute(select(SegmentRow).where(SegmentRow.task_id == task.id, SegmentRow.idx == seg_idx)
                            .with_for_update()).scalar_one()
            if seg.finished:
                continue
            if not parsed:
                seg.finished_reason = seg.finished_reason or STEERING_EMPTY
                continue
            room = max(0, spec.maxPoints - seg.n_generated)
            now = utcnow()
            for p in pts[:room]:
                s.add(PointRow(task_id=task.id, segment_idx=seg_idx, serial=seg.n_generated, params=p,
                               state="ready", attempts=0, intermediate=[], created_at=now, updated_at=now))
                seg.n_generated += 1
                produced += 1
        task.failed_iterations = 0
        if produced and self.broker is not None:
            self.broker.mark_ready(produced)  # wakes waiting agents once the complete has committed
        if it is not None:
            it.produced = produced
            it.duration_s = duration

    def steering_failed(self, s: Session, job: JobRow, task: TaskRow, error: str) -> None:
        it = s.get(SteeringIterationRow, job.iteration_id) if job.iteration_id else None
        started = aware(it.started_at) if it else utcnow()
        self._record_failure(task.id, job.segment_idx, job.payload.get("num_points", 0) if job.payload else 0,
                             started, (utcnow() - started).total_seconds(), error, s=s, iteration=it)
