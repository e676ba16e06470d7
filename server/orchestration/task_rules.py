"""Rules of the task machine."""

from __future__ import annotations

from phpo.schemas.states import TASK_TRANSITIONS, TERMINAL_TASK_STATES, JobState, PointState, TaskState
from sqlalchemy import select

from ..db.tables import JobRow, PointRow
from .rules import Proposal, TransitionRule


class CancelOpenWork(TransitionRule):
    """A task that ended (finished, failed, cancelled): its ready points and queued steering
    jobs are cancelled; leased points end with their jobs (the agent learns it from its next
    heartbeat)."""

    KIND = "task"
    FROM_STATES = frozenset(TASK_TRANSITIONS) - TERMINAL_TASK_STATES
    TO_STATES = TERMINAL_TASK_STATES

    def after_transition(self, p: Proposal) -> None:
        s, task_id = p.session, p.row.id
        reason = "its task ended" if p.proposed == TaskState.cancelled else f"the task {p.proposed}"
        for point in s.execute(
            select(PointRow)
            .where(PointRow.task_id == task_id, PointRow.state == PointState.ready)
            .with_for_update()
        ).scalars():
            p.cascade(point, PointState.cancelled, message=reason)
        for job in s.execute(
            select(JobRow).where(JobRow.task_id == task_id, JobRow.state == JobState.queued).with_for_update()
        ).scalars():
            p.cascade(job, JobState.cancelled, message=reason)
