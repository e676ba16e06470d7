"""External steering (``steeringExec``): the command never runs in the server. The manager queues
a steering job whose ``%IN`` content it builds (:func:`phpo.steering.external.build_steering_input`);
an agent runs the command and hands back ``%OUT``, which :meth:`ExternalSteering.steering_succeeded`
checks with :func:`phpo.steering.external.parse_steering_output` before storing any point. A
segmented task has one steering job for all its segments (upstream's segmented ``%IN``/``%OUT``)."""

from __future__ import annotations

from typing import Any, Protocol

from phpo.schemas.states import TaskState
from phpo.schemas.tasks import TaskSpec
from sqlalchemy.orm import Session

from ...db.engine import Database, aware, utcnow
from ...db.tables import JobRow, TaskRow
from ...repositories import iterations as iteration_repo
from ...repositories import points as point_repo
from ...repositories import segments as segment_repo
from ...repositories import tasks as task_repo
from .planning import plan_segment
from .records import STEERING_EMPTY, IterationRecords
from .specs import TaskSpecs


class ReadyMarker(Protocol):
    """Wakes ``n`` waiting agents once the caller's transaction has committed."""

    def mark_ready(self, n: int = 1) -> None: ...


class ExternalSteering:
    """Steering jobs: queued by the manager's pass, ended by the broker (the broker's
    ``SteeringHandler``: :meth:`steering_succeeded`, :meth:`steering_failed`)."""

    def __init__(self, db: Database, specs: TaskSpecs, records: IterationRecords, waker: ReadyMarker | None):
        self.db = db
        self.specs = specs
        self.records = records
        self.waker = waker

    def queue_steering_job(self, task_id: int, spec: TaskSpec, n: int) -> None:
        """A steering job for the task, unless it has one queued or running, or, on fresh
        counts, needs no point."""
        from phpo.steering.external import build_steering_input

        segmented = spec.segments is not None
        with self.db.write() as s:
            task = task_repo.locked_task(s, task_id=task_id)
            if task.state != TaskState.running:
                return
            if iteration_repo.count_steering_jobs(s, task_id=task_id):
                return
            # re-plan on fresh counts: the pass's snapshot may predate a steering job's points
            fresh = point_repo.counts_by_segment(s, task_id=task_id)
            segs = segment_repo.unfinished_segments(s, task_id=task_id)
            n = max(
                [
                    plan_segment(
                        spec,
                        sg,
                        lambda st, i=sg.idx: (
                            fresh.get((i, "evaluated"), 0) + fresh.get((i, "failed"), 0)
                            if st == "done"
                            else fresh.get((i, st), 0)
                        ),
                    ).n
                    for sg in segs
                ]
                or [0]
            )
            if n <= 0:
                return
            rows = point_repo.task_points(s, task_id=task_id)
            points = [
                {
                    "params": r.params,
                    "loss": r.loss,
                    "state": r.state,
                    "segment_id": r.segment_idx,
                    "id": r.id,
                }
                for r in rows
            ]
            data = build_steering_input(
                points,
                spec.searchSpace,
                segmented=segmented,
                n_segments=len(spec.segment_names),
                penalty_loss=spec.penaltyLoss,
            )
            # %MAX_POINTS is the whole task's budget (panda-client: maxPoints x segments)
            payload = {
                "container": spec.steeringContainer,
                "exec": spec.steeringExec,
                "input": data,
                "num_points": n,
                "max_points": spec.total_max_points,
                "sandbox_artifact": int(spec.sandbox) if spec.sandbox else None,
            }
            iteration_repo.add_steering_job(
                s,
                task_id=task_id,
                segment_idx=None if segmented else 0,
                requested=n,
                payload=payload,
                now=utcnow(),
            )

    def steering_succeeded(self, s: Session, job: JobRow, task: TaskRow, output: list[Any] | None) -> None:
        """Called by the broker inside the ``complete`` transaction of a steering job."""
        from phpo.steering.external import parse_steering_output

        # lock order: task before segments (see SegmentFinisher.finish)
        task_repo.lock_task(s, task_id=task.id)
        spec = self.specs.get(s, task.id)
        it = iteration_repo.get_iteration(s, iteration_id=job.iteration_id)
        started = aware(it.started_at) if it else utcnow()
        duration = (utcnow() - started).total_seconds()
        segmented = spec.segments is not None
        n_segments = len(spec.segment_names)
        if task.state not in (TaskState.running, TaskState.paused):  # ended meanwhile: the output is not used
            # (a paused task keeps it: its points wait, ready, for resume)
            if it is not None:
                it.duration_s = duration
                it.error = f"not used: the task is {task.state}"
            return
        try:
            if output is None:
                raise ValueError(
                    "the steering job ended without an output file (%OUT missing or unreadable)"
                    + (f": {job.message}" if job.message else "")
                )
            parsed = parse_steering_output(
                output, segmented=segmented, n_segments=n_segments, spaces=spec.segment_spaces()
            )
        except ValueError as e:
            self.records.record_failure(
                task.id, job.segment_idx, _requested(job), started, duration, str(e), s=s, iteration=it
            )
            return
        by_seg: dict[int, list[dict[str, Any]]] = {i: [] for i in range(n_segments)}
        if segmented:
            for seg_idx, p in parsed:  # type: ignore[misc]
                by_seg[seg_idx].append(p)
        else:
            by_seg[0] = list(parsed)  # type: ignore[arg-type]
        produced = 0
        for seg_idx, pts in by_seg.items():
            seg = segment_repo.locked_segment(s, task_id=task.id, idx=seg_idx)
            if seg.finished:
                continue
            if not parsed:
                seg.finished_reason = seg.finished_reason or STEERING_EMPTY
                continue
            room = max(0, spec.maxPoints - seg.n_generated)
            params = pts[:room]
            point_repo.add_ready_points(
                s,
                task_id=task.id,
                segment_idx=seg_idx,
                first_serial=seg.n_generated,
                params=params,
                now=utcnow(),
            )
            seg.n_generated += len(params)
            produced += len(params)
        task.failed_iterations = 0
        if produced and self.waker is not None:
            self.waker.mark_ready(produced)  # wakes waiting agents once the complete has committed
        if it is not None:
            it.produced = produced
            it.duration_s = duration

    def steering_failed(self, s: Session, job: JobRow, task: TaskRow, error: str) -> None:
        """Called by the broker when a steering job failed or was lost."""
        it = iteration_repo.get_iteration(s, iteration_id=job.iteration_id)
        started = aware(it.started_at) if it else utcnow()
        self.records.record_failure(
            task.id,
            job.segment_idx,
            _requested(job),
            started,
            (utcnow() - started).total_seconds(),
            error,
            s=s,
            iteration=it,
        )


def _requested(job: JobRow) -> int:
    return job.payload.get("num_points", 0) if job.payload else 0
