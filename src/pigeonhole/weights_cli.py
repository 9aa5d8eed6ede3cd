"""``pigeonhole weights list | fetch | import``: the operator's view of the pretrained extractors on this machine.

These act on the configured weights directory (``PIGEONHOLE_WEIGHTS_DIR``, default ``<data dir>/weights``) of the
machine they run on, like ``migrate`` and ``doctor``; the admin page shows the same list
(:func:`pigeonhole.extractors.weights_report`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pigeonhole.extractors import catalog_for, weights_report
from pigeonhole.settings import load_settings


def _size(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


@click.group()
def weights() -> None:
    """Pretrained extractors: what is here, what can be fetched, and bringing your own."""


@weights.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def list_weights(as_json: bool) -> None:
    """Every extractor the product knows, present or missing, with its size and how to get it."""
    settings = load_settings()
    rows = weights_report(settings)
    if as_json:
        click.echo(json.dumps({"weights_dir": str(settings.resolved_weights_dir), "weights": rows}, indent=2))
        return
    click.echo(f"Weights directory: {settings.resolved_weights_dir}")
    for row in rows:
        if "problem" in row:
            raise click.ClickException(row["problem"])
        mark = "present" if row["present"] else "missing"
        click.echo(f"  {mark:8} {row['name']:34} {_size(row['size_bytes']):>9}  {row['origin']:9} {row['title']}")
        if not row["present"]:
            click.echo(f"           {row['how_to_get']}")
    if not any(r["present"] for r in rows):
        click.echo("No pretrained extractor is present: photo models will be trained from scratch (much less "
                   "accurate). Run `pigeonhole weights fetch --recommended`, or import files copied from elsewhere.")


@weights.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--recommended", is_flag=True, help="the recommended set (also what a first training fetches)")
def fetch_weights(names: tuple[str, ...], recommended: bool) -> None:
    """Download extractors from their publishers into the weights directory: resumable, verified, atomic."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from pigeonhole.learn.weights import WeightsError
    from pigeonhole.learn.weights_fetch import fetch

    settings = load_settings()
    catalog = catalog_for(settings)
    chosen = list(names)
    if recommended:
        chosen += [e.name for e in catalog if e.recommended and e.url and e.name not in chosen]
    if not chosen:
        raise click.UsageError("name one or more extractors (see `pigeonhole weights list`) or pass --recommended")
    failed = []
    for name in chosen:
        if name not in catalog:
            failed.append(name)
            click.echo(f"{name}: no such extractor (see `pigeonhole weights list`)", err=True)
            continue
        if catalog.is_present(name):
            click.echo(f"{name}: already present")
            continue
        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), transient=not sys.stdout.isatty()) as bar:
            task = bar.add_task(name, total=catalog.get(name).size)
            try:
                path = fetch(catalog, name,
                             progress=lambda got, total, t=task: bar.update(t, completed=got, total=total))
            except WeightsError as exc:
                failed.append(name)
                bar.stop()
                click.echo(f"{name}: {exc}", err=True)
                continue
        click.echo(f"{name}: fetched and verified ({path})")
    if failed:
        sys.exit(1)


@weights.command("import")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--name", help="name of an ONNX extractor (letters, digits, - _ .)")
@click.option("--size", type=int, help="ONNX: input height and width in pixels")
@click.option("--color", type=click.Choice(["RGB", "L"]), default="RGB", show_default=True, help="ONNX: colour order")
@click.option("--mean", help="ONNX: per-channel mean on pixels scaled to 0-1, e.g. 0.485,0.456,0.406 (default 0)")
@click.option("--std", help="ONNX: per-channel deviation on pixels scaled to 0-1, e.g. 0.229,0.224,0.225 (default 1)")
def import_weights(source: Path, name: str | None, size: int | None, color: str, mean: str | None,
                   std: str | None) -> None:
    """Copy weights into the weights directory and register them (verified).

    SOURCE is a folder (with a weights.json, or files the catalog knows by name, e.g. torchvision's downloads),
    or one ONNX file that maps an image batch (N, C, size, size), normalised as (pixel / 255 - mean) / std, to one
    vector per image: your own extractor, which the search then tries like the built-in ones.
    """
    from pigeonhole.learn.weights import WeightsError
    from pigeonhole.learn.weights_fetch import import_dir, import_onnx

    catalog = catalog_for(load_settings())
    try:
        if source.is_dir():
            entries = import_dir(catalog, source)
        elif source.suffix.lower() == ".onnx":
            if not name or not size:
                raise click.UsageError("an ONNX extractor needs --name and --size (and its --mean/--std)")
            channels = 1 if color == "L" else 3

            def floats(text: str | None, what: str, default: float) -> tuple[float, ...]:
                if text is None:
                    return (default,) * channels
                try:
                    return tuple(float(v) for v in text.split(","))
                except ValueError:
                    raise click.UsageError(f"--{what} takes numbers separated by commas") from None

            entries = [import_onnx(catalog, source, name=name, size=size, color=color,
                                   mean=floats(mean, "mean", 0.0), std=floats(std, "std", 1.0))]
        else:
            raise click.UsageError("import a folder, or an .onnx extractor file")
    except WeightsError as exc:
        raise click.ClickException(str(exc)) from exc
    for entry in entries:
        click.echo(f"imported {entry.name} ({entry.title or entry.architecture})")
