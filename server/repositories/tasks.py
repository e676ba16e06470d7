"""Tasks: conversion to :class:`phpo.schemas.Task` (with counts), lookup with ownership, listing."""

from __future__ import annotations

from phpo.schemas.tasks import Task, TaskCounts, TaskSpec
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..auth.identity import Caller
from ..db.engine import aware
from ..db.tables import JobRow, PointRow, TaskRow
from ..errors import InvalidInput, NotFound
from .common import check_page, count, order_by
from .points import best_loss_by_task

TASK_STATES = ("submitted", "running", "paused", "finished", "failed", "cancelled")


def get_task_row(s: Session, task_id: int, caller: Caller | None = None, *, lock: bool = False) -> TaskRow:
    """The task, or 404 when it does not exist or is not the caller's (never 403: that would
    tell a user that someone else's task exists)."""
    stmt = select(TaskRow).where(TaskRow.id == task_id)
    if lock:
        # NO KEY UPDATE: foreign-key checks of concurrent inserts (jobs, points) do not wait on it
        stmt = stmt.with_for_update(key_share=True)
    row = s.execute(stmt).scalar_one_or_none()
    if row is None or (caller is not None and not caller.can_see(row.owner)):
        raise NotFound(f"task {task_id} does not exist (or is not yours)", field="task_id")
    return row


def counts_by_task(s: Session, task_ids: list[int]) -> dict[int, TaskCounts]:
    out = {tid: TaskCounts() for tid in task_ids}
    if not task_ids:
        return out
    for tid, state, n in s.execute(select(PointRow.task_id, PointRow.state, func.count()).where(
            PointRow.task_id.in_(task_ids)).group_by(PointRow.task_id, PointRow.state)):
        setattr(out[tid], state, n)
    for tid, n in s.execute(select(JobRow.task_id, func.count()).where(
            JobRow.task_id.in_(task_ids), JobRow.kind == "evaluation").group_by(JobRow.task_id)):
        out[tid].jobs = n
    return out


def tasks_to_schema(s: Session, rows: list[TaskRow]) -> list[Task]:
    ids = [r.id for r in rows]
    counts = counts_by_task(s, ids)
    best = best_loss_by_task(s, rows)
    return [
        Task(id=r.id, name=r.name, owner=r.owner, state=r.state, message=r.message,
             spec=TaskSpec.model_validate(r.spec), created_at=aware(r.created_at), updated_at=aware(r.updated_at),
             finished_at=aware(r.finished_at), counts=counts[r.id], n_segments=r.n_segments, best_loss=best.get(r.id))
        for r in rows
    ]


def task_to_schema(s: Session, row: TaskRow) -> Task:
    return tasks_to_schema(s, [row])[0]


def list_tasks(s: Session, caller: Caller, *, state: list[str] | None, name: str | None, limit: int,
               offset: int, sort: str | None = None) -> tuple[list[Task], int]:
    check_page(limit, offset)
    stmt = select(TaskRow)
    if not caller.is_admin:
        stmt = stmt.where(TaskRow.owner == caller.name)
    if state:
        bad = [x for x in state if x not in TASK_STATES]
        if bad:
            raise InvalidInput(f"unknown task state {bad[0]!r}; use one of {', '.join(TASK_STATES)}", field="state")
        stmt = stmt.where(TaskRow.state.in_(state))
    if name:
        # '*' is a wildcard; otherwise an exact match
        stmt = stmt.where(TaskRow.name.like(name.replace("%", r"\%").replace("_", r"\_").replace("*", "%"),
                                            escape="\\") if "*" in name else TaskRow.name == name)
    total = count(s, stmt)
    cols = {"id": TaskRow.id, "created_at": TaskRow.created_at, "updated_at": TaskRow.updated_at,
            "name": TaskRow.name, "state": TaskRow.state, "_tiebreak": (TaskRow.id.desc(),)}
    stmt = order_by(stmt, sort, cols, "-id").limit(limit).offset(offset)
    return tasks_to_schema(s, list(s.execute(stmt).scalars())), total
