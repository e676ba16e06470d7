"""Reads of the MLflow bridge's outbox tables for the API (which run is a point's, a segment's)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.tables import MlflowRunRow, MlflowSegmentRunRow


def task_runs(s: Session, *, task_id: int) -> tuple[list[Any], list[Any]]:
    """(point_id, experiment_id, run_id) of the task's point runs, and (segment_id, experiment_id,
    run_id) of its segments' parent runs."""
    runs = s.execute(
        select(MlflowRunRow.point_id, MlflowRunRow.experiment_id, MlflowRunRow.run_id).where(
            MlflowRunRow.task_id == task_id
        )
    ).all()
    parents = s.execute(
        select(
            MlflowSegmentRunRow.segment_id, MlflowSegmentRunRow.experiment_id, MlflowSegmentRunRow.run_id
        ).where(MlflowSegmentRunRow.task_id == task_id)
    ).all()
    return list(runs), list(parents)
