"""Suspected mislabels of a dataset, found with one of the owner's models: start a check, read the results.

The results are the newest check of the dataset with that model; what changed since is dropped when they are
read (deleted images, changed labels, labels the owner kept), and ``stale`` says when the dataset or the
model's active version has moved on, so the page can offer to check again (seconds: features are cached).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from pigeonhole.datasets.routes import ReadableDataset, WritableDataset
from pigeonhole.db.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from pigeonhole.db.tables import DatasetImage
from pigeonhole.jobs.schemas import JobPublic, job_public
from pigeonhole.models.dataset_analyses import AnalysisStart, ReadModels, WriteModels, latest, read_result, start
from pigeonhole.models.job_contracts import AnalysisJobParams

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])


class SuspectPublic(BaseModel):
    image_id: str
    sha256: str
    label: str = Field(description="the image's label now")
    suggested_label: str = Field(description="the class a model that never saw the image prefers")
    confidence: float = Field(description="that model's probability for the suggestion")
    label_probability: float = Field(description="the same for the image's label")
    conflict: bool = Field(description="the same image is also in another class: one of its labels is wrong")
    thumbnail_url: str
    content_url: str


class SuspectsPage(BaseModel):
    state: Literal["none", "checking", "ready", "failed"] = Field(
        description="none: never checked with this model; checking: follow job_id; failed: see error")
    model_id: str
    version: int | None = None
    job_id: str | None = None
    error: str | None = None
    checked_at: datetime | None = None
    images_checked: int = 0
    stale: bool = Field(False, description="images were added, moved or deleted, or the model has a newer active "
                                           "version, since the check: check again to include them")
    items: list[SuspectPublic]
    next_cursor: str | None = None


@router.post("/{dataset_id}/suspects", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def check(dataset: WritableDataset, body: AnalysisStart, models: WriteModels) -> JobPublic:
    """Look for images whose label looks wrong, with the model's active version (a job of seconds to minutes).
    A check already under way for this dataset and model is returned instead of starting another."""
    return job_public(start(models, "suspects", dataset, body.model_id, "check labels"))


@router.get("/{dataset_id}/suspects", response_model=SuspectsPage)
def suspects(dataset: ReadableDataset, request: Request, models: ReadModels,
             model_id: str = Query(description="the model the check was made with"),
             cursor: str | None = None,
             limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)) -> SuspectsPage:
    """The images whose label looks wrong, most likely first (the same image under two labels before all).
    Images deleted or moved since the check, and labels you kept, are left out."""
    model = models.get(model_id)
    job = latest(models, "suspects", dataset.id, model.id)
    if job is None:
        return SuspectsPage(state="none", model_id=model.id, items=[])
    params = AnalysisJobParams.model_validate(job.params)
    page = SuspectsPage(state="checking", model_id=model.id, version=params.version, job_id=job.id, items=[])
    if job.status in ("failed", "cancelled"):
        page.state, page.error = "failed", job.error or f"The check was {job.status}."
        return page
    if job.status != "succeeded" or job.result is None:
        return page
    read = read_result(request.app.state.blob_store, job)
    if read is None:
        return SuspectsPage(state="none", model_id=model.id, items=[])
    outcome, stored = read
    ids = [item["image_id"] for item in stored["items"]]
    now = {image_id: (label, kept) for image_id, label, kept in models.db.execute(
        select(DatasetImage.id, DatasetImage.label, DatasetImage.label_kept)
        .where(DatasetImage.dataset_id == dataset.id, DatasetImage.id.in_(ids)))} if ids else {}
    current = [item for item in stored["items"]
               if item["image_id"] in now and now[item["image_id"]] == (item["label"], False)]
    count = models.db.scalar(select(func.count()).select_from(DatasetImage)
                             .where(DatasetImage.dataset_id == dataset.id))
    start = int(cursor) if cursor and cursor.isdigit() else 0
    chosen = current[start:start + limit]
    base = f"/api/v1/datasets/{dataset.id}/images"
    page.state, page.checked_at, page.images_checked = "ready", job.finished_at, outcome.images
    page.stale = (count != outcome.images or dataset.updated_at > (job.queued_at or dataset.updated_at)
                  or model.active_version != params.version)
    page.items = [SuspectPublic(**item, thumbnail_url=f"{base}/{item['image_id']}/thumbnail",
                                content_url=f"{base}/{item['image_id']}/content") for item in chosen]
    page.next_cursor = str(start + limit) if start + limit < len(current) else None
    return page
