"""The ``doctor`` command (kept apart from cli.py so it can be registered in one line)."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("--fix", is_flag=True, help="repair what can be repaired (see the list below)")
def doctor(fix: bool) -> None:
    """Check that the database and the stored files agree; with --fix, repair.

    Image records whose file is missing are removed, unreferenced files older than the grace
    period are deleted, temporary files of crashed writers are removed, and inactive model
    versions whose file is missing are removed (an active one is only reported).
    """
    from pigeonhole.db.engine import create_db_engine, create_session_factory
    from pigeonhole.db.migrate import upgrade
    from pigeonhole.doctor import check
    from pigeonhole.settings import load_settings
    from pigeonhole.storage.blobs import BlobStore

    settings = load_settings()
    engine = create_db_engine(settings.resolved_database_url)
    upgrade(engine)
    try:
        findings = check(create_session_factory(engine), BlobStore(settings.resolved_blob_url), fix=fix,
                         grace_s=settings.blob_sweep_grace_s)
    finally:
        engine.dispose()
    for line in findings.lines():
        click.echo(line)
    sys.exit(0 if findings.healthy or fix else 1)
