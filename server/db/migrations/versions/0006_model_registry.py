"""Model registry: the best model of each segment as registered in MLflow (mlflow_models,
phpo.server.db.tables.MlflowModelRow).

Revision ID: 0006_model_registry
Revises: 0005_token_sites
Create Date: 2026-12-02 12:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_model_registry"
down_revision: str | None = "0005_token_sites"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "mlflow_models",
        sa.Column("segment_id", _ID, autoincrement=False, nullable=False),
        sa.Column("task_id", _ID, nullable=False),
        sa.Column("segment_idx", sa.Integer(), nullable=False),
        sa.Column("point_id", _ID, nullable=True),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=250), nullable=True),
        sa.Column("version", sa.String(length=32), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("segment_id"),
    )
    with op.batch_alter_table("mlflow_models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mlflow_models_task_id"), ["task_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("mlflow_models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mlflow_models_task_id"))
    op.drop_table("mlflow_models")
