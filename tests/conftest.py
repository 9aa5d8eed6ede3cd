"""Fixtures shared by every test: real databases (SQLite, and PostgreSQL when configured), real apps.

DB-facing tests take ``database_url``, which is parametrized over the backends: SQLite always, and
PostgreSQL when ``PIGEONHOLE_TEST_POSTGRES_URL`` is set (CI sets it). Each test session works in
its own PostgreSQL schema, so concurrent runs never see each other's rows; tables are emptied
after each test so tests stay independent.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import text

from pigeonhole.db.base import Base
from pigeonhole.db.engine import create_db_engine, normalise_url
from pigeonhole.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("PIGEONHOLE_SHARED_DIR", REPO_ROOT.parent / "shared"))
POSTGRES_URL = os.environ.get("PIGEONHOLE_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", "postgres"] if POSTGRES_URL else ["sqlite"]

# A test never reaches a publisher: trainings (in this process, in Ray workers and in servers the tests start,
# which inherit the environment) do not fetch extractors; the tests of fetching serve files on 127.0.0.1.
os.environ["PIGEONHOLE_WEIGHTS_FETCH"] = "false"

# Cheap Argon2 so tests that sign up many users stay fast; production keeps the strong defaults.
FAST_PASSWORDS = dict(argon2_time_cost=1, argon2_memory_kib=1024, argon2_parallelism=1)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema owned by this test session."""
    if not POSTGRES_URL:
        pytest.skip("PIGEONHOLE_TEST_POSTGRES_URL is not set")
    schema = f"pgh_test_{secrets.token_hex(4)}"
    admin = create_db_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    base = normalise_url(POSTGRES_URL)
    separator = "&" if "?" in base else "?"
    yield f"{base}{separator}options={quote(f'-csearch_path={schema}')}"
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def empty_tables(url: str) -> None:
    engine = create_db_engine(url)
    names = [t.name for t in Base.metadata.sorted_tables]
    with engine.begin() as connection:
        existing = set(connection.dialect.get_table_names(connection))
        present = [n for n in names if n in existing]
        if present:
            connection.execute(text(f"TRUNCATE {', '.join(present)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    empty_tables(url)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        secret_key="test-" + secrets.token_urlsafe(32),
        usage_flush_interval_s=0.05,
        **FAST_PASSWORDS,
    )
