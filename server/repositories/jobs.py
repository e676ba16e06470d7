"""The SQL of the job broker (services/job_broker.py), its gangs and the lease reaper: leasing
(segments, ready points, queued steering jobs), locking a job and its points, the segments' job
counts.

Locking is the caller's choice, said by keyword: ``skip_locked=True`` takes the rows ``FOR UPDATE
SKIP LOCKED`` (PostgreSQL; the broker passes False on SQLite, where writers are serialized); the
functions named ``..._for_update`` lock plainly. Each function is one statement (the broker's hot
paths count them: tests/server/test_hot_path_statements.py)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any

from phpo.schemas.states import JobState, PointState, TaskState
from sqlalchemy import Row, exists, select, update
from sqlalchemy.orm import Session

from ..db.tables import JobRow, PointRow, SegmentRow, TaskRow

# ---------------------------------------------------------------- tasks


def task_spec(s: Session, *, task_id: int) -> dict[str, Any]:
    return s.execute(select(TaskRow.spec).where(TaskRow.id == task_id)).scalar_one()


def task_state(s: Session, *, task_id: int) -> str:
    return s.execute(select(TaskRow.state).where(TaskRow.id == task_id)).scalar_one()


# ---------------------------------------------------------------- jobs


def job_for_update(s: Session, *, job_id: int) -> JobRow | None:
    """The job, its row locked (``None`` when there is none)."""
    return s.execute(select(JobRow).where(JobRow.id == job_id).with_for_update()).scalar_one_or_none()


def queued_steering_exists(s: Session, *, task_id: int | None = None) -> bool:
    """Whether a steering job waits for an agent (of ``task_id``; of any task when ``None``)."""
    stmt = select(JobRow.id)
    if task_id is not None:
        stmt = stmt.where(JobRow.task_id == task_id)
    stmt = stmt.where(JobRow.kind == "steering", JobRow.state == JobState.queued).limit(1)
    return s.execute(stmt).first() is not None


def queued_steering_jobs(s: Session, *, limit: int, skip_locked: bool) -> Iterable[JobRow]:
    """Queued steering jobs of running tasks, oldest first."""
    stmt = (
        select(JobRow)
        .join(TaskRow, TaskRow.id == JobRow.task_id)
        .where(JobRow.kind == "steering", JobRow.state == JobState.queued, TaskRow.state == TaskState.running)
        .order_by(JobRow.id)
        .limit(limit)
    )
    if skip_locked:
        stmt = stmt.with_for_update(skip_locked=True, of=JobRow)
    return s.execute(stmt).scalars()


def expired_jobs(s: Session, *, now: datetime, limit: int, skip_locked: bool) -> Iterable[JobRow]:
    """Running jobs whose lease expired before ``now``, in id order (the lease reaper's batch)."""
    stmt = (
        select(JobRow)
        .where(JobRow.state == JobState.running, JobRow.lease_expires_at < now)
        .order_by(JobRow.id)
        .limit(limit)
    )
    if skip_locked:
        stmt = stmt.with_for_update(skip_locked=True)
    return s.execute(stmt).scalars()


def running_jobs_for_update(s: Session, *, ids: Collection[int]) -> Iterable[JobRow]:
    """The jobs of ``ids`` still running, in id order, locked."""
    return s.execute(
        select(JobRow)
        .where(JobRow.id.in_(ids), JobRow.state == JobState.running)
        .order_by(JobRow.id)
        .with_for_update()
    ).scalars()


# ---------------------------------------------------------------- segments


def candidate_segments(s: Session, *, offset: int, limit: int) -> list[Row]:
    """(id, task_id) of unfinished segments of running tasks with a ready point, the segment
    served longest ago (never served first) first: one page of an acquire's candidates."""
    ready = exists().where(
        PointRow.task_id == SegmentRow.task_id,
        PointRow.segment_idx == SegmentRow.idx,
        PointRow.state == PointState.ready,
    )
    return s.execute(
        select(SegmentRow.id, SegmentRow.task_id)
        .join(TaskRow, TaskRow.id == SegmentRow.task_id)
        .where(TaskRow.state == TaskState.running, SegmentRow.finished.is_(False), ready)
        .order_by(SegmentRow.last_acquired_at.asc().nulls_first(), SegmentRow.id)
        .offset(offset)
        .limit(limit)
    ).all()


def segment_for_lease(s: Session, *, segment_id: int, lock: bool, skip_locked: bool) -> Row | None:
    """(id, task_id, idx, name, files, finished, n_jobs) of the segment, as columns, not an ORM
    object (the acquire is the hottest write); locked ``FOR UPDATE`` when ``lock`` (``SKIP
    LOCKED`` too when ``skip_locked``: ``None`` when another transaction holds it)."""
    stmt = select(
        SegmentRow.id,
        SegmentRow.task_id,
        SegmentRow.idx,
        SegmentRow.name,
        SegmentRow.files,
        SegmentRow.finished,
        SegmentRow.n_jobs,
    ).where(SegmentRow.id == segment_id)
    if lock:
        stmt = stmt.with_for_update(skip_locked=skip_locked)
    return s.execute(stmt).one_or_none()


def segment_name_files(s: Session, *, task_id: int, idx: int | None) -> Row:
    """(name, files) of a segment."""
    return s.execute(
        select(SegmentRow.name, SegmentRow.files).where(SegmentRow.task_id == task_id, SegmentRow.idx == idx)
    ).one()


def count_job_in_segment(s: Session, *, segment_id: int, now: datetime) -> None:
    """A job was leased from the segment: one more running job, served at ``now``."""
    s.execute(
        update(SegmentRow)
        .where(SegmentRow.id == segment_id)
        .values(n_jobs=SegmentRow.n_jobs + 1, last_acquired_at=now)
    )


def uncount_job_in_segment(s: Session, *, task_id: int, idx: int | None) -> None:
    """A job of the segment was given back without running: one running job less (never below 0)."""
    s.execute(
        update(SegmentRow)
        .where(SegmentRow.task_id == task_id, SegmentRow.idx == idx, SegmentRow.n_jobs > 0)
        .values(n_jobs=SegmentRow.n_jobs - 1)
    )


# ---------------------------------------------------------------- points


def ready_points(s: Session, *, task_id: int, segment_idx: int, limit: int, skip_locked: bool) -> list[Row]:
    """(id, serial, params, attempts, checkpoint_artifact_id) of the segment's first ``limit``
    ready points in serial order, plain columns (a job of k points is one SELECT and one UPDATE)."""
    stmt = (
        select(
            PointRow.id, PointRow.serial, PointRow.params, PointRow.attempts, PointRow.checkpoint_artifact_id
        )
        .where(
            PointRow.task_id == task_id,
            PointRow.segment_idx == segment_idx,
            PointRow.state == PointState.ready,
        )
        .order_by(PointRow.serial)
        .limit(limit)
    )
    if skip_locked:
        stmt = stmt.with_for_update(skip_locked=True)
    return list(s.execute(stmt).all())


def job_points(s: Session, *, ids: Collection[int]) -> list[Row]:
    """(id, serial, params, attempts, checkpoint_artifact_id) of the points ``ids``, in serial order."""
    return s.execute(
        select(
            PointRow.id, PointRow.serial, PointRow.params, PointRow.attempts, PointRow.checkpoint_artifact_id
        )
        .where(PointRow.id.in_(ids))
        .order_by(PointRow.serial)
    ).all()


def points_by_id(s: Session, *, ids: Collection[int]) -> Iterable[PointRow]:
    return s.execute(select(PointRow).where(PointRow.id.in_(ids))).scalars()


def point_for_update(s: Session, *, point_id: int) -> PointRow:
    return s.execute(select(PointRow).where(PointRow.id == point_id).with_for_update()).scalar_one()


def held_point_ids(s: Session, *, ids: list[int], job_id: int) -> set[int]:
    """Which of ``ids`` (sorted) are leased to the job, locked in id order like every other path;
    one statement per 1000 ids."""
    held: set[int] = set()
    for i in range(0, len(ids), 1000):
        held.update(
            s.execute(
                select(PointRow.id)
                .where(
                    PointRow.id.in_(ids[i : i + 1000]),
                    PointRow.state == PointState.leased,
                    PointRow.job_id == job_id,
                )
                .order_by(PointRow.id)
                .with_for_update()
            ).scalars()
        )
    return held


def leased_points_for_update(s: Session, *, job: JobRow) -> Iterable[PointRow]:
    """The points of ``job`` still leased to it, locked."""
    return s.execute(
        select(PointRow)
        .where(
            PointRow.id.in_(job.point_ids or []),
            PointRow.job_id == job.id,
            PointRow.state == PointState.leased,
        )
        .with_for_update()
    ).scalars()
