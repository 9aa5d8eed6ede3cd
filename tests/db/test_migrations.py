"""Migrations create exactly the schema the ORM describes, on every backend, and are idempotent."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from pigeonhole.db.base import Base
from pigeonhole.db.engine import create_db_engine
from pigeonhole.db.migrate import pending_revisions, upgrade


def test_migrations_match_the_orm_and_are_idempotent(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        upgrade(engine)
        upgrade(engine)  # a second start finds nothing to do
        assert pending_revisions(engine) == []
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
        assert diff == [], f"the migrations and the ORM tables differ: {diff}"
        tables = set(inspect(engine).get_table_names())
        assert {"users", "api_tokens", "web_sessions", "usage_records", "login_failures"} <= tables
    finally:
        engine.dispose()


def test_sqlite_pragmas_are_set(tmp_path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    engine.dispose()
