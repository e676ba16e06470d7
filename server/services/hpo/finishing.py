"""Ending segments and tasks: a segment whose plan says it is done is finished (its ready points
are cancelled by ``segment_rules.CancelReadyPointsOfFinishedSegment``), and a task whose
segments have all finished ends: ``finished``, or ``failed`` when not one point was evaluated."""

from __future__ import annotations

import logging

from phpo.schemas.states import SegmentState, TaskState
from sqlalchemy.orm import Session

from ...db.engine import Database
from ...orchestration.transitions import set_state
from ...repositories import points as point_repo
from ...repositories import segments as segment_repo
from ...repositories import tasks as task_repo
from .planning import SegmentPlan, plan_segment
from .specs import TaskSpecs

log = logging.getLogger(__name__)


class SegmentFinisher:
    def __init__(self, db: Database, specs: TaskSpecs):
        self.db = db
        self.specs = specs

    def finish(self, finishes: list[SegmentPlan], done_tasks: list[int]) -> None:
        """Lock order everywhere: task, then segment, then points (PostgreSQL deadlocks otherwise);
        task rows are locked ``FOR NO KEY UPDATE`` so foreign-key checks of inserts never wait."""
        by_task: dict[int, list[SegmentPlan]] = {tid: [] for tid in done_tasks}
        for plan in finishes:
            by_task.setdefault(plan.task_id, []).append(plan)
        with self.db.write() as s:
            for tid in sorted(by_task):
                task = task_repo.locked_task(s, task_id=tid, with_spec=False)
                if task.state != TaskState.running:
                    continue
                spec = self.specs.get(s, tid)
                for plan in by_task[tid]:
                    seg = segment_repo.locked_segment(s, task_id=tid, idx=plan.seg_idx)
                    if seg.finished:
                        continue
                    fresh = point_repo.state_counts(s, task_id=tid, segment_idx=plan.seg_idx)
                    fresh["done"] = fresh.get("evaluated", 0) + fresh.get("failed", 0)
                    if plan_segment(spec, seg, lambda st, f=fresh: f.get(st, 0)).finish is None:
                        continue  # the snapshot was stale: something is in flight again
                    # its ready points are cancelled by segment_rules.CancelReadyPointsOfFinishedSegment
                    set_state(seg, SegmentState.finished, message=plan.finish)
                s.flush()
                segs = segment_repo.segments_of_task(s, task_id=tid)
                if all(sg.finished for sg in segs):
                    reasons = "; ".join(sorted({sg.finished_reason or "done" for sg in segs}))
                    failure = nothing_evaluated(s, tid, reasons)
                    set_state(
                        task, TaskState.failed if failure else TaskState.finished, message=failure or reasons
                    )
                    log.info("task %d %s: %s", tid, task.state, task.message)


def nothing_evaluated(s: Session, task_id: int, reasons: str) -> str | None:
    """The failure message of a task that ends without a single evaluated point (every point
    failed, the steering answered ``[]`` at once, the job budget went on lost jobs): such a
    task has no result and must never look ``finished``. ``None`` when a point has a loss."""
    counts = point_repo.state_counts(s, task_id=task_id)
    if counts.get("evaluated", 0):
        return None
    failed = counts.get("failed", 0)
    if failed:
        last = point_repo.last_failed_point(s, task_id=task_id)
        pid, error = last if last is not None else (None, None)
        what = f"all {failed} point(s) failed; last error (point {pid}): {(error or '(none)')[:4000]}"
    elif sum(counts.values()) == 0:
        what = "no point was generated"
    else:
        what = f"{sum(counts.values())} point(s) generated, none evaluated"
    return f"no point was evaluated: {what} (the search ended because {reasons})"
