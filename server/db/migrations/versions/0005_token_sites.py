"""Agent tokens scoped to sites: tokens.sites (phpo.server.db.tables.TokenRow.sites), NULL for
tokens made before (any site, as they always could).

Revision ID: 0005_token_sites
Revises: 0004_mlflow_artifacts
Create Date: 2026-12-02 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005_token_sites'
down_revision: str | None = '0004_mlflow_artifacts'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sites', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tokens', schema=None) as batch_op:
        batch_op.drop_column('sites')
