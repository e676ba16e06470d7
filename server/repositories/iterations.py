"""Steering iterations, recorded so users can see why a task waits."""

from __future__ import annotations

from phpo.schemas.api import SteeringIteration
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.engine import aware
from ..db.tables import SteeringIterationRow
from .common import check_page, count


def iteration_to_schema(r: SteeringIterationRow) -> SteeringIteration:
    return SteeringIteration(id=r.id, task_id=r.task_id, segment_id=r.segment_idx, optimizer=r.optimizer,
                             requested=r.requested, produced=r.produced, started_at=aware(r.started_at),
                             duration_s=r.duration_s, error=r.error)


def list_iterations(s: Session, task_id: int, *, limit: int, offset: int) -> tuple[list[SteeringIteration], int]:
    check_page(limit, offset)
    stmt = select(SteeringIterationRow).where(SteeringIterationRow.task_id == task_id)
    total = count(s, stmt)
    rows = s.execute(stmt.order_by(SteeringIterationRow.id).limit(limit).offset(offset)).scalars()
    return [iteration_to_schema(r) for r in rows], total
