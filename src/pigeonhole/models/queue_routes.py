"""The labelling queue of a dataset, ordered with one of the owner's models: start an ordering, read it (JSON
pages for the labelling page, or the whole queue as CSV for another tool)."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from pigeonhole.datasets.routes import ReadableDataset, WritableDataset
from pigeonhole.db.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from pigeonhole.db.tables import PoolImage
from pigeonhole.jobs.schemas import JobPublic, job_public
from pigeonhole.models.dataset_analyses import AnalysisStart, ReadModels, WriteModels, latest, read_result, start
from pigeonhole.models.job_contracts import AnalysisJobParams

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])


class Guess(BaseModel):
    label: str
    confidence: float


class QueueItem(BaseModel):
    pool_id: str
    sha256: str
    uncertainty: float = Field(description="1 - the gap between the model's two likeliest classes")
    guesses: list[Guess] = Field(description="the model's likeliest classes, likeliest first")
    thumbnail_url: str
    content_url: str


class QueuePage(BaseModel):
    state: Literal["none", "checking", "ready", "failed"] = Field(
        description="none: never ordered with this model; checking: follow job_id; failed: see error")
    model_id: str
    version: int | None = None
    job_id: str | None = None
    error: str | None = None
    ordered_at: datetime | None = None
    waiting: int = Field(0, description="images waiting for a label now")
    stale: bool = Field(False, description="images were added to the pool, or the model has a newer active "
                                           "version, since the ordering: order again to include them")
    items: list[QueueItem]
    next_cursor: str | None = None


@router.post("/{dataset_id}/queue", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def order(dataset: WritableDataset, body: AnalysisStart, models: WriteModels) -> JobPublic:
    """Order the images waiting for a label by what a label would teach the model (its active version): a job
    of seconds. One already under way for this dataset and model is returned instead of starting another."""
    return job_public(start(models, "queue", dataset, body.model_id, "order images for labelling"))


def _ranked(dataset_id: str, request: Request, models: ReadModels, model_id: str,
            ) -> tuple[QueuePage, list[dict[str, Any]]]:
    """The page's facts and the ordered items still waiting (empty unless an ordering is ready)."""
    model = models.get(model_id)
    job = latest(models, "queue", dataset_id, model.id)
    page = QueuePage(state="none", model_id=model.id, items=[])
    page.waiting = int(models.db.scalar(select(func.count()).select_from(PoolImage)
                                        .where(PoolImage.dataset_id == dataset_id)) or 0)
    if job is None:
        return page, []
    params = AnalysisJobParams.model_validate(job.params)
    page.state, page.version, page.job_id = "checking", params.version, job.id
    if job.status in ("failed", "cancelled"):
        page.state, page.error = "failed", job.error or f"The ordering was {job.status}."
        return page, []
    if job.status != "succeeded" or job.result is None:
        return page, []
    read = read_result(request.app.state.blob_store, job)
    if read is None:
        page.state = "none"
        return page, []
    _, stored = read
    ids = [item["pool_id"] for item in stored["items"]]
    present = set(models.db.scalars(select(PoolImage.id).where(PoolImage.dataset_id == dataset_id,
                                                               PoolImage.id.in_(ids)))) if ids else set()
    current = [item for item in stored["items"] if item["pool_id"] in present]
    page.state, page.ordered_at = "ready", job.finished_at
    page.stale = page.waiting > len(current) or model.active_version != page.version
    return page, current


@router.get("/{dataset_id}/queue", response_model=QueuePage)
def queue(dataset: ReadableDataset, request: Request, models: ReadModels,
          model_id: str = Query(description="the model the queue was ordered with"), cursor: str | None = None,
          limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)) -> QueuePage:
    """The images waiting for a label, the most worth labelling first; those labelled or removed since the
    ordering are left out."""
    page, current = _ranked(dataset.id, request, models, model_id)
    start_at = int(cursor) if cursor and cursor.isdigit() else 0
    base = f"/api/v1/datasets/{dataset.id}/pool"
    page.items = [QueueItem(**item, thumbnail_url=f"{base}/{item['pool_id']}/thumbnail",
                            content_url=f"{base}/{item['pool_id']}/content")
                  for item in current[start_at:start_at + limit]]
    page.next_cursor = str(start_at + limit) if start_at + limit < len(current) else None
    return page


@router.get("/{dataset_id}/queue/export", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def export_queue(dataset: ReadableDataset, request: Request, models: ReadModels,
                 model_id: str = Query(description="the model the queue was ordered with")) -> Response:
    """The whole queue as a CSV file, in order, for another labelling tool (empty until an ordering is ready)."""
    return _csv(_ranked(dataset.id, request, models, model_id)[1])


def _csv(items: list[dict[str, Any]]) -> Response:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["rank", "pool_id", "sha256", "uncertainty", "guess", "confidence", "second_guess",
                     "second_confidence"])
    for rank, item in enumerate(items, start=1):
        guesses = item["guesses"] + [{"label": "", "confidence": ""}] * 2
        writer.writerow([rank, item["pool_id"], item["sha256"], item["uncertainty"], guesses[0]["label"],
                         guesses[0]["confidence"], guesses[1]["label"], guesses[1]["confidence"]])
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="labelling-queue.csv"'})
