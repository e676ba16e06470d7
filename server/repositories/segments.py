"""Segments of a task with their point counts and best point."""

from __future__ import annotations

from phpo.schemas.segments import Segment
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..db.tables import PointRow, SegmentRow, TaskRow
from .common import check_page, count, order_by
from .points import best_points


def list_segments(s: Session, task: TaskRow, *, limit: int, offset: int, sort: str | None) -> tuple[list[Segment], int]:
    check_page(limit, offset)
    stmt = select(SegmentRow).where(SegmentRow.task_id == task.id)
    total = count(s, stmt)
    stmt = order_by(stmt, sort, {"id": SegmentRow.idx, "name": SegmentRow.name, "_tiebreak": (SegmentRow.idx,)},
                    "id").limit(limit).offset(offset)
    rows = list(s.execute(stmt).scalars())
    counts: dict[tuple[int, str], int] = {}
    for idx, state, n in s.execute(select(PointRow.segment_idx, PointRow.state, func.count()).where(
            PointRow.task_id == task.id).group_by(PointRow.segment_idx, PointRow.state)):
        counts[(idx, state)] = n
    best = {b.segment_id: b for b in best_points(s, task)}
    out = []
    for r in rows:
        b = best.get(r.idx)
        out.append(Segment(
            id=r.idx, task_id=task.id, name=r.name, files=list(r.files or []), finished=r.finished,
            n_ready=counts.get((r.idx, "ready"), 0), n_leased=counts.get((r.idx, "leased"), 0),
            n_evaluated=counts.get((r.idx, "evaluated"), 0), n_failed=counts.get((r.idx, "failed"), 0),
            n_jobs=r.n_jobs, best_loss=b.loss if b else None, best_params=b.params if b else None,
        ))
    return out, total
