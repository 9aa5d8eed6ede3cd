"""Alembic environment: runs on the connection handed in by ``pigeonhole.db.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

import pigeonhole.db.tables  # noqa: F401  (registers every table)
from pigeonhole.db.base import Base
from pigeonhole.db.engine import normalise_url

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # the alembic command line, e.g. `alembic revision --autogenerate`
        url = normalise_url(config.get_main_option("sqlalchemy.url") or "")
        with create_engine(url).connect() as conn:
            _run(conn)
            conn.commit()
        return
    _run(connection)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
