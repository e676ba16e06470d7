"""Workflows: lookup with ownership, listing, and conversion to :class:`phpo.schemas.Workflow`
(the node tree with states, iteration numbers, task ids, results and task progress)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from phpo.schemas.states import WorkflowState
from phpo.schemas.workflows import NodeProgress, Workflow, WorkflowNodeRecord
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..auth.identity import Caller
from ..db.engine import aware, utcnow
from ..db.tables import PointRow, TaskRow
from ..db.workflow_tables import WorkflowNodeRow, WorkflowRow
from ..errors import InvalidInput, NotFound
from .common import check_page, count, order_by

WORKFLOW_STATES = tuple(str(x) for x in WorkflowState)


def get_workflow_row(
    s: Session, workflow_id: int, caller: Caller | None = None, *, lock: bool = False
) -> WorkflowRow:
    """The workflow, or 404 when it does not exist or is not the caller's (never 403)."""
    stmt = select(WorkflowRow).where(WorkflowRow.id == workflow_id)
    if lock:
        stmt = stmt.with_for_update(key_share=True)
    row = s.execute(stmt).scalar_one_or_none()
    if row is None or (caller is not None and not caller.can_see(row.owner)):
        raise NotFound(f"workflow {workflow_id} does not exist (or is not yours)", field="workflow_id")
    return row


def node_rows(s: Session, workflow_id: int) -> list[WorkflowNodeRow]:
    return list(
        s.execute(
            select(WorkflowNodeRow)
            .where(WorkflowNodeRow.workflow_id == workflow_id)
            .order_by(WorkflowNodeRow.id)
        ).scalars()
    )


def _counts(s: Session, ids: list[int]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {i: {} for i in ids}
    if ids:
        for wid, state, n in s.execute(
            select(WorkflowNodeRow.workflow_id, WorkflowNodeRow.state, func.count())
            .where(WorkflowNodeRow.workflow_id.in_(ids))
            .group_by(WorkflowNodeRow.workflow_id, WorkflowNodeRow.state)
        ):
            out[wid][state] = n
    return out


def _base(row: WorkflowRow, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "owner": row.owner,
        "state": row.state,
        "message": row.message,
        "params": row.params or {},
        "outputs": row.outputs,
        "parent_node_id": row.parent_node_id,
        "created_at": aware(row.created_at),
        "updated_at": aware(row.updated_at),
        "finished_at": aware(row.finished_at),
        "counts": counts,
    }


def list_workflows(
    s: Session,
    caller: Caller,
    *,
    state: list[str] | None,
    name: str | None,
    limit: int,
    offset: int,
    sort: str | None = None,
) -> tuple[list[Workflow], int]:
    """Top-level workflows of the caller (sub-workflows appear inside their parent's tree)."""
    check_page(limit, offset)
    stmt = select(WorkflowRow).where(WorkflowRow.parent_node_id.is_(None))
    if not caller.is_admin:
        stmt = stmt.where(WorkflowRow.owner == caller.name)
    if state:
        bad = [x for x in state if x not in WORKFLOW_STATES]
        if bad:
            raise InvalidInput(
                f"unknown workflow state {bad[0]!r}; use one of {', '.join(WORKFLOW_STATES)}", field="state"
            )
        stmt = stmt.where(WorkflowRow.state.in_(state))
    if name:
        stmt = stmt.where(WorkflowRow.name == name)
    total = count(s, stmt)
    cols = {
        "id": WorkflowRow.id,
        "created_at": WorkflowRow.created_at,
        "updated_at": WorkflowRow.updated_at,
        "name": WorkflowRow.name,
        "state": WorkflowRow.state,
        "_tiebreak": (WorkflowRow.id.desc(),),
    }
    rows = list(s.execute(order_by(stmt, sort, cols, "-id").limit(limit).offset(offset)).scalars())
    counts = _counts(s, [r.id for r in rows])
    return [Workflow(**_base(r, counts[r.id])) for r in rows], total


def workflow_to_schema(s: Session, row: WorkflowRow) -> Workflow:
    """The workflow with its whole node tree (sub-workflows' nodes nested under their node)."""
    nodes = _tree(s, row.id, depth=0)
    counts = dict(Counter(r.state for r in node_rows(s, row.id)))
    return Workflow(**_base(row, counts), nodes=nodes, definition=row.definition)


def _progress(s: Session, task_ids: list[int]) -> dict[int, NodeProgress]:
    out: dict[int, NodeProgress] = {}
    if not task_ids:
        return out
    for tid, spec, nseg in s.execute(
        select(TaskRow.id, TaskRow.spec, TaskRow.n_segments).where(TaskRow.id.in_(task_ids))
    ):
        out[tid] = NodeProgress(total=int(spec.get("maxPoints", 10)) * max(1, nseg or 1))
    for tid, state, n in s.execute(
        select(PointRow.task_id, PointRow.state, func.count())
        .where(PointRow.task_id.in_(task_ids))
        .group_by(PointRow.task_id, PointRow.state)
    ):
        p = out.get(tid)
        if p is None:
            continue
        if state == "evaluated":
            p.evaluated = n
        elif state == "failed":
            p.failed = n
        elif state == "leased":
            p.running = n
    return out


def _tree(s: Session, workflow_id: int, depth: int) -> list[WorkflowNodeRecord]:
    rows = node_rows(s, workflow_id)
    kids: dict[int | None, list[WorkflowNodeRow]] = {}
    for r in rows:
        kids.setdefault(r.parent_id, []).append(r)
    progress = _progress(s, [r.task_id for r in rows if r.task_id is not None and r.state == "running"])

    def record(r: WorkflowNodeRow) -> WorkflowNodeRecord:
        children = sorted(kids.get(r.id, []), key=lambda c: (c.iteration, c.item_index or 0, c.id))
        rec = WorkflowNodeRecord(
            id=r.id,
            name=r.name,
            path=r.path,
            kind=r.kind,
            state=r.state,
            iteration=r.iteration if (r.kind == "loop" or r.iteration) else None,
            item_index=r.item_index,
            item=r.item,
            fan_out=bool(r.fan_out),
            task_id=r.task_id,
            workflow_id=r.child_workflow_id,
            message=r.message,
            results=r.results or {},
            progress=progress.get(r.task_id) if r.task_id else None,
            started_at=aware(r.started_at),
            finished_at=aware(r.finished_at),
            children=[record(c) for c in children],
        )
        if r.child_workflow_id is not None and depth < 20:
            rec.children = _tree(s, r.child_workflow_id, depth + 1)
        return rec

    return [record(r) for r in kids.get(None, [])]


# ---------------------------------------------------------------- the workflow engine's statements


def running_workflow_ids(s: Session) -> list[int]:
    """The ids of the running workflows (sub-workflows included), oldest first."""
    return list(
        s.execute(
            select(WorkflowRow.id).where(WorkflowRow.state == "running").order_by(WorkflowRow.id)
        ).scalars()
    )


def find_workflow(s: Session, *, workflow_id: int) -> WorkflowRow | None:
    return s.get(WorkflowRow, workflow_id)


def add_workflow_row(
    s: Session,
    *,
    name: str,
    owner: str,
    definition: dict[str, Any],
    params: dict[str, Any],
    parent_node_id: int | None,
) -> WorkflowRow:
    """A new workflow, running (its id assigned: flushed)."""
    now = utcnow()
    row = WorkflowRow(
        name=name,
        owner=owner,
        state="running",
        definition=definition,
        params=params,
        parent_node_id=parent_node_id,
        created_at=now,
        updated_at=now,
    )
    s.add(row)
    s.flush()
    return row


def add_node_row(
    s: Session,
    *,
    workflow_id: int,
    name: str,
    kind: str,
    path: str,
    parent_id: int | None = None,
    iteration: int = 0,
    item_index: int | None = None,
    item: Any = None,
) -> WorkflowNodeRow:
    """A new node of ``workflow_id``, waiting (not flushed: the caller flushes once for many)."""
    now = utcnow()
    row = WorkflowNodeRow(
        workflow_id=workflow_id,
        parent_id=parent_id,
        name=name,
        path=path,
        kind=kind,
        fan_out=False,
        iteration=iteration,
        item_index=item_index,
        item=item,
        state="waiting",
        created_at=now,
        updated_at=now,
    )
    s.add(row)
    return row


def find_task(s: Session, *, task_id: int) -> TaskRow | None:
    return s.get(TaskRow, task_id)


def lock_task(s: Session, *, task_id: int) -> TaskRow | None:
    """The task, locked (``FOR KEY SHARE``) until the transaction ends; None when it does not exist."""
    return s.execute(
        select(TaskRow).where(TaskRow.id == task_id).with_for_update(key_share=True)
    ).scalar_one_or_none()


def first_point(s: Session, *, task_id: int) -> PointRow | None:
    """The task's first point (a job node's task has one)."""
    return (
        s.execute(select(PointRow).where(PointRow.task_id == task_id).order_by(PointRow.id)).scalars().first()
    )
