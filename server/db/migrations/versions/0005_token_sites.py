"""Agent tokens scoped to sites: tokens.sites (phpo.server.db.tables.TokenRow.sites), NULL for
tokens made before (any site, as they always could). A job's holder becomes the token itself
(NAME#ID, phpo.server.auth.identity.Caller.holder): running jobs leased before are given it
where their holder name is one live token's, so their agents keep them across the upgrade.

Revision ID: 0005_token_sites
Revises: 0004_mlflow_artifacts
Create Date: 2026-12-02 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_token_sites"
down_revision: str | None = "0004_mlflow_artifacts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sites", sa.JSON(), nullable=True))
    live = "FROM tokens t WHERE t.name = jobs.holder AND t.revoked = :no"
    op.get_bind().execute(
        sa.text(
            f"UPDATE jobs SET holder = holder || '#' || CAST((SELECT MIN(t.id) {live}) AS VARCHAR(20)) "
            f"WHERE state = 'running' AND holder IS NOT NULL AND (SELECT COUNT(*) {live}) = 1"
        ).bindparams(sa.bindparam("no", False, type_=sa.Boolean()))
    )


def downgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_column("sites")
