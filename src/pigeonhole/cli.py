"""The ``pigeonhole`` command: serve, migrate, create-admin (client commands join later)."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import ssl
import subprocess
import sys

import click

from pigeonhole.backup_cli import backup, restore
from pigeonhole.client.commands import register as register_client_commands
from pigeonhole.doctor_cli import doctor
from pigeonhole.settings import Settings, load_settings
from pigeonhole.weights_cli import weights


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise click.ClickException(f"Invalid settings: {exc}") from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pigeonhole")
def main() -> None:
    """Pigeonhole: self-hosted, no-code image classification.

    Every setting can also come from a PIGEONHOLE_* environment variable (e.g. PIGEONHOLE_DATA_DIR).
    """


@main.command()
@click.option("--host", default=None, help="address to listen on (default 127.0.0.1)")
@click.option("--port", type=int, default=None, help="port to listen on (default 8000)")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="where data is kept")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--certfile", type=click.Path(dir_okay=False), default=None,
              help="serve HTTPS with this PEM certificate (chain); needs --keyfile")
@click.option("--keyfile", type=click.Path(dir_okay=False), default=None,
              help="the certificate's PEM private key (not encrypted); needs --certfile")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="API processes (default: from the cores and memory, or PIGEONHOLE_API_WORKERS)")
def serve(host: str | None, port: int | None, data_dir: str | None, log_level: str, certfile: str | None,
          keyfile: str | None, workers: int | None) -> None:
    """Start the whole service (API, web app) with one command.

    With --certfile and --keyfile it serves HTTPS itself; behind a reverse proxy that terminates HTTPS,
    set PIGEONHOLE_TRUSTED_PROXIES to the proxy's address instead (see docs/deployment.md).
    """
    settings = _settings(host=host, port=port, data_dir=data_dir, tls_certfile=certfile, tls_keyfile=keyfile,
                         api_workers=workers)
    tls = _tls_files(settings)  # before the app's imports (3-4 s): a wrong file is told at once

    import uvicorn

    from pigeonhole.api.app import create_app
    from pigeonhole.auth import repository as repo
    from pigeonhole.db.engine import create_db_engine, create_session_factory
    from pigeonhole.db.migrate import upgrade
    from pigeonhole.logs import uvicorn_log_config

    engine = create_db_engine(settings.resolved_database_url)
    upgrade(engine)
    with create_session_factory(engine)() as db:
        first_start = repo.count_users(db) == 0
    engine.dispose()

    scheme = "https" if tls else "http"
    url = settings.public_url or f"{scheme}://{_display_host(settings.host)}:{settings.port}"
    click.echo(f"Pigeonhole is starting on {url}  (data in {settings.data_dir})")
    if first_start:
        click.echo(f"First start: open {url} and sign up; the first account becomes the administrator.\n"
                   "Or create one from a terminal: pigeonhole create-admin --email you@example.com")
    app = create_app(settings, migrate=False) if settings.resolved_api_workers == 1 else None
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal into the handlers it
    # found: no-op handlers make a requested stop exit with status 0 instead of dying by the signal.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda *_: None)
    dispatcher_process = _start_dispatcher(settings, log_level)
    try:
        # proxy_headers off: the app itself believes forwarded headers, from PIGEONHOLE_TRUSTED_PROXIES only.
        options: dict[str, object] = dict(
            host=settings.host, port=settings.port, log_level=log_level, log_config=uvicorn_log_config(log_level),
            proxy_headers=False, ssl_certfile=tls[0] if tls else None, ssl_keyfile=tls[1] if tls else None)
        if app is not None:
            uvicorn.run(app, **options)  # type: ignore[arg-type]
        else:
            # Each worker process builds its own app from the environment: hand it what the flags said,
            # and settle the generated development secret first, so that every worker reads the same one.
            _ = settings.secret
            _export_settings(settings)
            _share_metrics(settings)
            uvicorn.run("pigeonhole.api.app:worker_app", factory=True, workers=settings.resolved_api_workers,
                        **options)  # type: ignore[arg-type]
    finally:
        _stop_process(dispatcher_process)


def _share_metrics(settings: Settings) -> None:
    """Several API processes write their Prometheus figures to files in one folder, and /metrics, whichever
    process answers it, adds them all up (prometheus_client's multiprocess mode)."""
    folder = settings.data_dir / "run" / "metrics"
    shutil.rmtree(folder, ignore_errors=True)  # figures of an earlier run would be counted again
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def _export_settings(settings: Settings) -> None:
    """Settings given as flags, as the environment variables worker processes read."""
    values = {"DATA_DIR": settings.data_dir, "HOST": settings.host, "PORT": settings.port,
              "API_WORKERS": settings.resolved_api_workers,
              "TLS_CERTFILE": settings.tls_certfile, "TLS_KEYFILE": settings.tls_keyfile}
    for name, value in values.items():
        if value is not None:
            os.environ[f"PIGEONHOLE_{name}"] = str(value)


def _tls_files(settings: Settings) -> tuple[str, str] | None:
    """The certificate and key to serve HTTPS with, checked now so that a mistake is a sentence, not a
    traceback from deep inside the server after start-up."""
    certfile, keyfile = settings.tls_certfile, settings.tls_keyfile
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        raise click.UsageError("HTTPS needs both a certificate and its private key: give --certfile and --keyfile "
                               "(or PIGEONHOLE_TLS_CERTFILE and PIGEONHOLE_TLS_KEYFILE) together.")
    for what, path in (("certificate", certfile), ("private key", keyfile)):
        if not path.is_file() or not os.access(path, os.R_OK):
            raise click.ClickException(f"The TLS {what} file {path} does not exist or cannot be read by this user.")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback that gives none: an encrypted key fails here instead of prompting on a terminal.
        context.load_cert_chain(certfile, keyfile, password=lambda: b"")
    except (ssl.SSLError, ValueError) as exc:
        raise click.ClickException(
            f"The TLS certificate {certfile} and key {keyfile} could not be loaded ({exc}). Both must be PEM "
            "files, the key must belong to the certificate, and it must not be protected by a passphrase."
        ) from exc
    return str(certfile), str(keyfile)


def _start_dispatcher(settings: Settings, log_level: str) -> subprocess.Popen[bytes]:
    """The dispatcher runs as its own process (the only Ray driver; it starts the local Ray runtime)."""
    env = {**os.environ, "PIGEONHOLE_DATA_DIR": str(settings.data_dir),
           "PIGEONHOLE_DATABASE_URL": settings.resolved_database_url}
    # Its own process group: the local Ray runtime it starts lives there too, so stopping can sweep it all.
    return subprocess.Popen([sys.executable, "-m", "pigeonhole.cli", "dispatcher", "--log-level", log_level,
                             "--parent-pid", str(os.getpid())], env=env, start_new_session=True)


def _stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):  # Ray helpers that outlived ray.shutdown()
        os.killpg(process.pid, signal.SIGKILL)


@main.command()
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--parent-pid", type=int, default=None, hidden=True, help="stop when this process is gone")
def dispatcher(log_level: str, parent_pid: int | None) -> None:
    """Run the job dispatcher: the only Ray driver (connects to PIGEONHOLE_RAY_ADDRESS, or starts a local
    Ray runtime). Several may be started; one acts at a time."""
    import logging

    from pigeonhole.compute.main import run_dispatcher

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_dispatcher(_settings(), parent_pid=parent_pid)


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


@main.command()
def migrate() -> None:
    """Apply database migrations (start-up does this too)."""
    from pigeonhole.db.engine import create_db_engine
    from pigeonhole.db.migrate import pending_revisions, upgrade

    settings = _settings()
    engine = create_db_engine(settings.resolved_database_url)
    pending = pending_revisions(engine)
    upgrade(engine)
    engine.dispose()
    click.echo(f"Database is up to date ({len(pending)} migration(s) applied).")


@main.command("create-admin")
@click.option("--email", required=True, help="the administrator's email")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input (for scripts)")
def create_admin(email: str, password_stdin: bool) -> None:
    """Create an administrator account, or make an existing account an administrator.

    The password is asked for interactively, read from standard input with --password-stdin,
    or taken from PIGEONHOLE_ADMIN_PASSWORD.
    """
    from pigeonhole.auth import repository as repo
    from pigeonhole.auth.passwords import passwords_from
    from pigeonhole.auth.service import AuthService
    from pigeonhole.db.engine import create_db_engine, create_session_factory
    from pigeonhole.db.migrate import upgrade
    from pigeonhole.errors import PigeonholeError

    settings = _settings()
    password = os.environ.get("PIGEONHOLE_ADMIN_PASSWORD")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    engine = create_db_engine(settings.resolved_database_url)
    upgrade(engine)
    try:
        with create_session_factory(engine)() as db:
            service = AuthService(db, settings, passwords_from(settings))
            exists = repo.user_by_email(db, email.strip().lower()) is not None
            if password is None and not exists:
                if not sys.stdin.isatty():
                    raise click.ClickException("No password given: use --password-stdin or PIGEONHOLE_ADMIN_PASSWORD.")
                password = getpass.getpass("Password: ")
                if password != getpass.getpass("Repeat password: "):
                    raise click.ClickException("The two passwords differ.")
            try:
                user, created = service.create_admin(email, password)
            except PigeonholeError as exc:
                raise click.ClickException(exc.detail) from exc
            db.commit()
    finally:
        engine.dispose()
    click.echo(f"{'Created' if created else 'Updated'} administrator {user.email}.")


register_client_commands(main)  # login, dataset, model, token, usage: the REST client from a terminal
main.add_command(doctor)
main.add_command(backup)
main.add_command(restore)
main.add_command(weights)

if __name__ == "__main__":
    main()
