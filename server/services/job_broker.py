"""The job broker: agents lease jobs, renew leases, report results; the reaper takes back
expired leases.

Guarantees (ARCHITECTURE "Data flow"):
- a point is in at most one running job: it is leased (``ready -> leased``) in the same
  transaction that creates the job, under a row lock (PostgreSQL: the segment row is locked,
  ready points are taken ``FOR UPDATE SKIP LOCKED``; SQLite: writers are serialized);
- a job is leased once: steering jobs (created ``queued`` by the HPO manager) move
  ``queued -> running`` under ``FOR UPDATE SKIP LOCKED``; evaluation jobs are created
  ``running`` by ``acquire`` itself;
- results are idempotent: a result already received answers ``duplicate: true``;
- a job whose lease was lost (reaped) answers 409 ``lease_lost``; a lease that expired but was
  not reaped yet still counts (the reaper runs every ``--reaper-interval`` seconds).

Fairness: candidate segments are served round-robin: the segment that was served longest
ago (``last_acquired_at``, never-served first) goes first, so one big task cannot starve the
others. Within a segment, points go out in serial order.

``%SEGMENT_NAME`` in ``evaluationExec`` is substituted here, on the server, as plain text as
upstream does (:func:`phpo.schemas.upstream.evaluation_command`), so the agent runs
``evaluation.exec`` as is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from phpo.schemas.jobs import (
    AcquireRequest,
    AgentResources,
    CompleteRequest,
    EvaluationSettings,
    FailRequest,
    GangInfo,
    HeartbeatRequest,
    HeartbeatResponse,
    Job,
    JobAck,
    JobKind,
    JobPoint,
    PointResult,
    SteeringSettings,
)
from phpo.schemas.states import TERMINAL_TASK_STATES, JobState, PointState, TaskState
from phpo.schemas.tasks import TaskSpec
from phpo.schemas.upstream import needs_container_runtime, evaluation_command
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, defer

from ..auth.identity import Caller
from ..db.engine import Database, aware, lock_conflict, utcnow
from ..db.tables import JobRow, PointRow, TaskRow
from ..errors import Forbidden, InvalidInput, LeaseLost, NotFound
from ..orchestration.transitions import set_state, set_states
from ..repositories import jobs as repo
from ..settings import Settings
from .resource_requirements import Requirement, parse_architecture, parse_sites
from .gangs import Gangs
from .job_results import JobResults
from .pruning import PruningDecider, prune_job_points
from .work_signal import ReadyWork

log = logging.getLogger(__name__)

CANDIDATE_PAGE = 64  # segments an acquire reads at a time (round-robin order)
MAX_CANDIDATES = 512  # and at most: the rest wait for the next acquire


class SteeringHandler(Protocol):
    """What the HPO manager does when a steering job ends (inside the broker's transaction)."""

    def steering_succeeded(
        self, s: Session, job: JobRow, task: TaskRow, output: list[Any] | None
    ) -> None: ...

    def steering_failed(self, s: Session, job: JobRow, task: TaskRow, error: str) -> None: ...


class MlflowRuns(Protocol):
    """What the broker reads of the MLflow bridge (when ``--mlflow-uri`` is set): the tracking URI
    and the runs of points that exist already. A point never waits for its run: the payload logs
    into its own working directory and the bridge imports it."""

    uri: str

    def run_ids(self, s: Session, point_ids: list[int]) -> dict[int, str]: ...


@dataclass(frozen=True)
class TaskInfo:
    """What the broker needs of a task spec, parsed once per task (specs never change)."""

    spec: TaskSpec
    sites: frozenset[str] | None
    requirement: Requirement
    max_jobs: int
    per_job: int
    max_attempts: int
    n_objectives: int
    eval_needs_runtime: bool = False  # evaluationContainer given
    steer_needs_runtime: bool = False  # a steering command run in a container

    def site_ok(self, site: str) -> bool:
        return self.sites is None or site in self.sites

    def can_evaluate(self, site: str, resources: AgentResources) -> bool:
        """Whether an agent at ``site`` with ``resources`` can run this task's evaluations."""
        return (
            self.site_ok(site)
            and self.requirement.matches(resources)
            and (not self.eval_needs_runtime or bool(resources.container_runtimes))
        )

    def can_steer(self, resources: AgentResources) -> bool:
        """Whether an agent can run this task's steering command: ``--site`` never applies (upstream
        runs the steering centrally, not at a grid site), nor does ``--architecture``."""
        return not self.steer_needs_runtime or bool(resources.container_runtimes)


SEEN_WINDOW_S = 90.0  # an agent that acquired within this long counts as connected


@dataclass(frozen=True)
class SeenAgent:
    """What an agent said in its last acquire (kept in memory by the broker of this server)."""

    at: float
    site: str
    resources: AgentResources
    kinds: tuple[JobKind, ...]


class JobBroker:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        on_change: Callable[[list[tuple[int, int]] | None], None] = lambda segments: None,
        *,
        steering: SteeringHandler | None = None,
        mlflow: MlflowRuns | None = None,
        ready: ReadyWork | None = None,
    ):
        self.db = db
        self.settings = settings
        self.on_change = on_change  # after a commit: the HPO manager steers
        self.steering = steering
        self.mlflow = mlflow
        self.ready = ready or ReadyWork()
        self.work = self.ready.signal  # wakes long-polling acquires (see work_signal.py)
        self._infos: dict[int, TaskInfo] = {}
        self._infos_lock = threading.Lock()
        self._seen: dict[str, SeenAgent] = {}  # agent name -> its last acquire (see unmet_requirement)
        self.gangs = Gangs(self)  # points trained by several agents (nNodesPerPoint)
        self.pruning = PruningDecider()  # decisions come from the database (see pruning.py)
        self.results = JobResults(self.info, self._task, self.mark_ready)  # what results do to points

    # ---------------------------------------------------------------- helpers

    def info(self, s: Session, task_id: int, spec: dict | None = None) -> TaskInfo:
        with self._infos_lock:
            got = self._infos.get(task_id)
        if got is not None:
            return got
        if spec is None:
            spec = repo.task_spec(s, task_id=task_id)
        ts = TaskSpec.model_validate(spec)
        got = TaskInfo(
            spec=ts,
            sites=parse_sites(ts.site),
            requirement=parse_architecture(ts.architecture),
            max_jobs=ts.max_evaluation_jobs,
            per_job=1 if ts.nodes[1] > 1 else ts.maxPointsPerEvaluationJob,
            max_attempts=ts.maxAttempts,
            n_objectives=ts.n_objectives,
            eval_needs_runtime=bool(ts.evaluationContainer),
            steer_needs_runtime=needs_container_runtime(ts.steeringExec, ts.steeringContainer),
        )
        with self._infos_lock:
            self._infos[task_id] = got
        return got

    def mark_ready(self, n: int = 1) -> None:
        """Called inside a broker transaction that makes ``n`` points ready (e.g. a steering
        job's output): as many waiting agents are woken after the commit."""
        self.ready.mark_ready(n)

    def _changed(self, job: JobRow | None = None) -> None:
        """After a commit: the manager steers (only ``job``'s segment when it has one; a full
        pass otherwise); waiting agents are woken only when a point became ready again (results
        alone make nothing ready: the manager's new points do, and it notifies itself; waking
        every waiter per result cost each of them an acquire)."""
        seg = None if job is None or job.segment_idx is None else job.segment_idx
        self.on_change(None if seg is None else [(job.task_id, seg)])
        self.ready.flush()

    @staticmethod
    def _task(s: Session, task_id: int) -> TaskRow | None:
        """The task row without decoding its spec (the parsed spec is in :meth:`info`'s cache);
        ``task.spec`` still loads on first access."""
        return s.get(TaskRow, task_id, options=[defer(TaskRow.spec)])

    @property
    def _pg(self) -> bool:
        return not self.db.is_sqlite

    def _lease_until(self):
        return utcnow() + timedelta(seconds=self.settings.lease_seconds)

    def _job_row(self, s: Session, caller: Caller, job_id: int) -> JobRow:
        job = repo.job_for_update(s, job_id=job_id)
        if job is None or not (caller.is_admin or job.holder == caller.holder):
            raise NotFound(f"job {job_id} does not exist (or was not leased with this token)", field="job_id")
        return job

    def evaluation_settings(self, info: TaskInfo, seg: Any) -> EvaluationSettings:
        """``seg``: a segment (row or ORM object) with ``name`` and ``files``."""
        spec = info.spec
        exec_ = evaluation_command(spec.evaluationExec, seg.name)
        ckpt = (
            [x.strip() for x in spec.checkPointToSave.split(",") if x.strip()]
            if spec.checkPointToSave
            else []
        )
        return EvaluationSettings(
            container=spec.evaluationContainer,
            exec=exec_,
            input=spec.evaluationInput,
            training_data=spec.evaluationTrainingData,
            output=spec.evaluationOutput,
            meta=spec.evaluationMeta,
            metrics=spec.evaluationMetrics,
            checkpoint_to_save=ckpt,
            checkpoint_to_load=spec.checkPointToLoad,
            checkpoint_interval_s=spec.checkpoint_interval_seconds,
            timeout_s=spec.evaluationTimeout,
            training_files=list(seg.files or []) or list(spec.trainingFiles),
            sandbox_artifact=int(spec.sandbox) if spec.sandbox else None,
            processes=spec.nProcessesPerPoint,
            launcher=spec.launcher,
            intermediate_metric=spec.intermediateMetric,
        )

    # ---------------------------------------------------------------- acquire

    @staticmethod
    def check_site(caller: Caller, req: AcquireRequest) -> None:
        """403 for an agent token asking for jobs of a site it was not made for."""
        if not caller.site_ok(req.site):
            raise Forbidden(
                f"this agent token ('{caller.name}') is for site(s) {', '.join(sorted(caller.sites or ()))}; "
                f"it cannot take jobs for site {req.site!r}",
                field="site",
            )

    def acquire(self, caller: Caller, req: AcquireRequest) -> Job | None:
        self.check_site(caller, req)
        # a plain dict store per acquire (no lock needed: one key, one atomic assignment)
        self._seen[req.agent] = SeenAgent(time.monotonic(), req.site, req.resources, tuple(req.kinds))
        if JobKind.steering in req.kinds:
            job = self._acquire_steering(caller, req)
            if job is not None:
                return job
        if JobKind.evaluation in req.kinds:
            try:
                return self.gangs.join(caller, req) or self._acquire_evaluation(caller, req)
            except OperationalError as e:
                # PostgreSQL: two acquires (of two replicas, or two threads) that lock segments
                # in different orders can deadlock; the database aborts one of them. Nothing was
                # written: that agent is answered "no job" and asks again.
                if not lock_conflict(e):
                    raise
                log.info(
                    "acquire for agent %s lost a lock race (%s): answered no job",
                    req.agent,
                    type(e.orig).__name__,
                )
        return None

    def _acquire_steering(self, caller: Caller, req: AcquireRequest) -> Job | None:
        # queued steering jobs are rare: a read answers "none" without taking the write lock
        with self.db.read() as r:
            if not repo.queued_steering_exists(r):
                return None
        with self.db.write() as s:
            for job in repo.queued_steering_jobs(s, limit=50, skip_locked=self._pg):
                if not self.info(s, job.task_id).can_steer(req.resources):
                    continue
                set_state(job, JobState.running)
                job.agent, job.holder, job.site = req.agent, caller.holder, req.site
                job.lease_expires_at = self._lease_until()
                payload = dict(job.payload or {})
                return Job(
                    id=job.id,
                    kind=JobKind.steering,
                    task_id=job.task_id,
                    segment_id=job.segment_idx or 0,
                    state="running",
                    lease_seconds=self.settings.lease_seconds,
                    lease_expires_at=aware(job.lease_expires_at),
                    steering=SteeringSettings(**payload),
                )
        return None

    def _acquire_evaluation(self, caller: Caller, req: AcquireRequest) -> Job | None:
        # candidates are found with a read (an agent with nothing to do costs no write lock);
        # each is checked again under the lock below. Only segment ids are selected: the parsed
        # spec comes from the per-task cache (a segmented spec lists all S segments, so decoding
        # it per candidate made one acquire O(S^2))
        # Candidates come in pages of CANDIDATE_PAGE, longest-unserved first, until one page
        # holds a segment this agent may run: an acquire looks at O(1) segments, not all S.
        with self.db.read() as r:
            matching = []
            for offset in range(0, MAX_CANDIDATES, CANDIDATE_PAGE):
                cands = repo.candidate_segments(r, offset=offset, limit=CANDIDATE_PAGE)
                for sid, tid in cands:
                    info = self.info(r, tid)
                    if info.can_evaluate(req.site, req.resources) and self.gangs.may_lead(info, req):
                        matching.append((sid, info))
                if matching or len(cands) < CANDIDATE_PAGE:
                    break
        if not matching:
            return None
        with self.db.write() as s:
            # PostgreSQL: first take any segment nobody else holds; if all are held, wait for one
            for blocking in (False, True) if self._pg else (True,):
                skipped = False
                for sid, info in matching:
                    # columns, not an ORM object (the acquire is the hottest write)
                    seg = repo.segment_for_lease(s, segment_id=sid, lock=self._pg, skip_locked=not blocking)
                    if seg is None:
                        skipped = True
                        continue
                    if seg.finished or seg.n_jobs >= info.max_jobs:
                        continue
                    # plain columns, not ORM objects: a job of k points is one SELECT and one UPDATE
                    points = repo.ready_points(
                        s, task_id=seg.task_id, segment_idx=seg.idx, limit=info.per_job, skip_locked=self._pg
                    )
                    if not points:
                        continue
                    return self._make_job(s, caller, req, info, seg, points)
                if not skipped:
                    break
        return None

    def _make_job(
        self, s: Session, caller: Caller, req: AcquireRequest, info: TaskInfo, seg: Any, points: list[Any]
    ) -> Job:
        """``seg``: a locked segment row (id, task_id, idx, name, files, ...); ``points``: (id,
        serial, params, attempts, checkpoint_artifact_id) rows, ready and locked."""
        now = utcnow()
        ids = [p.id for p in points]
        job = JobRow(
            kind="evaluation",
            task_id=seg.task_id,
            segment_idx=seg.idx,
            agent=req.agent,
            holder=caller.holder,
            site=req.site,
            state="running",
            lease_expires_at=self._lease_until(),
            point_ids=ids,
            results={},
            created_at=now,
            started_at=now,
        )
        s.add(job)
        s.flush()
        set_states(
            s,
            "point",
            PointState.leased,
            from_state=PointState.ready,
            ids=ids,
            values={"job_id": job.id, "site": req.site},
        )
        repo.count_job_in_segment(s, segment_id=seg.id, now=now)
        runs = self.mlflow.run_ids(s, [p.id for p in points]) if self.mlflow is not None else {}
        return self.gangs.lead(s, job, req, info, self.evaluation_job(job, seg, points, info, runs))

    def evaluation_job(
        self,
        job: JobRow,
        seg: Any,
        points: list[PointRow],
        info: TaskInfo,
        runs: dict[int, str] | None,
        gang: GangInfo | None = None,
    ) -> Job:
        """What the agent of evaluation job ``job`` gets: ``points`` with their next attempt and
        checkpoint, the segment's evaluation settings. ``runs``: point id -> MLflow run id, or
        None for a job that reports nothing (a gang member: node rank 0 reports the point)."""
        return Job(
            id=job.id,
            kind=JobKind.evaluation,
            task_id=job.task_id,
            segment_id=job.segment_idx or 0,
            segment=seg.name,
            state="running",
            lease_seconds=self.settings.lease_seconds,
            lease_expires_at=aware(job.lease_expires_at),
            points=[
                JobPoint(
                    point_id=p.id,
                    serial=p.serial,
                    params=p.params,
                    attempt=p.attempts + 1,
                    checkpoint_artifact=p.checkpoint_artifact_id,
                    mlflow_run_id=(runs or {}).get(p.id),
                )
                for p in points
            ],
            evaluation=self.evaluation_settings(info, seg),
            mlflow_tracking_uri=self.mlflow.uri if self.mlflow is not None and runs is not None else None,
            gang=gang,
        )

    # ---------------------------------------------------------------- unmet requirements

    def unmet_requirement(self, s: Session, task_id: int, state: str, ready: int, leased: int) -> str | None:
        """Why a running task waits, when the agents this server has seen lately say so: which
        of its requirements (site, architecture, container runtime) none of them meets. ``None``
        when some connected agent could take its work (it may just be busy), or when no work of
        the task is waiting."""
        if state != "running":
            return None
        now = time.monotonic()
        seen = [a for a in list(self._seen.values()) if now - a.at <= SEEN_WINDOW_S]
        info = self.info(s, task_id)
        steering_waits = info.spec.optimizer_name == "external" and repo.queued_steering_exists(
            s, task_id=task_id
        )
        evaluation_waits = ready > 0 and leased == 0
        if not (steering_waits or evaluation_waits):
            return None
        if not seen:
            return (
                f"no agent has asked this server for work in the last {SEEN_WINDOW_S:.0f} s; start one "
                "(phpo agent --server URL --token TOKEN --site SITE)"
            )
        why = []
        if steering_waits:
            why += _unmet_steering(info, seen)
        if evaluation_waits:
            why += _unmet_evaluation(info, seen)
        return "; ".join(why) or None

    # ---------------------------------------------------------------- heartbeat

    def heartbeat(self, caller: Caller, job_id: int, req: HeartbeatRequest) -> HeartbeatResponse:
        with self.db.write() as s:
            job = self._job_row(s, caller, job_id)
            if job.state != JobState.running:
                raise LeaseLost(
                    f"job {job_id} is {job.state}: its lease is gone; stop working on it", field="job_id"
                )
            job.lease_expires_at = self._lease_until()
            if req.message is not None:
                job.message = req.message
            rows, reported = None, set()
            if req.intermediate:
                ids = set(job.point_ids or [])
                bad = [r.point_id for r in req.intermediate if r.point_id not in ids]
                if bad:
                    raise InvalidInput(f"point {bad[0]} is not part of job {job_id}", field="intermediate")
                rows = {p.id: p for p in repo.points_by_id(s, ids=ids)}
                for r in req.intermediate:
                    p = rows[r.point_id]
                    if p.state == PointState.leased and p.job_id == job.id:
                        p.intermediate = [*(p.intermediate or []), {"step": r.step, "value": r.value}]
                        p.updated_at = utcnow()  # the pruning decider's cache key
                        reported.add(p.id)
            task_state = repo.task_state(s, task_id=job.task_id)
            stop = prune_job_points(self.pruning, s, job, self.info(s, job.task_id).spec, rows, reported)
            gang = self.gangs.heartbeat(s, job)
            if job.state != JobState.running:  # its gang dissolved just now
                return HeartbeatResponse(lease_expires_at=aware(utcnow()), cancel=True, gang=gang)
            # a paused task's running work goes on (pause only stops new work); an ended one's stops
            return HeartbeatResponse(
                lease_expires_at=aware(job.lease_expires_at),
                cancel=task_state in TERMINAL_TASK_STATES,
                pause=task_state == TaskState.paused,
                stop_points=stop,
                gang=gang,
            )

    # ---------------------------------------------------------------- results

    def point_result(self, caller: Caller, job_id: int, point_id: int, result: PointResult) -> JobAck:
        if result.point_id != point_id:
            raise InvalidInput(
                f"point_id {result.point_id} in the body differs from {point_id} in the path",
                field="point_id",
            )
        with self.db.write() as s:
            job = self._job_row(s, caller, job_id)
            if point_id not in (job.point_ids or []):
                raise NotFound(f"point {point_id} is not part of job {job_id}", field="point_id")
            if str(point_id) in (job.results or {}):
                return JobAck(job_id=job.id, state=job.state, duplicate=True)
            if job.state != JobState.running:
                if not self.results.accept_late(s, job, [result]):
                    raise LeaseLost(
                        f"job {job_id} is {job.state}: its lease is gone, the result is not taken",
                        field="job_id",
                    )
                ack = JobAck(job_id=job.id, state=job.state)
                self._changed(job)
                return ack
            self.results.apply_one(s, job, result)
            ack = JobAck(job_id=job.id, state=job.state)
        self._changed(job)
        return ack

    def complete(self, caller: Caller, job_id: int, req: CompleteRequest) -> JobAck:
        with self.db.write() as s:
            job = self._job_row(s, caller, job_id)
            if job.state == JobState.succeeded:
                return JobAck(job_id=job.id, state=job.state, duplicate=True)
            if job.state != JobState.running:
                if job.kind != "evaluation" or not self.results.accept_late(s, job, req.results):
                    raise LeaseLost(
                        f"job {job_id} is {job.state}: its lease is gone, the results are not taken",
                        field="job_id",
                    )
                ack = JobAck(job_id=job.id, state=job.state)
                self._changed(job)
                return ack
            task = self._task(s, job.task_id)
            if job.kind == "evaluation":
                ids = set(job.point_ids or [])
                for r in req.results:
                    if r.point_id not in ids:
                        raise InvalidInput(f"point {r.point_id} is not part of job {job_id}", field="results")
                self.results.apply(
                    s, job, [r for r in req.results if str(r.point_id) not in (job.results or {})]
                )
                self.results.release_job_points(
                    s, job, task, error=req.message or "the job ended without a result for this point"
                )
                job.message = req.message or job.message
                set_state(job, JobState.succeeded)
            else:
                set_state(job, JobState.succeeded)
                job.message = req.message
                if self.steering is not None:
                    self.steering.steering_succeeded(s, job, task, req.steering_output)
            ack = JobAck(job_id=job.id, state=job.state)
        self._changed(job)
        return ack

    def fail(self, caller: Caller, job_id: int, req: FailRequest) -> JobAck:
        with self.db.write() as s:
            job = self._job_row(s, caller, job_id)
            if job.state == JobState.failed:
                return JobAck(job_id=job.id, state=job.state, duplicate=True)
            if job.state != JobState.running:
                raise LeaseLost(f"job {job_id} is {job.state}: its lease is gone", field="job_id")
            task = s.get(TaskRow, job.task_id)
            set_state(job, JobState.failed, message=req.error)
            if job.kind == "evaluation":
                self.results.release_job_points(s, job, task, error=req.error, final=not req.retry)
                self.gangs.ended(s, job, req.error)
            elif self.steering is not None:
                self.steering.steering_failed(s, job, task, req.error)
            ack = JobAck(job_id=job.id, state=job.state)
        self._changed(job)
        return ack

    # ---------------------------------------------------------------- reaper

    def lose_job(self, s: Session, job: JobRow, message: str) -> bool:
        """The lease reaper's verdict on ``job`` (its lease expired): lost, its leased points
        back to ready with one attempt spent (or failed, with their last error, when their
        attempts are used up), a steering job's failure counted, the other jobs of its gang
        ended. False when the job already ended earlier in the same pass (with its gang). The
        caller calls :meth:`changed` after the commit."""
        if job.state != JobState.running:
            return False
        task = s.get(TaskRow, job.task_id)
        set_state(job, JobState.lost, message=message)
        if job.kind == "evaluation":
            self.results.release_job_points(s, job, task, error=message)
            self.gangs.ended(s, job, message)
        elif self.steering is not None:
            self.steering.steering_failed(s, job, task, message)
        return True

    def expire_gangs(self, s: Session) -> int:
        """Gangs still forming past their gangTimeout: dissolved, their slots given back."""
        return self.gangs.expire(s)

    def changed(self) -> None:
        """After a commit that changed jobs of several tasks: a full manager pass, waiters woken."""
        self._changed()


def _resources_text(a: SeenAgent) -> str:
    gpus = ", ".join(f"{g.vendor} {g.model or '?'} {g.memory_mb} MB" for g in a.resources.gpus) or "no GPU"
    runtimes = "/".join(a.resources.container_runtimes) or "no container runtime"
    return f"{a.resources.arch}, {gpus}, {runtimes}"


def _unmet_steering(info: TaskInfo, seen: list[SeenAgent]) -> list[str]:
    steerers = [a for a in seen if JobKind.steering in a.kinds]
    if not steerers:
        return [
            f"its steering waits: none of the {len(seen)} agent(s) seen takes steering jobs "
            "(all run with --no-steering)"
        ]
    if not any(info.can_steer(a.resources) for a in steerers):
        what = (
            f"--steeringContainer {info.spec.steeringContainer}"
            if info.spec.steeringContainer
            else "a docker-style steeringExec ('run ... IMAGE ...')"
        )
        return [
            f"its steering waits: {what} needs a container runtime and none of the {len(steerers)} "
            "agent(s) seen that take steering jobs has one (start one with --executor podman|docker)"
        ]
    return []


def _unmet_evaluation(info: TaskInfo, seen: list[SeenAgent]) -> list[str]:
    evaluators = [a for a in seen if JobKind.evaluation in a.kinds]
    if not evaluators:
        return [f"its evaluations wait: none of the {len(seen)} agent(s) seen takes evaluation jobs"]
    capable = [a for a in evaluators if info.can_evaluate(a.site, a.resources)]
    if capable:
        return Gangs.unmet(info, capable)
    spec = info.spec
    unmet = []
    if not any(info.site_ok(a.site) for a in evaluators):
        sites = ", ".join(sorted({a.site for a in evaluators}))
        unmet.append(
            f"--site {spec.site}: no agent is at that site (the {len(evaluators)} agent(s) seen are at "
            f"{sites})"
        )
    if not any(info.requirement.matches(a.resources) for a in evaluators):
        offers = "; ".join(sorted({_resources_text(a) for a in evaluators}))
        unmet.append(f"--architecture {spec.architecture}: no agent offers it (seen: {offers})")
    if info.eval_needs_runtime and not any(a.resources.container_runtimes for a in evaluators):
        unmet.append(
            f"--evaluationContainer {spec.evaluationContainer}: no agent has a container runtime "
            "(start one with --executor podman|docker)"
        )
    if not unmet:
        unmet.append("no single agent meets --site, --architecture and the container runtime together")
    return ["its evaluations wait: " + "; ".join(unmet)]
