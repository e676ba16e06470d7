"""Segments of a task with their point counts and best point.

The summary of every segment is built from two queries over the task's points (counts by
segment and state; the evaluated points' losses), whatever the number of segments, then sorted
in Python and sliced: a page of ``limit`` segments in any order costs O(points of the task).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from phpo.schemas.segments import Segment
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from ..db.tables import PointRow, SegmentRow, TaskRow
from ..errors import InvalidInput
from .common import check_page
from .points import _best_of, directions_of


def _first(loss: Any) -> float | None:
    """The value a loss sorts by: the first objective of a multi-objective loss."""
    if isinstance(loss, list):
        return loss[0] if loss else None
    return loss


# sort key -> the value of a segment it orders by (None: "no value", always last)
SORT_KEYS: dict[str, Callable[[Segment], Any]] = {
    "id": lambda g: g.id,
    "name": lambda g: g.name,
    "best_loss": lambda g: _first(g.best_loss),
    "evaluated": lambda g: g.n_evaluated,
    "failed": lambda g: g.n_failed,
    "pruned": lambda g: g.n_pruned,
    "running": lambda g: g.n_leased,
    "leased": lambda g: g.n_leased,
    "ready": lambda g: g.n_ready,
    "jobs": lambda g: g.n_jobs,
    "finished": lambda g: g.finished,
}


def parse_sort(sort: str | None) -> tuple[str, bool]:
    """``(key, descending)`` from ``key`` / ``-key`` (``+key`` too); an unknown key is a 422."""
    key = sort or "id"
    name = key.lstrip("-+")
    if name not in SORT_KEYS:
        raise InvalidInput(
            f"cannot sort segments by {name!r}; use one of {', '.join(SORT_KEYS)} "
            "(prefix '-' for descending)",
            field="sort",
        )
    return name, key.startswith("-")


def sort_segments(segments: list[Segment], sort: str | None) -> list[Segment]:
    """Sorted by ``sort``, ties by id; segments without a value (no best loss yet) come last in
    both directions."""
    name, desc = parse_sort(sort)
    value = SORT_KEYS[name]
    by_id = sorted(segments, key=lambda g: g.id)
    have = [g for g in by_id if value(g) is not None]
    missing = [g for g in by_id if value(g) is None]
    # sort is stable, reverse=True included, so equal values stay in id order
    return sorted(have, key=value, reverse=desc) + missing


def summarize(s: Session, task: TaskRow) -> list[Segment]:
    """Every segment of the task with its counts and best point, in id order."""
    rows = list(
        s.execute(select(SegmentRow).where(SegmentRow.task_id == task.id).order_by(SegmentRow.idx)).scalars()
    )
    counts: dict[tuple[int, str], int] = {}
    for idx, state, n in s.execute(
        select(PointRow.segment_idx, PointRow.state, func.count())
        .where(PointRow.task_id == task.id)
        .group_by(PointRow.segment_idx, PointRow.state)
    ):
        counts[(idx, state)] = n
    # the evaluated points of all segments at once (only the columns the best point needs)
    evaluated: dict[int, list[Any]] = defaultdict(list)
    cols = (PointRow.id, PointRow.serial, PointRow.segment_idx, PointRow.loss, PointRow.params)
    for p in s.execute(
        select(*cols).where(
            PointRow.task_id == task.id, PointRow.state == "evaluated", PointRow.loss.is_not(None)
        )
    ):
        evaluated[p.segment_idx].append(p)
    directions = directions_of(task.spec)
    out = []
    for r in rows:
        b = _best_of(evaluated.get(r.idx, []), directions, r.idx, r.name)
        out.append(
            Segment(
                id=r.idx,
                task_id=task.id,
                name=r.name,
                files=list(r.files or []),
                finished=r.finished,
                n_ready=counts.get((r.idx, "ready"), 0),
                n_leased=counts.get((r.idx, "leased"), 0),
                n_evaluated=counts.get((r.idx, "evaluated"), 0),
                n_failed=counts.get((r.idx, "failed"), 0),
                n_pruned=counts.get((r.idx, "pruned"), 0),
                n_jobs=r.n_jobs,
                best_loss=b.loss,
                best_params=b.params,
            )
        )
    return out


def list_segments(
    s: Session, task: TaskRow, *, limit: int, offset: int, sort: str | None
) -> tuple[list[Segment], int]:
    check_page(limit, offset)
    parse_sort(sort)  # a bad key is refused before any query
    segments = summarize(s, task)
    return sort_segments(segments, sort)[offset : offset + limit], len(segments)


# --- used by the HPO manager


def open_segments(
    s: Session, *, task_ids: list[int], only: dict[int, set[int]] | None = None
) -> list[SegmentRow]:
    """The unfinished segments of the tasks ``task_ids``, by task and index; with ``only`` (task
    id -> segment indexes) just those segments of each task."""
    where = (
        SegmentRow.task_id.in_(task_ids)
        if only is None
        else or_(*(and_(SegmentRow.task_id == t, SegmentRow.idx.in_(sorted(only[t]))) for t in task_ids))
    )
    return list(
        s.execute(
            select(SegmentRow)
            .where(where, SegmentRow.finished.is_(False))
            .order_by(SegmentRow.task_id, SegmentRow.idx)
        ).scalars()
    )


def unfinished_segments(s: Session, *, task_id: int) -> list[SegmentRow]:
    """The unfinished segments of one task (in no particular order)."""
    return list(
        s.execute(
            select(SegmentRow).where(SegmentRow.task_id == task_id, SegmentRow.finished.is_(False))
        ).scalars()
    )


def locked_segment(s: Session, *, task_id: int, idx: int) -> SegmentRow:
    """One segment, locked ``FOR UPDATE`` (after its task: see ``tasks.locked_task``)."""
    return s.execute(
        select(SegmentRow).where(SegmentRow.task_id == task_id, SegmentRow.idx == idx).with_for_update()
    ).scalar_one()


def segments_of_task(s: Session, *, task_id: int) -> list[SegmentRow]:
    """Every segment of one task (in no particular order)."""
    return list(s.execute(select(SegmentRow).where(SegmentRow.task_id == task_id)).scalars())
