"""CLI commands about the data itself: labels that look wrong, images waiting for a label, feedback from production.

``pigeonhole dataset suspects`` and ``pigeonhole dataset suggestions`` start the server's check or ordering when
there is none yet (or it is stale, or ``--again``), wait for it, and print the result; ``--export`` saves the
labelling queue as CSV for another tool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pigeonhole.client.clients import Client
from pigeonhole.client.commands import (
    EXIT_JOB_FAILED,
    EXIT_NOT_FOUND,
    CliError,
    _call,
    _client,
    _emit,
    _follow,
    _table,
    console,
    dataset,
    json_option,
    model,
)


def _fresh(client: Client, read: Any, start: Any, again: bool) -> dict[str, Any]:
    """The newest result; started (and waited for) first when there is none, it is stale, or ``again``."""
    page = _call(read)
    if again or page["state"] in ("none", "failed") or page.get("stale"):
        job = _call(start)
        page = {"state": "checking", "job_id": job["id"]}
    if page["state"] == "checking" and page.get("job_id"):
        done = _follow(client, page["job_id"])
        if done["status"] != "succeeded":
            raise CliError(done.get("error") or f"The job was {done['status']}.", EXIT_JOB_FAILED)
        page = _call(read)
    return page


@dataset.command("suspects")
@click.argument("dataset_id")
@click.option("--model", "model_id", required=True, help="the model whose features check the labels")
@click.option("--again", is_flag=True, help="check again even if a recent check exists")
@json_option
def dataset_suspects(dataset_id: str, model_id: str, again: bool, as_json: bool) -> None:
    """Images whose label looks wrong, most likely first, with the label the model suggests."""
    with _client() as client:
        page = _fresh(client, lambda: client.suspects(dataset_id, model_id),
                      lambda: client.check_labels(dataset_id, model_id), again)
    rows = [{**item, "confidence": f"{item['confidence']:.0%}", "conflict": "yes" if item["conflict"] else ""}
            for item in page["items"]]
    _emit(page, as_json, lambda _: _table(rows, ["image_id", "label", "suggested_label", "confidence", "conflict"],
                                          f"{len(rows)} label(s) to look at of {page['images_checked']} checked"))


@dataset.command("suggestions")
@click.argument("dataset_id")
@click.option("--model", "model_id", required=True, help="the model that orders the images and guesses their class")
@click.option("--again", is_flag=True, help="order again even if a recent ordering exists")
@click.option("--export", "export_to", type=click.Path(path_type=Path), help="save the whole queue as CSV")
@json_option
def dataset_suggestions(dataset_id: str, model_id: str, again: bool, export_to: Path | None, as_json: bool) -> None:
    """The images waiting for a label, the most worth labelling first, each with the model's guess."""
    with _client() as client:
        page = _fresh(client, lambda: client.queue(dataset_id, model_id),
                      lambda: client.order_queue(dataset_id, model_id), again)
        if export_to is not None:
            _call(lambda: client.export_queue(dataset_id, model_id, export_to))
            console.print(f"Saved {export_to}.")
    rows = [{"pool_id": i["pool_id"], "guess": i["guesses"][0]["label"] if i["guesses"] else "",
             "confidence": f"{i['guesses'][0]['confidence']:.0%}" if i["guesses"] else "",
             "uncertainty": f"{i['uncertainty']:.2f}"} for i in page["items"]]
    _emit(page, as_json, lambda _: _table(rows, ["pool_id", "guess", "confidence", "uncertainty"],
                                          f"{len(rows)} image(s) waiting for a label"))


@model.command("feedback")
@click.argument("model_id")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--label", help="what the image really shows")
@click.option("--unsure", is_flag=True, help="you cannot tell either: it waits for someone to label it")
@click.option("--prediction-id", help="the prediction_id of the answer it is about")
@json_option
def model_feedback(model_id: str, image: Path, label: str | None, unsure: bool, prediction_id: str | None,
                   as_json: bool) -> None:
    """Send back an image a prediction got wrong (--label) or could not settle (--unsure)."""
    if bool(label) == unsure:
        raise CliError("Give either --label (what the image is) or --unsure.", 2)
    if not image.is_file():
        raise CliError(f"There is no file at {image}.", EXIT_NOT_FOUND)
    with _client() as client:
        result = _call(lambda: client.feedback(model_id, image, label=label, unsure=unsure,
                                               prediction_id=prediction_id))
    where = "added to the dataset" if result["destination"] == "dataset" else "waiting for a label"
    _emit(result, as_json, lambda r: console.print(
        "Already there: nothing added." if r["duplicate"] else
        f"Thanks: the image is {where}." + (" The model is growing with the feedback." if r["grow_job_id"] else "")))
