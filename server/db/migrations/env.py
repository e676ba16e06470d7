"""Alembic environment: run on the connection phpo hands in (``config.attributes['connection']``),
or on ``sqlalchemy.url`` when invoked by the ``alembic`` command for autogenerate."""

from alembic import context
from phpo.server.db import workflow_tables  # noqa: F401  (registers the workflow tables on Base)
from phpo.server.db.tables import Base
from sqlalchemy import create_engine

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
