"""MLflow bridge outbox: the mlflow_runs table (phpo.server.db.tables.MlflowRunRow).

Revision ID: 0003_mlflow
Revises: 0002_workflows
Create Date: 2026-11-23 11:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_mlflow"
down_revision: str | None = "0002_workflows"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "mlflow_runs",
        sa.Column("point_id", _ID, autoincrement=False, nullable=False),
        sa.Column("task_id", _ID, nullable=False),
        sa.Column("experiment_id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("synced", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("point_id"),
    )
    with op.batch_alter_table("mlflow_runs", schema=None) as batch_op:
        batch_op.create_index("ix_mlflow_runs_synced", ["synced"], unique=False)
        batch_op.create_index(batch_op.f("ix_mlflow_runs_task_id"), ["task_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("mlflow_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mlflow_runs_task_id"))
        batch_op.drop_index("ix_mlflow_runs_synced")
    op.drop_table("mlflow_runs")
