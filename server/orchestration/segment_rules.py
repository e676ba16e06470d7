"""Rules of the segment machine (``open -> finished``)."""

from __future__ import annotations

from phpo.schemas.states import PointState, SegmentState
from sqlalchemy import select

from ..db.tables import PointRow
from .rules import Proposal, TransitionRule


class CancelReadyPointsOfFinishedSegment(TransitionRule):
    """A segment whose search ended: its ready points are cancelled, saying why."""

    KIND = "segment"
    FROM_STATES = frozenset({SegmentState.open})
    TO_STATES = frozenset({SegmentState.finished})

    def after_transition(self, p: Proposal) -> None:
        seg = p.row
        for point in p.session.execute(
            select(PointRow)
            .where(
                PointRow.task_id == seg.task_id,
                PointRow.segment_idx == seg.idx,
                PointRow.state == PointState.ready,
            )
            .with_for_update()
        ).scalars():
            p.cascade(point, PointState.cancelled, message=f"segment finished: {p.message}")
