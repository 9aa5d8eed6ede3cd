"""What the suspects check and the labelling queue share: a dataset read with one of the owner's models, as a job
whose ranked list lands in the blob store, and the newest such job read back.

Both start from the model's active version (it must keep head statistics), reuse a job already under way for the
same dataset and model, and answer ``none`` when there is nothing to read (never run, or results lost from the
store).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends
from pydantic import BaseModel, Field
from sqlalchemy import select

from pigeonhole.api.deps import DbSession, Reader, SettingsDep, Writer
from pigeonhole.db.tables import Dataset, Job
from pigeonhole.errors import Unprocessable
from pigeonhole.jobs.service import create_job
from pigeonhole.models.job_contracts import AnalysisJobParams, AnalysisJobResult
from pigeonhole.models.service import ModelService
from pigeonhole.storage.blob_types import BlobMissing
from pigeonhole.storage.blobs import BlobStore


class AnalysisStart(BaseModel):
    model_id: str = Field(description="the model whose extractor reads the images (any of yours)")


def _readers(db: DbSession, principal: Reader, settings: SettingsDep) -> ModelService:
    return ModelService(db, principal.user_id, settings)


def _writers(db: DbSession, principal: Writer, settings: SettingsDep) -> ModelService:
    return ModelService(db, principal.user_id, settings)


ReadModels = Annotated[ModelService, Depends(_readers)]
WriteModels = Annotated[ModelService, Depends(_writers)]


def latest(models: ModelService, kind: str, dataset_id: str, model_id: str) -> Job | None:
    return models.db.scalars(select(Job).where(Job.owner_id == models.owner_id, Job.kind == kind,
                                               Job.dataset_id == dataset_id, Job.model_id == model_id)
                             .order_by(Job.id.desc()).limit(1)).first()


def start(models: ModelService, kind: str, dataset: Dataset, model_id: str, what: str) -> Job:
    """A ``kind`` job reading ``dataset`` with the model's active version, or the one already under way. ``what``
    names the work for the sentence that refuses a version without head statistics."""
    model = models.get(model_id)
    version = models.serving_version(model, None)
    if version.head_key is None:
        raise Unprocessable(f"This model's version keeps no head statistics, so it cannot {what}. Retrain the "
                            "model first.", code="no_head")
    running = latest(models, kind, dataset.id, model.id)
    if running is not None and running.status in ("queued", "running"):
        return running
    params = AnalysisJobParams(model_id=model.id, version=version.v, dataset_id=dataset.id)
    return create_job(models.db, models.owner_id, kind, params.model_dump(mode="json"), model_id=model.id,
                      dataset_id=dataset.id, settings=models.settings)


def read_result(blobs: BlobStore, job: Job) -> tuple[AnalysisJobResult, dict[str, Any]] | None:
    """A finished job's result and its stored list, or None if the list is missing from the store."""
    outcome = AnalysisJobResult.model_validate(job.result)
    try:
        return outcome, json.loads(blobs.read_bytes(outcome.key))
    except (BlobMissing, FileNotFoundError):  # results lost (a store restored without them)
        return None
