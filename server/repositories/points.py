"""Points: conversion to :class:`phpo.schemas.Point`, listing, best point and Pareto front."""

from __future__ import annotations

from typing import Any

from phpo.schemas.points import BestPoint, IntermediateValue, Point
from phpo.schemas.states import PointState
from sqlalchemy import and_, func, insert, or_, select
from sqlalchemy.orm import Session

from ..db.engine import aware
from ..db.tables import PointRow, SegmentRow, TaskRow
from .common import check_page, count, order_by


# the row counts attempts *spent* (failed or lost, what maxAttempts limits); a user counts the
# runs: an evaluated point took its failed attempts plus the one that worked, a leased one is on
# its next
_ATTEMPT_IN_HAND = ("evaluated", "leased")


def point_to_schema(row: PointRow, segment_name: str = "") -> Point:
    return Point(
        id=row.id,
        task_id=row.task_id,
        segment_id=row.segment_idx,
        segment=segment_name,
        serial=row.serial,
        params=row.params,
        state=row.state,
        loss=row.loss,
        metrics=row.metrics,
        attempts=row.attempts + (row.state in _ATTEMPT_IN_HAND),
        error=row.error,
        intermediate=[IntermediateValue(**x) for x in (row.intermediate or [])],
        created_at=aware(row.created_at),
        evaluated_at=aware(row.evaluated_at),
        site=row.site,
    )


def segment_names(s: Session, task_id: int) -> dict[int, str]:
    rows = s.execute(select(SegmentRow.idx, SegmentRow.name).where(SegmentRow.task_id == task_id)).all()
    return {i: n for i, n in rows}


def list_points(
    s: Session,
    task_id: int,
    *,
    segment: int | None,
    state: list[str] | None,
    limit: int,
    offset: int,
    sort: str | None,
) -> tuple[list[Point], int]:
    check_page(limit, offset)
    stmt = select(PointRow).where(PointRow.task_id == task_id)
    if segment is not None:
        stmt = stmt.where(PointRow.segment_idx == segment)
    if state:
        stmt = stmt.where(PointRow.state.in_(state))
    total = count(s, stmt)
    cols = {
        "id": PointRow.id,
        "serial": PointRow.serial,
        "loss": PointRow.loss_value,
        "created_at": PointRow.created_at,
        "evaluated_at": PointRow.evaluated_at,
        "_tiebreak": (PointRow.id,),
    }
    stmt = order_by(stmt, sort, cols, "id").limit(limit).offset(offset)
    names = segment_names(s, task_id)
    return [point_to_schema(r, names.get(r.segment_idx, "")) for r in s.execute(stmt).scalars()], total


def directions_of(spec: dict[str, Any]) -> list[str]:
    return list(spec.get("directions") or ["minimize"])


def _key(loss: Any, directions: list[str]) -> list[float]:
    """The loss as a vector to minimize (maximized objectives negated)."""
    vals = loss if isinstance(loss, list) else [loss]
    return [(-v if d == "maximize" else v) for v, d in zip(vals, directions)]


def pareto_front(items: list[tuple[Any, Any]], directions: list[str]) -> list[Any]:
    """Items (obj, loss) not dominated by any other, sorted by the first objective."""
    keyed = [(obj, _key(loss, directions)) for obj, loss in items]
    front = []
    for obj, k in keyed:
        dominated = any(
            all(a <= b for a, b in zip(k2, k)) and any(a < b for a, b in zip(k2, k)) for _, k2 in keyed
        )
        if not dominated:
            front.append((obj, k))
    front.sort(key=lambda t: t[1])
    return [obj for obj, _ in front]


def _best_of(rows: list[PointRow], directions: list[str], seg_idx: int, seg_name: str) -> BestPoint:
    if not rows:
        return BestPoint(segment_id=seg_idx, segment=seg_name)

    def bp(r: PointRow) -> BestPoint:
        return BestPoint(
            segment_id=seg_idx, segment=seg_name, point_id=r.id, serial=r.serial, loss=r.loss, params=r.params
        )

    if len(directions) > 1:
        front = pareto_front([(r, r.loss) for r in rows if isinstance(r.loss, list)], directions)
        if not front:
            return BestPoint(segment_id=seg_idx, segment=seg_name)
        first = bp(front[0])
        first.pareto = [bp(r) for r in front]
        return first
    best = min(rows, key=lambda r: (_key(r.loss, directions), r.serial))
    return bp(best)


def best_points(s: Session, task: TaskRow, segment: int | None = None) -> list[BestPoint]:
    directions = directions_of(task.spec)
    segs = (
        s.execute(select(SegmentRow).where(SegmentRow.task_id == task.id).order_by(SegmentRow.idx))
        .scalars()
        .all()
    )
    out = []
    for seg in segs:
        if segment is not None and seg.idx != segment:
            continue
        rows = list(
            s.execute(
                select(PointRow).where(
                    PointRow.task_id == task.id,
                    PointRow.segment_idx == seg.idx,
                    PointRow.state == "evaluated",
                    PointRow.loss.is_not(None),
                )
            ).scalars()
        )
        out.append(_best_of(rows, directions, seg.idx, seg.name))
    return out


def best_point_id(s: Session, task: TaskRow, segment: int) -> int | None:
    """The id of a segment's best point by the one rule (:func:`_best_of`) that ``GET
    /tasks/{id}/best``, ``phpo best`` and the MLflow bridge's ``phpo.best_in_segment`` share:
    lowest loss (highest when maximized); with several objectives the first point of the Pareto
    front. ``None`` while nothing is evaluated."""
    got = best_points(s, task, segment)
    return got[0].point_id if got else None


def best_loss_by_task(s: Session, tasks: list[TaskRow]) -> dict[int, Any]:
    """Best single-objective loss of each task (None for multi-objective tasks)."""
    from sqlalchemy import func

    out: dict[int, Any] = {}
    single = [t for t in tasks if len(directions_of(t.spec)) == 1]
    for direction in ("minimize", "maximize"):
        ids = [t.id for t in single if directions_of(t.spec)[0] == direction]
        if not ids:
            continue
        agg = func.min(PointRow.loss_value) if direction == "minimize" else func.max(PointRow.loss_value)
        for tid, v in s.execute(
            select(PointRow.task_id, agg)
            .where(PointRow.task_id.in_(ids), PointRow.state == "evaluated")
            .group_by(PointRow.task_id)
        ):
            out[tid] = v
    return out


# --- used by the HPO manager

_IN_FLIGHT = (PointState.ready, PointState.leased)
_ENDED = (PointState.evaluated, PointState.failed, PointState.cancelled, PointState.pruned)


def in_flight_counts(
    s: Session, *, task_ids: list[int], only: dict[int, set[int]] | None = None
) -> dict[tuple[int, int, str], int]:
    """(task id, segment index, state) -> how many points are ready or leased, over the tasks
    ``task_ids`` (with ``only``: task id -> segment indexes, just those segments)."""
    where = (
        PointRow.task_id.in_(task_ids)
        if only is None
        else or_(*(and_(PointRow.task_id == t, PointRow.segment_idx.in_(sorted(only[t]))) for t in task_ids))
    )
    counts: dict[tuple[int, int, str], int] = {}
    for tid, idx, state, n in s.execute(
        select(PointRow.task_id, PointRow.segment_idx, PointRow.state, func.count())
        .where(where, PointRow.state.in_(_IN_FLIGHT))
        .group_by(PointRow.task_id, PointRow.segment_idx, PointRow.state)
    ):
        counts[(tid, idx, state)] = n
    return counts


def state_counts(s: Session, *, task_id: int, segment_idx: int | None = None) -> dict[str, int]:
    """state -> how many points of the task (of one segment when ``segment_idx`` is given)."""
    stmt = select(PointRow.state, func.count()).where(PointRow.task_id == task_id)
    if segment_idx is not None:
        stmt = stmt.where(PointRow.segment_idx == segment_idx)
    return dict(s.execute(stmt.group_by(PointRow.state)).all())


def counts_by_segment(s: Session, *, task_id: int) -> dict[tuple[int, str], int]:
    """(segment index, state) -> how many points of the task."""
    return {
        (idx, state): n
        for idx, state, n in s.execute(
            select(PointRow.segment_idx, PointRow.state, func.count())
            .where(PointRow.task_id == task_id)
            .group_by(PointRow.segment_idx, PointRow.state)
        )
    }


def last_failed_point(s: Session, *, task_id: int) -> tuple[int, str | None] | None:
    """(id, error) of the task's point that failed last, or None."""
    row = s.execute(
        select(PointRow.id, PointRow.error)
        .where(PointRow.task_id == task_id, PointRow.state == PointState.failed)
        .order_by(PointRow.updated_at.desc(), PointRow.id.desc())
        .limit(1)
    ).first()
    return None if row is None else (row[0], row[1])


def segment_points(s: Session, *, task_id: int, segment_idx: int) -> list[PointRow]:
    """Every point of one segment, by serial."""
    return list(
        s.execute(
            select(PointRow)
            .where(PointRow.task_id == task_id, PointRow.segment_idx == segment_idx)
            .order_by(PointRow.serial)
        ).scalars()
    )


def task_points(s: Session, *, task_id: int) -> list[PointRow]:
    """Every point of a task, by segment and serial."""
    return list(
        s.execute(
            select(PointRow)
            .where(PointRow.task_id == task_id)
            .order_by(PointRow.segment_idx, PointRow.serial)
        ).scalars()
    )


def ended_points(s: Session, *, ids: list[int], chunk: int = 500) -> list[PointRow]:
    """The points among ``ids`` that have ended (evaluated, failed, cancelled or pruned), read
    ``chunk`` ids at a time."""
    rows: list[PointRow] = []
    for i in range(0, len(ids), chunk):
        rows += list(
            s.execute(
                select(PointRow).where(PointRow.id.in_(ids[i : i + chunk]), PointRow.state.in_(_ENDED))
            ).scalars()
        )
    return rows


def pending_points(s: Session, *, task_id: int, segment_idx: int) -> list[tuple[int, Any]]:
    """(id, params) of the segment's ready and leased points."""
    return [
        (pid, params)
        for pid, params in s.execute(
            select(PointRow.id, PointRow.params).where(
                PointRow.task_id == task_id,
                PointRow.segment_idx == segment_idx,
                PointRow.state.in_(_IN_FLIGHT),
            )
        )
    ]


def _ready_row(task_id: int, segment_idx: int, serial: int, params: Any, now: Any) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "segment_idx": segment_idx,
        "serial": serial,
        "params": params,
        "state": "ready",
        "attempts": 0,
        "intermediate": [],
        "created_at": now,
        "updated_at": now,
    }


def insert_ready_points(
    s: Session, *, task_id: int, segment_idx: int, first_serial: int, params: list[Any], now: Any
) -> list[int]:
    """New ready points with serials from ``first_serial``: one multi-row INSERT ... RETURNING,
    the ids in the order of ``params``."""
    if not params:
        return []
    rows = [_ready_row(task_id, segment_idx, first_serial + i, p, now) for i, p in enumerate(params)]
    return list(s.scalars(insert(PointRow).returning(PointRow.id, sort_by_parameter_order=True), rows))


def add_ready_points(
    s: Session, *, task_id: int, segment_idx: int, first_serial: int, params: list[Any], now: Any
) -> None:
    """New ready points with serials from ``first_serial``, added to the session (flushed with
    the rest of the caller's transaction)."""
    for i, p in enumerate(params):
        s.add(PointRow(**_ready_row(task_id, segment_idx, first_serial + i, p, now)))
