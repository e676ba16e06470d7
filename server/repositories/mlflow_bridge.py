"""The SQL of the MLflow bridge (services/mlflow_bridge.py and services/mlflow_sync/): what is
still to send to MLflow (points without a run, runs whose status or result lags their point,
artifacts and models not handled yet), read from phpo's tables and the bridge's outbox tables
(``mlflow_runs``, ``mlflow_segment_runs``, ``mlflow_artifacts``, ``mlflow_models``)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from phpo.schemas.states import TERMINAL_POINT_STATES, TERMINAL_TASK_STATES
from sqlalchemy import Row, and_, exists, or_, select
from sqlalchemy.orm import Session, aliased

from ..db.tables import (
    ArtifactRow,
    JobRow,
    MlflowArtifactRow,
    MlflowModelRow,
    MlflowRunRow,
    MlflowSegmentRunRow,
    PointRow,
    SegmentRow,
    TaskRow,
)

ENDED = tuple(sorted(TERMINAL_POINT_STATES))
TASK_ENDED = tuple(sorted(TERMINAL_TASK_STATES))


def ended_segment() -> Any:
    """SQL: the ``SegmentRow`` has ended (it is finished or its task has ended, and
    none of its points waits for or runs in a job)."""
    live = aliased(PointRow)
    return and_(
        or_(SegmentRow.finished.is_(True), TaskRow.state.in_(TASK_ENDED)),
        ~exists().where(
            live.task_id == SegmentRow.task_id,
            live.segment_idx == SegmentRow.idx,
            live.state.in_(("ready", "leased")),
        ),
    )


# ---------------------------------------------------------------- the job path


def run_ids(s: Session, *, point_ids: list[int]) -> dict[int, str]:
    """point id -> MLflow run id (a read of the outbox table, no MLflow call)."""
    if not point_ids:
        return {}
    return dict(
        s.execute(
            select(MlflowRunRow.point_id, MlflowRunRow.run_id).where(
                MlflowRunRow.point_id.in_(point_ids), MlflowRunRow.run_id != ""
            )
        ).all()
    )


# ---------------------------------------------------------------- runs (mlflow_sync/runs.py)


def points_without_run(s: Session, *, limit: int) -> list[Row]:
    """(point id, task_id, segment_idx, serial, params, segment name, state, segment id) of the
    first ``limit`` points that have no ``mlflow_runs`` row, in id order."""
    return s.execute(
        select(
            PointRow.id,
            PointRow.task_id,
            PointRow.segment_idx,
            PointRow.serial,
            PointRow.params,
            SegmentRow.name,
            PointRow.state,
            SegmentRow.id,
        )
        .outerjoin(
            SegmentRow, (SegmentRow.task_id == PointRow.task_id) & (SegmentRow.idx == PointRow.segment_idx)
        )
        .outerjoin(MlflowRunRow, MlflowRunRow.point_id == PointRow.id)
        .where(MlflowRunRow.point_id.is_(None))
        .order_by(PointRow.id)
        .limit(limit)
    ).all()


def task_specs(s: Session, *, task_ids: Collection[int]) -> dict[int, Any]:
    """task id -> its spec (no statement for no task)."""
    if not task_ids:
        return {}
    return dict(s.execute(select(TaskRow.id, TaskRow.spec).where(TaskRow.id.in_(task_ids))).all())


def segment_run_id(s: Session, *, segment_id: int) -> str | None:
    """The recorded parent run of a segment."""
    return s.execute(
        select(MlflowSegmentRunRow.run_id).where(MlflowSegmentRunRow.segment_id == segment_id)
    ).scalar_one_or_none()


def runs_to_restatus(s: Session, *, synced: str, point_state: str, limit: int) -> list[Row]:
    """(point id, run id, synced) of runs ``synced`` whose point is ``point_state`` (led by the
    index on ``synced``)."""
    return s.execute(
        select(MlflowRunRow.point_id, MlflowRunRow.run_id, MlflowRunRow.synced)
        .join(PointRow, PointRow.id == MlflowRunRow.point_id)
        .where(MlflowRunRow.synced == synced, PointRow.state == point_state)
        .order_by(MlflowRunRow.point_id)
        .limit(limit)
    ).all()


def running_points_intermediate(s: Session, *, after: int, limit: int) -> list[Row]:
    """(point id, run id, intermediate) of open runs of leased points with an id above ``after``."""
    return s.execute(
        select(MlflowRunRow.point_id, MlflowRunRow.run_id, PointRow.intermediate)
        .join(PointRow, PointRow.id == MlflowRunRow.point_id)
        .where(MlflowRunRow.synced == "open", PointRow.state == "leased", MlflowRunRow.point_id > after)
        .order_by(MlflowRunRow.point_id)
        .limit(limit)
    ).all()


def runs_to_finish(s: Session, *, limit: int) -> list[Row]:
    """(point id, run id, state, loss, metrics, attempts, site, error, agent, intermediate) of
    open or queued runs whose point has ended."""
    return s.execute(
        select(
            MlflowRunRow.point_id,
            MlflowRunRow.run_id,
            PointRow.state,
            PointRow.loss,
            PointRow.metrics,
            PointRow.attempts,
            PointRow.site,
            PointRow.error,
            JobRow.agent,
            PointRow.intermediate,
        )
        .join(PointRow, PointRow.id == MlflowRunRow.point_id)
        .outerjoin(JobRow, JobRow.id == PointRow.job_id)
        .where(MlflowRunRow.synced.in_(("open", "queued")), PointRow.state.in_(ENDED))
        .order_by(MlflowRunRow.point_id)
        .limit(limit)
    ).all()


def parents_to_finish(s: Session, *, limit: int) -> list[Row]:
    """(segment id, run id, finished, task state) of open parent runs whose segment has ended."""
    return s.execute(
        select(MlflowSegmentRunRow.segment_id, MlflowSegmentRunRow.run_id, SegmentRow.finished, TaskRow.state)
        .join(SegmentRow, SegmentRow.id == MlflowSegmentRunRow.segment_id)
        .join(TaskRow, TaskRow.id == SegmentRow.task_id)
        .where(MlflowSegmentRunRow.synced == "open", ended_segment())
        .limit(limit)
    ).all()


# ---------------------------------------------------------------- artifacts (mlflow_sync/artifacts.py)


def unsent_logs_and_metrics(s: Session, *, above: int, limit: int) -> list[Row]:
    """(artifact id, kind, name, size, path, task_id, point_id, run id, experiment id) of log and
    metrics artifacts of points with an id above ``above`` not handled yet, in id order (run id
    ``None`` while the point has no run)."""
    return s.execute(
        select(
            ArtifactRow.id,
            ArtifactRow.kind,
            ArtifactRow.name,
            ArtifactRow.size,
            ArtifactRow.path,
            ArtifactRow.task_id,
            ArtifactRow.point_id,
            MlflowRunRow.run_id,
            MlflowRunRow.experiment_id,
        )
        .outerjoin(MlflowRunRow, MlflowRunRow.point_id == ArtifactRow.point_id)
        .outerjoin(MlflowArtifactRow, MlflowArtifactRow.artifact_id == ArtifactRow.id)
        .where(
            ArtifactRow.id > above,
            ArtifactRow.kind.in_(("log", "metrics")),
            ArtifactRow.point_id.is_not(None),
            MlflowArtifactRow.artifact_id.is_(None),
        )
        .order_by(ArtifactRow.id)
        .limit(limit)
    ).all()


def segments_with_unsent_checkpoints(s: Session, *, limit: int) -> list[Row]:
    """(task_id, segment_idx) of ended segments with an ended point whose checkpoint is not handled yet."""
    return s.execute(
        select(PointRow.task_id, PointRow.segment_idx)
        .distinct()
        .join(TaskRow, TaskRow.id == PointRow.task_id)
        .join(ArtifactRow, ArtifactRow.id == PointRow.checkpoint_artifact_id)
        .join(SegmentRow, (SegmentRow.task_id == PointRow.task_id) & (SegmentRow.idx == PointRow.segment_idx))
        .outerjoin(MlflowArtifactRow, MlflowArtifactRow.artifact_id == PointRow.checkpoint_artifact_id)
        .where(PointRow.state.in_(ENDED), MlflowArtifactRow.artifact_id.is_(None), ended_segment())
        .limit(limit)
    ).all()


def unsent_checkpoints(s: Session, *, task_id: int, segment_idx: int) -> list[Row]:
    """(point id, artifact id, name, size, path, run id, experiment id) of the segment's ended
    points' checkpoints not handled yet."""
    return s.execute(
        select(
            PointRow.id,
            ArtifactRow.id,
            ArtifactRow.name,
            ArtifactRow.size,
            ArtifactRow.path,
            MlflowRunRow.run_id,
            MlflowRunRow.experiment_id,
        )
        .join(ArtifactRow, ArtifactRow.id == PointRow.checkpoint_artifact_id)
        .outerjoin(MlflowRunRow, MlflowRunRow.point_id == PointRow.id)
        .outerjoin(MlflowArtifactRow, MlflowArtifactRow.artifact_id == ArtifactRow.id)
        .where(
            PointRow.task_id == task_id,
            PointRow.segment_idx == segment_idx,
            PointRow.state.in_(ENDED),
            MlflowArtifactRow.artifact_id.is_(None),
        )
    ).all()


# ---------------------------------------------------------------- models (mlflow_sync/registry.py)


def segments_without_model(s: Session, *, limit: int) -> list[Row]:
    """(segment id, task_id, idx, name, task spec, task owner) of ended segments with no
    ``mlflow_models`` row, in id order."""
    return s.execute(
        select(
            SegmentRow.id, SegmentRow.task_id, SegmentRow.idx, SegmentRow.name, TaskRow.spec, TaskRow.owner
        )
        .join(TaskRow, TaskRow.id == SegmentRow.task_id)
        .outerjoin(MlflowModelRow, MlflowModelRow.segment_id == SegmentRow.id)
        .where(MlflowModelRow.segment_id.is_(None), ended_segment())
        .order_by(SegmentRow.id)
        .limit(limit)
    ).all()


def point_run(s: Session, *, point_id: int) -> Row | None:
    """(run id, synced) of the point's run, ``None`` while it has none."""
    return s.execute(
        select(MlflowRunRow.run_id, MlflowRunRow.synced).where(MlflowRunRow.point_id == point_id)
    ).one_or_none()


def unsent_metrics_artifact(s: Session, *, point_id: int) -> Row | None:
    """A metrics artifact of the point not handled yet (its ``mlruns`` may hold the model)."""
    return s.execute(
        select(ArtifactRow.id)
        .outerjoin(MlflowArtifactRow, MlflowArtifactRow.artifact_id == ArtifactRow.id)
        .where(
            ArtifactRow.point_id == point_id,
            ArtifactRow.kind == "metrics",
            MlflowArtifactRow.artifact_id.is_(None),
        )
        .limit(1)
    ).first()
