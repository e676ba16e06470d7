"""The SQL of receiving and handing out artifacts (services/uploads.py): a task's specs
artifacts, its owner, the jobs an agent token holds, a point's replaced checkpoint."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy import Row, select, text
from sqlalchemy.orm import Session

from ..db.tables import ArtifactRow, JobRow, TaskRow


def specs_artifact_id(s: Session, *, task_id: int, name: str) -> int | None:
    """The id of the task's specs artifact ``name``, if it has one."""
    return s.execute(
        select(ArtifactRow.id).where(
            ArtifactRow.task_id == task_id, ArtifactRow.kind == "specs", ArtifactRow.name == name
        )
    ).scalar()


def specs_artifacts(s: Session, *, task_id: int) -> Iterable[ArtifactRow]:
    """The task's specs artifacts, in id order."""
    return s.execute(
        select(ArtifactRow)
        .where(ArtifactRow.task_id == task_id, ArtifactRow.kind == "specs")
        .order_by(ArtifactRow.id)
    ).scalars()


def lock_task_specs(s: Session, *, key: int) -> None:
    """PostgreSQL: the transaction's advisory lock ``key`` (one per task's specs uploads; not the
    task's row, so it cannot deadlock with the broker's row locks)."""
    s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def job_for_update(s: Session, *, job_id: int) -> JobRow:
    """The job (checked before the upload, so it exists), its row locked."""
    return s.execute(select(JobRow).where(JobRow.id == job_id).with_for_update()).scalar_one()


def task_owner(s: Session, *, task_id: int) -> str:
    return s.execute(select(TaskRow.owner).where(TaskRow.id == task_id)).scalar_one()


def task_owner_or_none(s: Session, *, task_id: int) -> str | None:
    return s.execute(select(TaskRow.owner).where(TaskRow.id == task_id)).scalar_one_or_none()


def running_jobs_of_holder(s: Session, *, holder: str) -> list[Row]:
    """(id, task_id, point_ids) of the running jobs leased with the token ``holder``."""
    return s.execute(
        select(JobRow.id, JobRow.task_id, JobRow.point_ids).where(
            JobRow.holder == holder, JobRow.state == "running"
        )
    ).all()


def task_specs_of(s: Session, *, task_ids: Collection[int]) -> Iterable[dict[str, Any] | None]:
    """The specs (``TaskRow.spec``) of the tasks ``task_ids``."""
    return s.execute(select(TaskRow.spec).where(TaskRow.id.in_(task_ids))).scalars()


def drop_artifact(s: Session, *, artifact_id: int) -> str | None:
    """Delete the artifact's row; the path of its file (for the caller to remove once the
    transaction is committed), ``None`` when there was no such row."""
    old = s.get(ArtifactRow, artifact_id)
    if old is None:
        return None
    s.delete(old)
    return old.path
