"""The SQL of the broker's gangs (services/gangs.py): the running evaluation jobs of the tasks
of several agents per point, whose payloads hold the gangs. The rest of a gang's SQL is the
broker's own (repositories/jobs.py)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from phpo.schemas.states import JobState
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.tables import JobRow


def _running(task_ids: Collection[int]) -> tuple[Any, ...]:
    return JobRow.task_id.in_(task_ids), JobRow.kind == "evaluation", JobRow.state == JobState.running


def running_job_payloads(s: Session, *, task_ids: Collection[int]) -> list[tuple[int, dict[str, Any] | None]]:
    """(id, payload) of the running evaluation jobs of ``task_ids`` (a read: no lock)."""
    return list(s.execute(select(JobRow.id, JobRow.payload).where(*_running(task_ids))))


def running_jobs(
    s: Session, *, task_ids: Collection[int], ids: Collection[int] | None = None, skip_locked: bool
) -> Iterable[JobRow]:
    """The running evaluation jobs of ``task_ids`` (only those of ``ids`` when given), in id
    order; ``FOR UPDATE SKIP LOCKED`` when ``skip_locked`` (PostgreSQL)."""
    stmt = select(JobRow).where(*_running(task_ids))
    if ids is not None:
        stmt = stmt.where(JobRow.id.in_(ids))
    stmt = stmt.order_by(JobRow.id)
    if skip_locked:
        stmt = stmt.with_for_update(skip_locked=True)
    return s.execute(stmt).scalars()
