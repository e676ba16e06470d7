"""The registered models of a task (table ``mlflow_models``, written by the MLflow bridge)."""

from __future__ import annotations

from phpo.schemas.models import RegisteredModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.tables import MlflowModelRow, PointRow, SegmentRow, TaskRow


def task_models(s: Session, task: TaskRow) -> list[RegisteredModel]:
    """One entry per segment, in segment order; ``pending`` where the bridge has not decided yet."""
    segmented = bool((task.spec or {}).get("segments"))
    rows = s.execute(
        select(SegmentRow.idx, SegmentRow.name, MlflowModelRow, PointRow.loss)
        .outerjoin(MlflowModelRow, MlflowModelRow.segment_id == SegmentRow.id)
        .outerjoin(PointRow, PointRow.id == MlflowModelRow.point_id)
        .where(SegmentRow.task_id == task.id)
        .order_by(SegmentRow.idx)
    ).all()
    out = []
    for idx, name, m, loss in rows:
        seg = name if segmented else None
        if m is None:
            out.append(RegisteredModel(segment_id=idx, segment=seg, status="pending"))
            continue
        out.append(
            RegisteredModel(
                segment_id=idx,
                segment=seg,
                status=m.status,
                point_id=m.point_id,
                loss=loss,
                name=m.name,
                version=m.version,
                uri=f"models:/{m.name}/{m.version}" if m.status == "registered" else None,
                source=m.source,
                run_id=m.run_id or None,
                detail=m.detail,
            )
        )
    return out
