"""Drift guard: notice when classes added without retraining lag behind, suggest (or start) a retrain.

A version's extractor may have been fine-tuned (or trained from scratch) on the classes of its
training. Classes added later by head-only updates are then seen through features never shaped for
them, and a full retrain can do better. Each expand job measures that gap on validation images
(``metrics["drift"]``, see ``learn.evaluate.recall_gap``); this module turns the gap of the version
that serves into a suggestion on the model and, with the model's ``auto_retrain``, into a retrain job.
The retrain's results serve only if they beat the active version (``settle_version(guarded=True)``).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from pigeonhole.db.tables import Model, ModelVersion
from pigeonhole.errors import PigeonholeError
from pigeonhole.models import repository as repo
from pigeonhole.models.service import ModelService
from pigeonhole.settings import Settings

log = logging.getLogger(__name__)

REASON = ("Classes added since the last training are recognised less well (about {points} points) than the "
          "original ones; retraining on all classes would fix that.")


def suggestion_for(metrics: dict[str, Any] | None, settings: Settings) -> dict[str, Any] | None:
    """``{gap_points, reason}`` when the version's measured gap exceeds the setting, else None."""
    drift = (metrics or {}).get("drift")
    if not isinstance(drift, dict) or drift.get("gap_points") is None:
        return None
    gap = float(drift["gap_points"])
    if gap <= settings.drift_retrain_gap_points:
        return None
    return {"gap_points": round(gap, 2), "reason": REASON.format(points=round(gap))}


def after_expand(db: Session, model: Model, row: ModelVersion, settings: Settings) -> str | None:
    """Update the model's suggestion from the version an expand job made; returns a retrain job's id if
    one was started.

    Only a version that now serves speaks for the model: one kept in history (a newer training result
    serves, or the classes changed again and another expand follows) says nothing about what users get.
    """
    if model.active_version != row.v:
        return None
    model.retrain_suggested = suggestion_for(row.metrics, settings)
    if model.retrain_suggested is None or not model.auto_retrain or repo.training_in_progress(db, model.id):
        return None
    return start_retrain(db, model, settings)


def start_retrain(db: Session, model: Model, settings: Settings) -> str | None:
    """Start the retrain the drift guard asks for; a refusal (queue full, dataset gone) is logged and the
    suggestion stays, so the class change that triggered it still succeeds."""
    try:
        ModelService(db, model.owner_id, settings).retrain(model)
    except PigeonholeError as exc:
        log.warning("automatic retrain of model %s not started: %s", model.id, exc)
        return None
    return model.job_id


def training_version_recorded(model: Model) -> None:
    """A newer training version exists: the suggestion it would have answered no longer applies."""
    model.retrain_suggested = None
