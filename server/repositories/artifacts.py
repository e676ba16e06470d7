"""Artifact metadata rows (the bytes live in the artifact store)."""

from __future__ import annotations

from phpo.schemas.artifacts import Artifact
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.engine import aware
from ..db.tables import ArtifactRow, PointRow
from ..errors import NotFound
from .common import check_page, count


def artifact_to_schema(r: ArtifactRow) -> Artifact:
    return Artifact(
        id=r.id,
        kind=r.kind,
        name=r.name,
        size=r.size,
        sha256=r.sha256,
        task_id=r.task_id,
        point_id=r.point_id,
        job_id=r.job_id,
        created_at=aware(r.created_at),
    )


def list_artifacts(
    s: Session, task_id: int, *, kind: str | None, point_id: int | None, limit: int, offset: int
) -> tuple[list[Artifact], int]:
    check_page(limit, offset)
    stmt = select(ArtifactRow).where(ArtifactRow.task_id == task_id)
    if kind:
        stmt = stmt.where(ArtifactRow.kind == kind)
    if point_id is not None:
        # a point of another task (or none) is a 404 naming it, not an empty list that reads "no logs yet"
        if (
            s.execute(select(PointRow.id).where(PointRow.id == point_id, PointRow.task_id == task_id)).first()
            is None
        ):
            raise NotFound(f"point {point_id} is not a point of task {task_id}", field="point_id")
        stmt = stmt.where(ArtifactRow.point_id == point_id)
    total = count(s, stmt)
    rows = s.execute(stmt.order_by(ArtifactRow.id).limit(limit).offset(offset)).scalars()
    return [artifact_to_schema(r) for r in rows], total
