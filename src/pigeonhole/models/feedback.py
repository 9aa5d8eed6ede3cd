"""Feedback from production: a program that called predict sends the image back, saying what it really is or that
it cannot tell. One call, allowed to a token with only the ``predict`` scope (it adds to the model's dataset but
cannot read it).

With a label the image joins the model's dataset under that label (``images.origin = feedback``); "unsure" puts it
in the dataset's to-label pool, where the labelling queue offers it. The model grows with the labelled ones on the
owner's schedule: by itself after ``models.grow_after_feedback`` of them since its active version, or when the
owner asks (``POST /models/{id}/refresh``).
"""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pigeonhole.api.deps import DbSession, Predictor, SettingsDep
from pigeonhole.datasets.ingest import Ingestor
from pigeonhole.db.tables import Dataset, DatasetImage, Job, Model
from pigeonhole.errors import Conflict, PigeonholeError, Unprocessable
from pigeonhole.models import repository as repo
from pigeonhole.models.schemas import FeedbackResult
from pigeonhole.models.service import ModelService, no_such_model
from pigeonhole.settings import Settings

router = APIRouter(prefix="/api/v1/models", tags=["models"])


def _model(model_id: str, principal: Predictor, db: DbSession) -> Model:
    """Resolved before the form is read: another user's model is a 404 whatever was sent."""
    model = repo.model_readable_by(db, principal.user_id, model_id)
    if model is None:
        raise no_such_model()
    return model


@router.post("/{model_id}/feedback", status_code=status.HTTP_201_CREATED, response_model=FeedbackResult)
def feedback(model: Annotated[Model, Depends(_model)], request: Request, db: DbSession, settings: SettingsDep,
             file: UploadFile = File(description="the image the prediction was about"),
             label: str | None = Form(None, description="what the image really shows"),
             unsure: bool = Form(False, description="you cannot tell either: someone should label it"),
             prediction_id: str | None = Form(None, max_length=80, description="the answer's prediction_id"),
             ) -> FeedbackResult:
    """Send back an image a prediction got wrong ("it is X", ``label``) or could not settle (``unsure``)."""
    if bool(label and label.strip()) == unsure:
        raise Unprocessable("Say what the image is ('label'), or that you are not sure ('unsure'): one of the two.",
                            code="label_or_unsure")
    dataset = db.get(Dataset, model.dataset_id) if model.dataset_id else None
    if dataset is None:
        raise Conflict("This model's dataset was deleted, so there is nowhere to add the image.", code="no_dataset")
    state = request.app.state
    ingestor = Ingestor(db, dataset, settings=settings, blobs=state.blob_store, thumbnails=state.thumbnails,
                        pool="feedback" if unsure else None, origin="feedback")
    name = f"feedback-{prediction_id}" if prediction_id else (file.filename or "feedback")
    ingestor.add_image(file.file, name[:255], "" if unsure else (label or ""))
    report = ingestor.finish()
    if report.rejected:
        rejection = report.rejected[0]
        raise Unprocessable(rejection.reason, code=rejection.code)
    result = FeedbackResult(destination="pool" if unsure else "dataset", duplicate=report.accepted == 0)
    if not unsure and report.accepted:
        result.grow_job_id = _grow_if_due(db, model, settings)
    return result


def feedback_since_version(db: Session, model: Model) -> int:
    """Images sent back with a label since the model's active version was made."""
    if model.active_version is None or model.dataset_id is None:
        return 0
    version = repo.version(db, model.id, model.active_version)
    if version is None:
        return 0
    return int(db.scalar(select(func.count()).select_from(DatasetImage).where(
        DatasetImage.dataset_id == model.dataset_id, DatasetImage.origin == "feedback",
        DatasetImage.created_at > version.created_at)) or 0)


def _grow_if_due(db: Session, model: Model, settings: Settings) -> str | None:
    """Start growing the model with the feedback once the owner's count is reached (and nothing else runs)."""
    every = model.grow_after_feedback or 0
    if every <= 0 or feedback_since_version(db, model) < every:
        return None
    busy = db.scalar(select(Job.id).where(Job.model_id == model.id, Job.status.in_(("queued", "running")))
                     .limit(1))
    if busy is not None:
        return None  # the next feedback tries again once that job has made its version
    with contextlib.suppress(PigeonholeError):  # e.g. a class with too few images left: the owner is told there
        return ModelService(db, model.owner_id, settings).refresh(model, None).id
    return None
