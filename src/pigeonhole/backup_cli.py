"""The ``backup`` and ``restore`` commands (kept apart from cli.py so they can be registered in one line each)."""

from __future__ import annotations

from pathlib import Path

import click

from pigeonhole.settings import Settings, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise click.ClickException(f"Invalid settings: {exc}") from exc


@click.command()
@click.argument("output", type=click.Path(path_type=Path))
def backup(output: Path) -> None:
    """Save the database and every stored file into one archive (a .tar file).

    OUTPUT is the archive to create, or an existing folder (the file is then named
    pigeonhole-backup-<date and time>.tar). The service may keep running: the database is read as
    it was at one instant. The archive holds password hashes and, in a development install, the
    secret key: keep it private.
    """
    from pigeonhole.backup import BackupError, create_backup

    try:
        summary = create_backup(_settings(), output)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    rows = sum(summary.rows.values())
    click.echo(f"Backed up {rows} database row(s) and {summary.files} file(s) ({_size(summary.file_bytes)}) "
               f"to {summary.path}")


@click.command()
@click.argument("archive", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--force", is_flag=True, help="replace everything in a database that already holds data")
def restore(archive: Path, force: bool) -> None:
    """Restore a backup made by `pigeonhole backup` into the configured database and file store.

    Stop the service first. The whole archive is checked before anything is written; a database
    that already holds data is only replaced with --force.
    """
    from pigeonhole.backup import BackupError
    from pigeonhole.restore import restore_backup

    try:
        summary = restore_backup(_settings(), archive, force=force)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    for warning in summary.warnings:
        click.echo(f"Warning: {warning}", err=True)
    click.echo(f"Restored {sum(summary.rows.values())} database row(s) and {summary.files} file(s) "
               f"(database revision {summary.revision}).")


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"
