"""The queries of the pruning decider (:mod:`phpo.server.services.pruning`).

Both run on every intermediate report of a task with a pruner, so their statements are built
once (with bound parameters) instead of per call: building a SQLAlchemy expression costs more
than the indexed query itself on the report path."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from ..db.tables import PointRow

_COLUMNS = (
    PointRow.id,
    PointRow.serial,
    PointRow.state,
    PointRow.intermediate,
    PointRow.loss,
    PointRow.updated_at,
)
_SEGMENT = (PointRow.task_id == bindparam("task_id"), PointRow.segment_idx == bindparam("segment_idx"))
_ALL = select(*_COLUMNS).where(*_SEGMENT)
_SINCE = select(*_COLUMNS).where(*_SEGMENT, PointRow.updated_at >= bindparam("since"))
_STAMPS_SINCE = select(PointRow.id, PointRow.updated_at).where(
    *_SEGMENT, PointRow.updated_at >= bindparam("since")
)
_BY_ID = select(*_COLUMNS).where(*_SEGMENT, PointRow.id.in_(bindparam("ids", expanding=True)))
_PRUNED_OF_JOB = (
    select(PointRow.id)
    .where(
        PointRow.id.in_(bindparam("ids", expanding=True)),
        PointRow.job_id == bindparam("job_id"),
        PointRow.state == "pruned",
    )
    .order_by(PointRow.id)
)


def segment_points_changed(
    s: Session, *, task_id: int, segment_idx: int, since: datetime | None
) -> Sequence[Row[Any]]:
    """The points of one task segment stamped at or after ``since`` (all of them for ``None``):
    id, serial, state, intermediate, loss, updated_at."""
    params: dict[str, Any] = {"task_id": task_id, "segment_idx": segment_idx}
    if since is None:
        return s.execute(_ALL, params).all()
    return s.execute(_SINCE, {**params, "since": since}).all()


def segment_stamps_since(
    s: Session, *, task_id: int, segment_idx: int, since: datetime
) -> Sequence[Row[Any]]:
    """(id, updated_at) of the points of one task segment stamped at or after ``since``: the
    light query that tells which points changed, before their records are read."""
    return s.execute(_STAMPS_SINCE, {"task_id": task_id, "segment_idx": segment_idx, "since": since}).all()


def segment_points_by_id(s: Session, *, task_id: int, segment_idx: int, ids: list[int]) -> Sequence[Row[Any]]:
    """The records (as :func:`segment_points_changed`) of the points ``ids`` of one segment."""
    if not ids:
        return []
    return s.execute(_BY_ID, {"task_id": task_id, "segment_idx": segment_idx, "ids": list(ids)}).all()


def pruned_points_of_job(s: Session, *, job_id: int, point_ids: list[int]) -> list[int]:
    """The points of ``point_ids`` still held by job ``job_id`` that are pruned, in id order."""
    if not point_ids:
        return []
    return list(s.execute(_PRUNED_OF_JOB, {"ids": list(point_ids), "job_id": job_id}).scalars())
