"""Suspected mislabels of a dataset, found with one of the owner's models: start a check, read the results.

The results are the newest check of the dataset with that model; what changed since is dropped when they are
read (deleted images, changed labels, labels the owner kept), and ``stale`` says when the dataset or the
model's active version has moved on, so the page can offer to check again (seconds: features are cached).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from pigeonhole.api.deps import DbSession, Reader, SettingsDep, Writer
from pigeonhole.datasets.routes import ReadableDataset, WritableDataset
from pigeonhole.db.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from pigeonhole.db.tables import DatasetImage, Job
from pigeonhole.errors import Unprocessable
from pigeonhole.jobs.schemas import JobPublic, job_public
from pigeonhole.jobs.service import create_job
from pigeonhole.models.job_contracts import SuspectsJobParams, SuspectsJobResult
from pigeonhole.models.service import ModelService
from pigeonhole.storage.blob_types import BlobMissing

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


class SuspectsCheck(BaseModel):
    model_id: str = Field(description="the model whose extractor reads the images (any of yours)")


def _models(db: DbSession, principal: Reader, settings: SettingsDep) -> ModelService:
    return ModelService(db, principal.user_id, settings)


def _writer_models(db: DbSession, principal: Writer, settings: SettingsDep) -> ModelService:
    return ModelService(db, principal.user_id, settings)


def _latest(db: DbSession, owner_id: str, dataset_id: str, model_id: str) -> Job | None:
    return db.scalars(select(Job).where(Job.owner_id == owner_id, Job.kind == "suspects",
                                        Job.dataset_id == dataset_id, Job.model_id == model_id)
                      .order_by(Job.id.desc()).limit(1)).first()


@router.post("/{dataset_id}/suspects", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def check(dataset: WritableDataset, body: SuspectsCheck,
          models: Annotated[ModelService, Depends(_writer_models)]) -> JobPublic:
    """Look for images whose label looks wrong, with the model's active version (a job of seconds to minutes).
    A check already under way for this dataset and model is returned instead of starting another."""
    model = models.get(body.model_id)
    version = models.serving_version(model, None)
    if version.head_key is None:
        raise Unprocessable("This model's version keeps no head statistics, so it cannot check labels. Retrain "
                            "the model first.", code="no_head")
    running = _latest(models.db, models.owner_id, dataset.id, model.id)
    if running is not None and running.status in ("queued", "running"):
        return job_public(running)
    params = SuspectsJobParams(model_id=model.id, version=version.v, dataset_id=dataset.id)
    job = create_job(models.db, models.owner_id, "suspects", params.model_dump(mode="json"), model_id=model.id,
                     dataset_id=dataset.id, settings=models.settings)
    return job_public(job)


@router.get("/{dataset_id}/suspects", response_model=SuspectsPage)
def suspects(dataset: ReadableDataset, request: Request,
             models: Annotated[ModelService, Depends(_models)],
             model_id: str = Query(description="the model the check was made with"),
             cursor: str | None = None,
             limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)) -> SuspectsPage:
    """The images whose label looks wrong, most likely first (the same image under two labels before all).
    Images deleted or moved since the check, and labels you kept, are left out."""
    model = models.get(model_id)
    job = _latest(models.db, models.owner_id, dataset.id, model.id)
    if job is None:
        return SuspectsPage(state="none", model_id=model.id, items=[])
    params = SuspectsJobParams.model_validate(job.params)
    page = SuspectsPage(state="checking", model_id=model.id, version=params.version, job_id=job.id, items=[])
    if job.status in ("failed", "cancelled"):
        page.state, page.error = "failed", job.error or f"The check was {job.status}."
        return page
    if job.status != "succeeded" or job.result is None:
        return page
    outcome = SuspectsJobResult.model_validate(job.result)
    try:
        stored = json.loads(request.app.state.blob_store.read_bytes(outcome.key))
    except (BlobMissing, FileNotFoundError):  # results lost (a store restored without them): never checked
        return SuspectsPage(state="none", model_id=model.id, items=[])
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
