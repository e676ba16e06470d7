"""MLflow bridge: the artifact outbox (mlflow_artifacts, phpo.server.db.tables.MlflowArtifactRow)
and the segments' parent runs (mlflow_segment_runs, MlflowSegmentRunRow).

Revision ID: 0004_mlflow_artifacts
Revises: 0003_mlflow
Create Date: 2026-11-23 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_mlflow_artifacts"
down_revision: str | None = "0003_mlflow"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "mlflow_artifacts",
        sa.Column("artifact_id", _ID, autoincrement=False, nullable=False),
        sa.Column("task_id", _ID, nullable=False),
        sa.Column("point_id", _ID, nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("artifact_id"),
    )
    with op.batch_alter_table("mlflow_artifacts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mlflow_artifacts_task_id"), ["task_id"], unique=False)
    op.create_table(
        "mlflow_segment_runs",
        sa.Column("segment_id", _ID, autoincrement=False, nullable=False),
        sa.Column("task_id", _ID, nullable=False),
        sa.Column("experiment_id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("synced", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("segment_id"),
    )
    with op.batch_alter_table("mlflow_segment_runs", schema=None) as batch_op:
        batch_op.create_index("ix_mlflow_segment_runs_synced", ["synced"], unique=False)
        batch_op.create_index(batch_op.f("ix_mlflow_segment_runs_task_id"), ["task_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("mlflow_segment_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mlflow_segment_runs_task_id"))
        batch_op.drop_index("ix_mlflow_segment_runs_synced")
    op.drop_table("mlflow_segment_runs")
    with op.batch_alter_table("mlflow_artifacts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mlflow_artifacts_task_id"))
    op.drop_table("mlflow_artifacts")
