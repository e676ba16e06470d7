"""Tasks: conversion to :class:`phpo.schemas.Task` (with counts), lookup with ownership, listing."""

from __future__ import annotations

from phpo.schemas.states import TaskState
from phpo.schemas.tasks import Task, TaskCounts, TaskSpec
from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from ..auth.identity import Caller
from ..db.engine import aware
from ..db.tables import JobRow, PointRow, TaskRow
from ..errors import InvalidInput, NotFound
from .common import check_page, count, order_by
from .points import best_loss_by_task

TASK_STATES = tuple(str(x) for x in TaskState)


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
    for tid, state, n in s.execute(
        select(PointRow.task_id, PointRow.state, func.count())
        .where(PointRow.task_id.in_(task_ids))
        .group_by(PointRow.task_id, PointRow.state)
    ):
        setattr(out[tid], state, n)
    for tid, n in s.execute(
        select(JobRow.task_id, func.count())
        .where(JobRow.task_id.in_(task_ids), JobRow.kind == "evaluation")
        .group_by(JobRow.task_id)
    ):
        out[tid].jobs = n
    return out


def tasks_to_schema(s: Session, rows: list[TaskRow]) -> list[Task]:
    ids = [r.id for r in rows]
    counts = counts_by_task(s, ids)
    best = best_loss_by_task(s, rows)
    return [
        Task(
            id=r.id,
            name=r.name,
            owner=r.owner,
            state=r.state,
            message=r.message,
            spec=TaskSpec.model_validate(r.spec),
            created_at=aware(r.created_at),
            updated_at=aware(r.updated_at),
            finished_at=aware(r.finished_at),
            counts=counts[r.id],
            n_segments=r.n_segments,
            best_loss=best.get(r.id),
        )
        for r in rows
    ]


def task_to_schema(s: Session, row: TaskRow) -> Task:
    return tasks_to_schema(s, [row])[0]


def list_tasks(
    s: Session,
    caller: Caller,
    *,
    state: list[str] | None,
    name: str | None,
    limit: int,
    offset: int,
    sort: str | None = None,
) -> tuple[list[Task], int]:
    check_page(limit, offset)
    stmt = select(TaskRow)
    if not caller.is_admin:
        stmt = stmt.where(TaskRow.owner == caller.name)
    if state:
        bad = [x for x in state if x not in TASK_STATES]
        if bad:
            raise InvalidInput(
                f"unknown task state {bad[0]!r}; use one of {', '.join(TASK_STATES)}", field="state"
            )
        stmt = stmt.where(TaskRow.state.in_(state))
    if name:
        # '*' is a wildcard; otherwise an exact match
        stmt = stmt.where(
            TaskRow.name.like(name.replace("%", r"\%").replace("_", r"\_").replace("*", "%"), escape="\\")
            if "*" in name
            else TaskRow.name == name
        )
    total = count(s, stmt)
    cols = {
        "id": TaskRow.id,
        "created_at": TaskRow.created_at,
        "updated_at": TaskRow.updated_at,
        "name": TaskRow.name,
        "state": TaskRow.state,
        "_tiebreak": (TaskRow.id.desc(),),
    }
    stmt = order_by(stmt, sort, cols, "-id").limit(limit).offset(offset)
    return tasks_to_schema(s, list(s.execute(stmt).scalars())), total


# --- used by the HPO manager


def running_tasks(s: Session, *, ids: list[int] | None = None) -> list[tuple[int, str]]:
    """(id, optimizer) of the running tasks (of those among ``ids`` when given)."""
    stmt = select(TaskRow.id, TaskRow.optimizer).where(TaskRow.state == TaskState.running)
    if ids is not None:
        stmt = stmt.where(TaskRow.id.in_(ids))
    return [(tid, opt) for tid, opt in s.execute(stmt).all()]


def task_specs(s: Session, *, ids: list[int]) -> list[tuple[int, dict]]:
    """(id, raw spec) of the tasks ``ids``."""
    if not ids:
        return []
    return [(tid, raw) for tid, raw in s.execute(select(TaskRow.id, TaskRow.spec).where(TaskRow.id.in_(ids)))]


def task_spec(s: Session, *, task_id: int) -> dict:
    """The raw spec of one task (it must exist)."""
    return s.execute(select(TaskRow.spec).where(TaskRow.id == task_id)).scalar_one()


def locked_task(s: Session, *, task_id: int, with_spec: bool = True) -> TaskRow:
    """The task row locked ``FOR NO KEY UPDATE`` (foreign-key checks of inserts never wait on
    it); without decoding its spec unless ``with_spec``. Lock order: task, then segment, then
    points."""
    stmt = select(TaskRow).where(TaskRow.id == task_id).with_for_update(key_share=True)
    if not with_spec:
        stmt = stmt.options(defer(TaskRow.spec))
    return s.execute(stmt).scalar_one()


def lock_task(s: Session, *, task_id: int) -> None:
    """Lock the task row ``FOR NO KEY UPDATE`` (reading its id only)."""
    s.execute(select(TaskRow.id).where(TaskRow.id == task_id).with_for_update(key_share=True))
