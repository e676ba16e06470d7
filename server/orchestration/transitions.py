"""``set_state`` and ``set_states``: the only writers of a state (tasks, points, jobs,
segments, MLflow sync rows, workflows and their nodes).

Routes, the job broker, the reaper, the HPO manager and the MLflow bridge all change states
through here, inside their own transaction. The allowed transitions are declared once in
:mod:`phpo.schemas.states`; an illegal one raises :class:`IllegalTransition` (the API answers
409 ``illegal_transition``). The side effects of a transition are rules (:mod:`.policies`).

A caller that read a state without a lock passes ``expect``: when the row has moved on since
(a lost race), the answer is a rejected :class:`Decision` and nothing is written, like Optuna's
``set_trial_state_values`` answering ``False``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from phpo.schemas.states import (
    TERMINAL_JOB_STATES,
    TERMINAL_TASK_STATES,
    IllegalTransition,
    JobState,
    PointState,
    SegmentState,
    check_transition,
)
from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session, object_session

from ..db.engine import utcnow
from ..db.tables import JobRow, MlflowRunRow, MlflowSegmentRunRow, PointRow, SegmentRow, TaskRow
from .policies import rules_for
from .rules import Proposal

_KIND = {
    TaskRow: "task",
    PointRow: "point",
    JobRow: "job",
    SegmentRow: "segment",
    MlflowRunRow: "mlflow_sync",
    MlflowSegmentRunRow: "mlflow_sync",
}

__all__ = ["Decision", "IllegalTransition", "set_state", "set_states", "state_of"]


@dataclass(frozen=True)
class Decision:
    """What became of a proposed state change: ``accepted`` (``state`` is the new state, maybe
    another than proposed when a rule rerouted it) or rejected with the ``reason``."""

    accepted: bool
    state: str
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.accepted


def kind_of(row: Any) -> str:
    return _KIND.get(type(row)) or row.STATE_KIND  # workflow rows (db/workflow_tables.py) name theirs


def state_of(row: Any) -> str:
    if isinstance(row, SegmentRow):
        return SegmentState.finished if row.finished else SegmentState.open
    if isinstance(row, (MlflowRunRow, MlflowSegmentRunRow)):
        return row.synced
    return row.state


def stamps(kind: str, target: str, now: datetime) -> dict[str, Any]:
    """The timestamp columns that change with a move to ``target`` (shared by both writers)."""
    if kind in ("task", "point", "mlflow_sync"):
        out: dict[str, Any] = {"updated_at": now}
        if kind == "task" and target in TERMINAL_TASK_STATES:
            out["finished_at"] = now
        if kind == "point" and target == PointState.evaluated:
            out["evaluated_at"] = now
        return out
    if kind == "job":
        if target == JobState.running:
            return {"started_at": now}
        if target in TERMINAL_JOB_STATES:
            return {"ended_at": now, "lease_expires_at": None}
    return {}


_MESSAGE_COLUMN = {"task": "message", "point": "error", "job": "error", "segment": "finished_reason"}


def _write(kind: str, row: Any, target: str, message: str | None, now: datetime) -> None:
    if isinstance(row, SegmentRow):
        row.finished = target == SegmentState.finished
    elif kind == "mlflow_sync":
        row.synced = target
    else:
        row.state = target
    if hasattr(row, "stamp_state"):  # workflow rows stamp their own timestamps
        row.stamp_state(target, now, message)
        return
    for col, value in stamps(kind, target, now).items():
        setattr(row, col, value)
    if message is not None and kind in _MESSAGE_COLUMN:
        setattr(row, _MESSAGE_COLUMN[kind], message)


def set_state(
    row: Any,
    target: str,
    *,
    message: str | None = None,
    expect: Collection[str] | None = None,
    context: Any = None,
) -> Decision:
    """Move ``row`` to ``target`` (or where its machine's rules send it) or raise
    :class:`IllegalTransition`; stamps the timestamps that belong to the new state and runs the
    rules' side effects. ``expect``: the states the caller saw; a row in none of them now is a
    lost race, answered with a rejected decision (nothing written). The caller's transaction
    makes it durable (and, on PostgreSQL, holds the row lock when it selected it ``FOR UPDATE``)."""
    kind = kind_of(row)
    current = str(state_of(row))
    if expect is not None and current not in {str(e) for e in expect}:
        return Decision(
            False, current, f"the {kind} is {current} now, not {'/'.join(sorted(map(str, expect)))}"
        )
    p = Proposal(
        kind=kind,
        row=row,
        session=object_session(row),
        initial=current,
        proposed=str(target),
        message=message,
        context=context,
        apply=set_state,
    )
    rules = rules_for(kind)
    for rule in rules:
        if rule.applies(p.initial, p.proposed):
            rule.before_transition(p)
    check_transition(kind, current, p.proposed)
    _write(kind, row, p.proposed, p.message, utcnow())
    for rule in rules:
        if rule.applies(p.initial, p.proposed):
            rule.after_transition(p)
    return Decision(True, p.proposed)


_TABLES = {"point": PointRow, "job": JobRow, "task": TaskRow}


def set_states(
    s: Session,
    kind: str,
    target: str,
    *,
    from_state: str,
    ids: Sequence[int] | None = None,
    rows: Sequence[dict[str, Any]] | None = None,
    values: dict[str, Any] | None = None,
    chunk: int = 1000,
) -> None:
    """Set-based ``from_state -> target`` for many rows of one table (the broker's hot paths).

    Either ``ids`` (one ``UPDATE ... WHERE id IN (...) AND state = from_state`` per ``chunk``
    ids, with the same ``values``) or ``rows`` (one executemany ``UPDATE`` keyed by each row's
    ``"pid"``; ``values`` may hold ``bindparam``\\ s of the rows' other keys). Timestamps are
    those :func:`set_state` stamps. Only transitions without rules may be written in bulk: a
    rule's side effects are per row."""
    check_transition(kind, from_state, target)
    if any(rule.applies(str(from_state), str(target)) for rule in rules_for(kind)):
        raise TypeError(f"{kind} {from_state} -> {target} has rules; write it with set_state")
    t = _TABLES[kind].__table__
    vals = {**(values or {}), **stamps(kind, str(target), utcnow()), "state": str(target)}
    if ids is not None:
        for i in range(0, len(ids), chunk):
            s.execute(
                update(t).where(t.c.id.in_(ids[i : i + chunk]), t.c.state == str(from_state)).values(**vals)
            )
    if rows:
        s.execute(
            update(t).where(t.c.id == bindparam("pid"), t.c.state == str(from_state)).values(**vals),
            list(rows),
        )
