"""Client commands of the ``pigeonhole`` CLI: login, dataset, model, token, usage.

Exit codes scripts can rely on: 0 done; 1 other error; 2 wrong usage; 3 not signed in or token
refused; 4 not found; 5 server unreachable; 6 request refused (invalid input, conflict, limits);
7 a job (training, import) failed or was cancelled.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pigeonhole.client import credentials as creds
from pigeonhole.client.clients import Client
from pigeonhole.client.errors import (
    AuthenticationError,
    ConnectionFailed,
    NotFound,
    PermissionDenied,
    PigeonholeAPIError,
)

EXIT_ERROR, EXIT_AUTH, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_JOB_FAILED = 1, 3, 4, 5, 6, 7
console = Console(stderr=True)
json_option = click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")


class CliError(click.ClickException):
    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


def _client() -> Client:
    saved = creds.load()
    if saved is None:
        raise CliError("Not signed in: run `pigeonhole login --url http://127.0.0.1:8000` first "
                       "(or set PIGEONHOLE_URL and PIGEONHOLE_TOKEN).", EXIT_AUTH)
    return Client(saved.url, saved.token)


def _call(fn: Callable[[], Any]) -> Any:
    """Run a client call, turning its errors into a clear message and a stable exit code."""
    try:
        return fn()
    except AuthenticationError as exc:
        raise CliError(f"{exc.detail} Run `pigeonhole login` again.", EXIT_AUTH) from exc
    except PermissionDenied as exc:
        raise CliError(exc.detail, EXIT_AUTH) from exc
    except NotFound as exc:
        raise CliError(exc.detail, EXIT_NOT_FOUND) from exc
    except ConnectionFailed as exc:
        raise CliError(f"{exc} Is the server running?", EXIT_UNREACHABLE) from exc
    except PigeonholeAPIError as exc:
        raise CliError(exc.detail, EXIT_REFUSED if exc.status < 500 else EXIT_ERROR) from exc
    except FileNotFoundError as exc:
        raise CliError(str(exc), EXIT_NOT_FOUND) from exc


def _emit(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        human(data)


def _table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(row.get(c, "")) for c in columns])
    Console().print(table)


# --- login ---------------------------------------------------------------------------------------
@click.command()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="the Pigeonhole server")
@click.option("--token", help="an existing API token (otherwise sign in with email and password)")
@click.option("--email", help="your account's email")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
def login(url: str, token: str | None, email: str | None, password_stdin: bool) -> None:
    """Sign in and remember the server and an API token (stored readable by you only)."""
    url = url.rstrip("/")
    if token is None:
        email = email or click.prompt("Email")
        password = sys.stdin.readline().rstrip("\n") if password_stdin else click.prompt("Password", hide_input=True)
        token = _token_from_password(url, email, password)
    with Client(url, token) as client:
        me = _call(client.me)
    path = creds.save(creds.Credentials(url=url, token=token))
    console.print(f"Signed in to {url} as {me['email']}. Credentials saved in {path}.")


def _token_from_password(url: str, email: str, password: str) -> str:
    try:
        with httpx.Client(base_url=url, timeout=30) as browser:
            response = browser.post("/api/v1/auth/login", json={"email": email, "password": password})
            if response.status_code != 200:
                raise CliError(response.json().get("detail", "Sign-in failed."), EXIT_AUTH)
            created = browser.post("/api/v1/tokens", json={"name": "pigeonhole CLI"},
                                   headers={"X-CSRF-Token": browser.cookies.get("pgh_csrf", "")})
            if created.status_code != 201:
                raise CliError(created.json().get("detail", "Could not create a token."), EXIT_AUTH)
            return str(created.json()["token"])
    except httpx.TransportError as exc:
        raise CliError(f"Could not reach Pigeonhole at {url}: {exc}. Is the server running?",
                       EXIT_UNREACHABLE) from exc


# --- datasets ------------------------------------------------------------------------------------
@click.group()
def dataset() -> None:
    """Create, fill and export datasets."""


@dataset.command("list")
@json_option
def dataset_list(as_json: bool) -> None:
    """Your datasets."""
    with _client() as client:
        items = _call(client.list_datasets)
    _emit(items, as_json, lambda rows: _table(rows, ["id", "name", "image_count", "class_count"], "Datasets"))


@dataset.command("create")
@click.argument("name")
@json_option
def dataset_create(name: str, as_json: bool) -> None:
    """Create an empty dataset."""
    with _client() as client:
        created = _call(lambda: client.create_dataset(name))
    _emit(created, as_json, lambda d: click.echo(d["id"]))


def _upload(client: Client, dataset_id: str, source: Path, label: str | None, unlabelled: bool = False) -> Any:
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} files"),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("Uploading", total=None)

        def progress(state: Any) -> None:
            bar.update(task, total=state.files_total, completed=state.files_done)

        if source.is_dir() and unlabelled:
            files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
            return _call(lambda: client.upload_files(dataset_id, files, progress=progress, unlabelled=True))
        if source.is_dir():
            return _call(lambda: client.upload_folder(dataset_id, source, progress=progress))
        return _call(lambda: client.upload_files(dataset_id, [source], label=label, progress=progress,
                                                 unlabelled=unlabelled))


def _report_upload(result: Any) -> None:
    console.print(f"Accepted {result.accepted} image(s), {result.duplicates} duplicate(s), "
                  f"{len(result.rejected)} rejected.")
    for rejected in result.rejected[:20]:
        console.print(f"  [yellow]{rejected['name']}[/]: {rejected['reason']}")
    if len(result.rejected) > 20:
        console.print(f"  … and {len(result.rejected) - 20} more.")


@dataset.command("upload")
@click.argument("dataset_id")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--label", help="the class of a single image (folders and zips carry their classes)")
@click.option("--unlabelled", is_flag=True, help="images to label later (folders' names are ignored): they wait "
                                                 "in the dataset's to-label pool")
@json_option
def dataset_upload(dataset_id: str, source: Path, label: str | None, unlabelled: bool, as_json: bool) -> None:
    """Upload a folder (one sub-folder per class), a zip file, or one image with --label; or images to label
    later with --unlabelled."""
    if not source.exists():
        raise CliError(f"There is nothing at {source}.", EXIT_NOT_FOUND)
    if unlabelled and label:
        raise CliError("Images to label later have no class yet: give --label or --unlabelled, not both.", 2)
    with _client() as client:
        result = _upload(client, dataset_id, source, label, unlabelled)
    _emit(result.__dict__, as_json, lambda _: _report_upload(result))


@dataset.command("export")
@click.argument("dataset_id")
@click.argument("destination", type=click.Path(path_type=Path))
def dataset_export(dataset_id: str, destination: Path) -> None:
    """Download a dataset as a zip with one folder per class."""
    with _client() as client:
        _call(lambda: client.export_dataset(dataset_id, destination))
    console.print(f"Saved {destination}.")


# --- models --------------------------------------------------------------------------------------
@click.group()
def model() -> None:
    """Train models, follow training, predict, grow and export them."""


@model.command("list")
@json_option
def model_list(as_json: bool) -> None:
    """Your models."""
    with _client() as client:
        items = _call(client.list_models)
    _emit(items, as_json, lambda rows: _table(rows, ["id", "name", "status", "active_version"], "Models"))


def _follow(client: Client, job_id: str) -> dict[str, Any]:
    """Progress bar over a job: stage, percentage, ETA, best accuracy so far."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("{task.fields[best]}"), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("Waiting to start", total=1.0, best="")

        def show(job: dict[str, Any]) -> None:
            best = max((m.get("val_accuracy", m.get("accuracy", 0)) for m in job.get("metrics") or []), default=None)
            bar.update(task, completed=job.get("progress") or 0, description=job.get("stage") or job["status"],
                       best=f"best {best:.1%}" if best else "")

        return _call(lambda: client.wait_for_job(job_id, poll_s=1.0, on_progress=show))


def _describe(client: Client, model_id: str, url: str) -> None:
    current = _call(lambda: client.get_model(model_id))
    accuracy = (current.get("metrics") or {}).get("accuracy")
    console.print(f"Model [bold]{current['name']}[/] ({current['id']}): {current['status']}, "
                  f"version {current['active_version']}" + (f", test accuracy {accuracy:.1%}" if accuracy else ""))
    for note in current.get("notes") or []:
        console.print(f"[yellow]Note:[/] {note}", markup=True, highlight=False)
    if current["active_version"] is not None:
        console.print("Classify an image:\n"
                      f"  pigeonhole model predict {current['id']} photo.jpg\n"
                      f"  curl -H 'Authorization: Bearer $PIGEONHOLE_TOKEN' -F files=@photo.jpg "
                      f"{url}/api/v1/models/{current['id']}/predict")


@model.command("train")
@click.argument("source")
@click.option("--name", help="the model's name (default: the folder's name)")
@click.option("--target", "target_accuracy", type=click.FloatRange(0, 1), help="stop once this accuracy is reached")
@click.option("--budget", "time_budget_s", type=int, help="longest training time in seconds")
@click.option("--preference", type=click.Choice(["fast", "balanced", "accurate"]), default="balanced")
@click.option("--no-wait", is_flag=True, help="start training and return at once")
@json_option
def model_train(source: str, name: str | None, target_accuracy: float | None, time_budget_s: int | None,
                preference: str, no_wait: bool, as_json: bool) -> None:
    """Train a model from a folder (one sub-folder per class) or from an existing dataset id."""
    with _client() as client:
        path = Path(source)
        if path.exists():
            if not path.is_dir():
                raise CliError(f"{source} is not a folder. Give a folder with one sub-folder per class.",
                               EXIT_REFUSED)
            name = name or path.resolve().name
            dataset_id = _call(lambda: client.create_dataset(name))["id"]
            _report_upload(_upload(client, dataset_id, path, None))
        elif "/" in source or "\\" in source or source.startswith("."):
            raise CliError(f"There is no folder at {source}.", EXIT_NOT_FOUND)
        else:
            dataset_id = source
            name = name or f"model of {source}"
        created = _call(lambda: client.create_model(name, dataset_id, target_accuracy=target_accuracy,
                                                    time_budget_s=time_budget_s, preference=preference))
        if no_wait:
            _emit(created, as_json, lambda m: click.echo(m["id"]))
            return
        job = _follow(client, created["job_id"])
        final = _call(lambda: client.get_model(created["id"]))
        if as_json:
            _emit({"model": final, "job": job}, True, lambda _: None)
        else:
            _describe(client, created["id"], client.url)
        if job["status"] != "succeeded" and final["active_version"] is None:
            raise CliError(f"Training {job['status']}: {job.get('error') or job.get('stage')}", EXIT_JOB_FAILED)


@model.command("status")
@click.argument("model_id")
@json_option
def model_status(model_id: str, as_json: bool) -> None:
    """A model's state, active version and accuracy."""
    with _client() as client:
        current = _call(lambda: client.get_model(model_id))
        _emit(current, as_json, lambda _: _describe(client, model_id, client.url))


@model.command("predict")
@click.argument("model_id")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", default=3, show_default=True)
@click.option("--version", type=int, help="a specific version (default: the active one)")
@click.option("--neighbours", type=click.IntRange(0, 20), default=0,
              help="also list this many training images the answer looks like")
@json_option
def model_predict(model_id: str, images: tuple[Path, ...], top_k: int, version: int | None, neighbours: int,
                  as_json: bool) -> None:
    """Classify image files."""
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise CliError(f"No such file: {', '.join(missing)}", EXIT_NOT_FOUND)
    with _client() as client:
        result = _call(lambda: client.predict(model_id, list(images), top_k=top_k, version=version,
                                              neighbours=neighbours or None))

    def human(data: dict[str, Any]) -> None:
        for path, answer in zip(images, data["predictions"], strict=True):
            label = answer["label"] if answer["label"] is not None else "unknown (unlike the images it was taught)"
            others = ", ".join(f"{t['label']} {t['confidence']:.0%}" for t in answer["top"])
            familiar = answer.get("familiarity")
            click.echo(f"{path}: {label}  [{others}]" + (f"  familiarity {familiar:.0%}" if familiar is not None
                                                         else ""))
            for n in answer.get("neighbours") or []:
                click.echo(f"    looks like image {n['image_id'] or '(deleted)'} ({n['label']}, similarity "
                           f"{n['similarity']:.2f})")

    _emit(result, as_json, human)


@model.command("caution")
@click.argument("model_id")
@click.argument("percent", type=click.IntRange(0, 50))
@json_option
def model_caution(model_id: str, percent: int, as_json: bool) -> None:
    """Answer "unknown" for about PERCENT % of ordinary images (a new version in seconds, no retraining)."""
    with _client() as client:
        job = _call(lambda: client.set_caution(model_id, percent / 100))
        _settle_change(client, model_id, {"job_id": job["id"]}, as_json)


@model.command("add-class")
@click.argument("model_id")
@click.argument("names", nargs=-1, required=True)
@json_option
def model_add_class(model_id: str, names: tuple[str, ...], as_json: bool) -> None:
    """Add classes from the model's dataset (seconds, no full retrain)."""
    with _client() as client:
        _settle_change(client, model_id, _call(lambda: client.add_classes(model_id, list(names))), as_json)


def _settle_change(client: Client, model_id: str, change: dict[str, Any], as_json: bool) -> None:
    """Wait for the job that makes the new version, then say what serves now."""
    if change.get("job_id"):
        job = _follow(client, change["job_id"])
        if job["status"] != "succeeded":
            raise CliError(f"The change {job['status']}: {job.get('error') or job.get('stage')}", EXIT_JOB_FAILED)
    current = _call(lambda: client.get_model(model_id))
    _emit(current, as_json, lambda m: console.print(
        f"Now serving version {m['active_version']} with classes: {', '.join(m['classes'])}."
        if m["active_version"] is not None else "The change will be part of the model's first version."))


@model.command("remove-class")
@click.argument("model_id")
@click.argument("name")
@json_option
def model_remove_class(model_id: str, name: str, as_json: bool) -> None:
    """Remove a class from the model (seconds, no full retrain)."""
    with _client() as client:
        _settle_change(client, model_id, _call(lambda: client.remove_class(model_id, name)), as_json)


@model.command("rename-class")
@click.argument("model_id")
@click.argument("name")
@click.argument("new_name")
@json_option
def model_rename_class(model_id: str, name: str, new_name: str, as_json: bool) -> None:
    """Rename a class of the model (and of its dataset): a label change, seconds."""
    with _client() as client:
        _settle_change(client, model_id, _call(lambda: client.rename_class(model_id, name, new_name)), as_json)


@model.command("export")
@click.argument("model_id")
@click.argument("destination", type=click.Path(path_type=Path))
@click.option("--version", type=int, help="default: the active version")
def model_export(model_id: str, destination: Path, version: int | None) -> None:
    """Download a version as an ONNX file."""
    with _client() as client:
        v = version or _call(lambda: client.get_model(model_id))["active_version"]
        if v is None:
            raise CliError("This model has no trained version yet.", EXIT_REFUSED)
        _call(lambda: client.export_model(model_id, v, destination))
    console.print(f"Saved version {v} to {destination}.")


# --- tokens and usage ----------------------------------------------------------------------------
@click.group()
def token() -> None:
    """Create, list and revoke API tokens."""


@token.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(["read", "write", "predict", "admin"]))
@click.option("--expires-in-days", type=int)
@json_option
def token_create(name: str, scopes: tuple[str, ...], expires_in_days: int | None, as_json: bool) -> None:
    """Create a token; its secret is printed once."""
    with _client() as client:
        created = _call(lambda: client.create_token(name, list(scopes) or None, expires_in_days))
    _emit(created, as_json, lambda t: click.echo(t["token"]))


@token.command("list")
@json_option
def token_list(as_json: bool) -> None:
    """Your tokens (never their secrets)."""
    with _client() as client:
        items = _call(client.list_tokens)
    _emit(items, as_json, lambda rows: _table(rows, ["id", "name", "prefix", "scopes", "last_used_at"], "Tokens"))


@token.command("revoke")
@click.argument("token_id")
def token_revoke(token_id: str) -> None:
    """Revoke a token: it stops working at once."""
    with _client() as client:
        _call(lambda: client.revoke_token(token_id))
    console.print("Revoked.")


@click.command()
@click.option("--from", "start", help="first day, YYYY-MM-DD")
@click.option("--to", "end", help="last day, YYYY-MM-DD")
@click.option("--by", "group_by", type=click.Choice(["day", "token", "model"]), default="day")
@json_option
def usage(start: str | None, end: str | None, group_by: str, as_json: bool) -> None:
    """API calls, errors and latency of your tokens."""
    with _client() as client:
        report = _call(lambda: client.usage(start=start, end=end, group_by=group_by))
    _emit(report, as_json, lambda r: _table(r["items"], ["key", "label", "calls", "errors", "images", "p50_ms",
                                                         "p95_ms"], f"Usage by {group_by}"))


def register(main: click.Group) -> None:
    from pigeonhole.client import data_commands  # noqa: F401  (adds its commands to the dataset and model groups)

    for command in (login, dataset, model, token, usage):
        main.add_command(command)
