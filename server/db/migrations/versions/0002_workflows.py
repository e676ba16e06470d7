"""DAG workflows: the workflows and workflow_nodes tables (phpo.server.db.workflow_tables).

Revision ID: 0002_workflows
Revises: 0001
Create Date: 2026-11-23 10:58:27.781186
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_workflows"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workflows",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=True),
        sa.Column("parent_node_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workflows_name"), ["name"], unique=False)
        batch_op.create_index("ix_workflows_owner_parent", ["owner", "parent_node_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_workflows_state"), ["state"], unique=False)

    op.create_table(
        "workflow_nodes",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("workflow_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("parent_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("fan_out", sa.Boolean(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("item_index", sa.Integer(), nullable=True),
        sa.Column("item", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("child_workflow_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("inputs", sa.JSON(), nullable=True),
        sa.Column("results", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["workflow_id"], ["workflows.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workflow_id", "path", name="uq_workflow_nodes_path"),
    )
    with op.batch_alter_table("workflow_nodes", schema=None) as batch_op:
        batch_op.create_index("ix_workflow_nodes_task", ["task_id"], unique=False)
        batch_op.create_index("ix_workflow_nodes_workflow_state", ["workflow_id", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("workflow_nodes", schema=None) as batch_op:
        batch_op.drop_index("ix_workflow_nodes_workflow_state")
        batch_op.drop_index("ix_workflow_nodes_task")

    op.drop_table("workflow_nodes")
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workflows_state"))
        batch_op.drop_index("ix_workflows_owner_parent")
        batch_op.drop_index(batch_op.f("ix_workflows_name"))

    op.drop_table("workflows")
