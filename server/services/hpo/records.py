"""What a steering iteration leaves in the database, whichever optimizer ran it: its points (serials
continue the segment's, never beyond ``maxPoints``), its ``steering_iterations`` row, and the
task's count of failed iterations in a row (the task fails after ``steering_retries``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from phpo.schemas.states import TaskState
from sqlalchemy.orm import Session

from ...db.engine import Database, utcnow
from ...db.tables import SteeringIterationRow
from ...orchestration.transitions import set_state
from ...repositories import iterations as iteration_repo
from ...repositories import points as point_repo
from ...repositories import segments as segment_repo
from ...repositories import tasks as task_repo
from ...settings import Settings
from .specs import TaskSpecs

log = logging.getLogger(__name__)

EXHAUSTED = "the optimizer has no more points (search space exhausted)"
STEERING_EMPTY = "the steering returned no points"


class IterationRecords:
    def __init__(self, db: Database, settings: Settings, specs: TaskSpecs):
        self.db = db
        self.settings = settings
        self.specs = specs

    def store_points(
        self,
        task_id: int,
        seg_idx: int,
        points: Sequence[dict[str, Any]],
        *,
        requested: int,
        started: datetime,
        duration: float,
        optimizer: str,
        exhausted: bool,
    ) -> list[int]:
        """Insert new points (serials continue the segment's), record the iteration, and reset
        the task's count of failed iterations, in one transaction; the new points' ids."""
        with self.db.write() as s:
            task = task_repo.locked_task(s, task_id=task_id, with_spec=False)
            seg = segment_repo.locked_segment(s, task_id=task_id, idx=seg_idx)
            spec = self.specs.get(s, task_id)
            ids: list[int] = []
            if task.state == TaskState.running and not seg.finished:
                room = max(0, spec.maxPoints - seg.n_generated)
                params = list(points)[:room]
                first_serial = seg.n_generated
                seg.n_generated += len(params)
                if exhausted and not seg.finished_reason:
                    seg.finished_reason = EXHAUSTED if optimizer != "external" else STEERING_EMPTY
                # one multi-row INSERT ... RETURNING, ids in the order of the points
                ids = point_repo.insert_ready_points(
                    s,
                    task_id=task_id,
                    segment_idx=seg_idx,
                    first_serial=first_serial,
                    params=params,
                    now=utcnow(),
                )
                task.failed_iterations = 0
            iteration_repo.add_iteration(
                s,
                task_id=task_id,
                segment_idx=seg_idx,
                optimizer=optimizer,
                requested=requested,
                produced=len(ids),
                started_at=started,
                duration_s=duration,
            )
            return ids

    def record_failure(
        self,
        task_id: int,
        seg_idx: int | None,
        requested: int,
        started: datetime,
        duration: float,
        error: str,
        *,
        s: Session | None = None,
        iteration: SteeringIterationRow | None = None,
    ) -> None:
        """A failed iteration: recorded (or ``iteration``, already recorded, gets the error), and
        the task fails once ``steering_retries`` iterations failed in a row; in the caller's
        transaction when ``s`` is given."""
        if s is None:
            with self.db.write() as s2:
                return self.record_failure(
                    task_id, seg_idx, requested, started, duration, error, s=s2, iteration=iteration
                )
        task = task_repo.locked_task(s, task_id=task_id)
        if iteration is None:
            iteration_repo.add_iteration(
                s,
                task_id=task_id,
                segment_idx=seg_idx,
                optimizer=task.optimizer,
                requested=requested,
                started_at=started,
                duration_s=duration,
                error=error[:100_000],
            )
        else:
            iteration.error = error[:100_000]
            iteration.duration_s = duration
        task.failed_iterations += 1
        limit = self.settings.steering_retries
        if task.state == TaskState.running and task.failed_iterations >= limit:
            set_state(
                task,
                TaskState.failed,
                message=f"steering failed {task.failed_iterations} times in a row; "
                f"last error: {error[:20_000]}",
            )
            log.warning("task %d failed: steering failed %d times", task_id, task.failed_iterations)
        return None
