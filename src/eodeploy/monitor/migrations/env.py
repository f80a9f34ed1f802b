"""Alembic environment: runs on the connection eodeploy hands over (``eodeploy.monitor.db.migrate``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from eodeploy.monitor.db import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # the alembic CLI: -x url=... or sqlalchemy.url
        url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
            "sqlalchemy.url"
        )
        if not url:
            raise SystemExit("give the database: alembic -x url=sqlite:///eodeploy.db upgrade head")
        with create_engine(url).begin() as conn:
            _migrate(conn)
    else:
        _migrate(connection)


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
