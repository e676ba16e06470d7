"""SQLAlchemy 2 table models. Only repositories and the orchestration layer touch them;
everything above hands around :mod:`phpo.schemas` models.

Changing a table needs a new Alembic revision in ``migrations/versions``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BigInteger primary keys autoincrement on PostgreSQL; SQLite needs plain INTEGER for rowid.
PK = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict] = {dict[str, Any]: JSON, list[Any]: JSON}


class TokenRow(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    # agent tokens: the sites they may take jobs for (None: any site; older tokens and admins)
    sites: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)


class TaskRow(Base):
    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    name: Mapped[str | None] = mapped_column(String(250), index=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    message: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    optimizer: Mapped[str] = mapped_column(String(100))
    n_segments: Mapped[int] = mapped_column(Integer, default=1)
    failed_iterations: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SegmentRow(Base):
    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("task_id", "idx", name="uq_segments_task_idx"),)
    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer, doc="0-based position; the API's segment id")
    name: Mapped[str] = mapped_column(String(200))
    files: Mapped[list[Any]] = mapped_column(JSON, default=list)
    finished: Mapped[bool] = mapped_column(Boolean, default=False)
    finished_reason: Mapped[str | None] = mapped_column(Text)
    n_generated: Mapped[int] = mapped_column(Integer, default=0, doc="next point serial")
    n_jobs: Mapped[int] = mapped_column(Integer, default=0, doc="evaluation jobs used")
    last_acquired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PointRow(Base):
    __tablename__ = "points"
    __table_args__ = (
        UniqueConstraint("task_id", "segment_idx", "serial", name="uq_points_task_segment_serial"),
        Index("ix_points_task_segment_state", "task_id", "segment_idx", "state"),
        Index("ix_points_state", "state"),
    )
    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    segment_idx: Mapped[int] = mapped_column(Integer, default=0)
    serial: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    loss: Mapped[Any] = mapped_column(JSON, nullable=True)
    loss_value: Mapped[float | None] = mapped_column(Float, doc="first objective, for sorting")
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, doc="attempts spent (failed or lost)")
    error: Mapped[str | None] = mapped_column(Text)
    intermediate: Mapped[list[Any]] = mapped_column(JSON, default=list)
    job_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), index=True)
    checkpoint_artifact_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    site: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    evaluated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_kind", "state", "kind"), Index("ix_jobs_task", "task_id"))
    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    segment_idx: Mapped[int | None] = mapped_column(Integer)
    agent: Mapped[str | None] = mapped_column(String(200))
    holder: Mapped[str | None] = mapped_column(String(200), doc="token that leased the job (NAME#ID)")
    site: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    point_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    results: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, doc="point id -> status received")
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, doc="steering settings")
    iteration_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ArtifactRow(Base):
    __tablename__ = "artifacts"
    __table_args__ = (Index("ix_artifacts_task", "task_id"), Index("ix_artifacts_point", "point_id"))
    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text, doc="location in the artifact store")
    owner: Mapped[str | None] = mapped_column(String(200))
    task_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    point_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    job_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SteeringIterationRow(Base):
    __tablename__ = "steering_iterations"
    __table_args__ = (Index("ix_iterations_task", "task_id"),)
    id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    segment_idx: Mapped[int | None] = mapped_column(Integer)
    optimizer: Mapped[str] = mapped_column(String(100))
    requested: Mapped[int] = mapped_column(Integer)
    produced: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)


class MlflowRunRow(Base):
    """The MLflow bridge's outbox: which point has which MLflow run and what of it is written.
    A point without a row still needs its run; ``synced`` 'open' still needs its final result."""

    __tablename__ = "mlflow_runs"
    __table_args__ = (Index("ix_mlflow_runs_synced", "synced"),)
    point_id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=False)
    task_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), index=True)
    experiment_id: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(String(64))
    synced: Mapped[str] = mapped_column(String(16), doc="open | done")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MlflowArtifactRow(Base):
    """The MLflow bridge's artifact outbox: one row per phpo artifact the bridge has handled
    (a point's logs and metrics file, the best point's checkpoint), so a pass never uploads or
    imports it twice. ``status``: done | skipped | error; ``detail`` says why when not done."""

    __tablename__ = "mlflow_artifacts"
    artifact_id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=False)
    task_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), index=True)
    point_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    kind: Mapped[str] = mapped_column(String(16))
    run_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MlflowModelRow(Base):
    """The best model of a segment, registered in MLflow's model registry (one row per segment,
    written once the segment has ended and its best point's run holds everything the payload
    logged). ``status``: registered (``name``/``version`` set) | no_model (the best point's run
    holds no ``model/``: the payload saved none) | error (``detail`` says why)."""

    __tablename__ = "mlflow_models"
    segment_id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=False)
    task_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), index=True)
    segment_idx: Mapped[int] = mapped_column(Integer)
    point_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    run_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(250))
    version: Mapped[str | None] = mapped_column(String(32))
    source: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MlflowSegmentRunRow(Base):
    """The parent run of a segment of a segmented task (its points' runs are nested under it):
    ``synced`` 'open' until the segment has ended and the run is terminated, then 'done'."""

    __tablename__ = "mlflow_segment_runs"
    __table_args__ = (Index("ix_mlflow_segment_runs_synced", "synced"),)
    segment_id: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=False)
    task_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), index=True)
    experiment_id: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(String(64))
    synced: Mapped[str] = mapped_column(String(16), doc="open | done")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
