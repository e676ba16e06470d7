"""Steering iterations, recorded so users can see why a task waits."""

from __future__ import annotations

from typing import Any

from phpo.schemas.api import SteeringIteration
from phpo.schemas.states import JobState
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..db.engine import aware
from ..db.tables import JobRow, SteeringIterationRow
from .common import check_page, count


def iteration_to_schema(r: SteeringIterationRow) -> SteeringIteration:
    return SteeringIteration(
        id=r.id,
        task_id=r.task_id,
        segment_id=r.segment_idx,
        optimizer=r.optimizer,
        requested=r.requested,
        produced=r.produced,
        started_at=aware(r.started_at),
        duration_s=r.duration_s,
        error=r.error,
    )


def list_iterations(
    s: Session, task_id: int, *, limit: int, offset: int
) -> tuple[list[SteeringIteration], int]:
    check_page(limit, offset)
    stmt = select(SteeringIterationRow).where(SteeringIterationRow.task_id == task_id)
    total = count(s, stmt)
    rows = s.execute(stmt.order_by(SteeringIterationRow.id).limit(limit).offset(offset)).scalars()
    return [iteration_to_schema(r) for r in rows], total


# --- used by the HPO manager

_ACTIVE_JOB = (JobState.queued, JobState.running)


def add_iteration(
    s: Session,
    *,
    task_id: int,
    segment_idx: int | None,
    optimizer: str,
    requested: int,
    produced: int = 0,
    started_at: Any,
    duration_s: float | None = None,
    error: str | None = None,
) -> SteeringIterationRow:
    """Record one steering iteration (added to the session, not flushed)."""
    row = SteeringIterationRow(
        task_id=task_id,
        segment_idx=segment_idx,
        optimizer=optimizer,
        requested=requested,
        produced=produced,
        started_at=started_at,
        duration_s=duration_s,
        error=error,
    )
    s.add(row)
    return row


def get_iteration(s: Session, *, iteration_id: int | None) -> SteeringIterationRow | None:
    """The iteration ``iteration_id`` (None when it is None or does not exist)."""
    return s.get(SteeringIterationRow, iteration_id) if iteration_id else None


def tasks_with_steering_job(s: Session, *, task_ids: list[int]) -> set[int]:
    """The tasks among ``task_ids`` with a steering job queued or running."""
    if not task_ids:
        return set()
    return set(
        s.execute(
            select(JobRow.task_id).where(
                JobRow.task_id.in_(task_ids), JobRow.kind == "steering", JobRow.state.in_(_ACTIVE_JOB)
            )
        ).scalars()
    )


def count_steering_jobs(s: Session, *, task_id: int) -> int:
    """How many steering jobs of the task are queued or running."""
    return s.execute(
        select(func.count())
        .select_from(JobRow)
        .where(JobRow.task_id == task_id, JobRow.kind == "steering", JobRow.state.in_(_ACTIVE_JOB))
    ).scalar_one()


def add_steering_job(
    s: Session, *, task_id: int, segment_idx: int | None, requested: int, payload: dict[str, Any], now: Any
) -> JobRow:
    """A queued steering job and its iteration (``external``, nothing produced yet), each
    pointing at the other; flushed, so both have their ids."""
    it = add_iteration(
        s, task_id=task_id, segment_idx=segment_idx, optimizer="external", requested=requested, started_at=now
    )
    s.flush()
    job = JobRow(
        kind="steering",
        task_id=task_id,
        segment_idx=segment_idx,
        state="queued",
        point_ids=[],
        results={},
        payload=payload,
        iteration_id=it.id,
        created_at=now,
    )
    s.add(job)
    s.flush()
    it.job_id = job.id
    return job
