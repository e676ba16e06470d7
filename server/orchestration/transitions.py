"""``set_state``: the only writer of a ``state`` column (tasks, points, jobs).

Routes, the job broker, the reaper and the HPO manager all change states through here, inside
their own transaction; the allowed transitions are declared once in
:mod:`phpo.schemas.states` and an illegal one raises :class:`IllegalTransition` (the API
answers 409 ``illegal_transition``).
"""

from __future__ import annotations

from phpo.schemas.states import IllegalTransition, check_transition

from ..db.engine import utcnow
from ..db.tables import JobRow, PointRow, TaskRow

_KIND = {TaskRow: "task", PointRow: "point", JobRow: "job"}

__all__ = ["IllegalTransition", "set_state"]


def set_state(row: TaskRow | PointRow | JobRow, target: str, *, message: str | None = None) -> None:
    """Move ``row`` to ``target`` or raise :class:`IllegalTransition`; stamps the timestamps
    that belong to the new state. The caller's transaction makes it durable (and, on
    PostgreSQL, holds the row lock when the caller selected it ``FOR UPDATE``)."""
    kind = _KIND.get(type(row)) or row.STATE_KIND  # workflow rows (db/workflow_tables.py) name theirs
    target = str(target)
    check_transition(kind, row.state, target)
    now = utcnow()
    row.state = target
    if hasattr(row, "stamp_state"):  # workflow rows stamp their own timestamps
        row.stamp_state(target, now, message)
    elif isinstance(row, TaskRow):
        row.updated_at = now
        if message is not None:
            row.message = message
        if target in ("finished", "failed", "cancelled"):
            row.finished_at = now
    elif isinstance(row, PointRow):
        row.updated_at = now
        if target == "evaluated":
            row.evaluated_at = now
        if message is not None:
            row.error = message
    else:
        if target == "running":
            row.started_at = now
        if target in ("succeeded", "failed", "lost", "cancelled"):
            row.ended_at = now
            row.lease_expires_at = None
        if message is not None:
            row.error = message
