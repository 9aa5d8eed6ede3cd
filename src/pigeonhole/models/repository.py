"""Model and version queries; every statement starts from the owner."""

from __future__ import annotations

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from pigeonhole.db.tables import Job, Model, ModelVersion


def models_readable_by(owner_id: str) -> Select[tuple[Model]]:
    return select(Model).where(Model.owner_id == owner_id)


def model_readable_by(db: Session, owner_id: str, model_id: str) -> Model | None:
    return db.scalar(models_readable_by(owner_id).where(Model.id == model_id))


def versions_of(model_id: str) -> Select[tuple[ModelVersion]]:
    return select(ModelVersion).where(ModelVersion.model_id == model_id)


def version(db: Session, model_id: str, v: int) -> ModelVersion | None:
    return db.scalar(versions_of(model_id).where(ModelVersion.v == v))


def next_version_number(db: Session, model_id: str) -> int:
    return int(db.scalar(select(func.coalesce(func.max(ModelVersion.v), 0)).where(ModelVersion.model_id == model_id))
               or 0) + 1


def active_versions(db: Session, models: list[Model]) -> dict[str, ModelVersion]:
    """The active version of each model, in one query."""
    wanted = [(m.id, m.active_version) for m in models if m.active_version is not None]
    if not wanted:
        return {}
    rows = db.scalars(select(ModelVersion).where(ModelVersion.model_id.in_([m for m, _ in wanted])))
    active = dict(wanted)
    return {row.model_id: row for row in rows if active.get(row.model_id) == row.v}


def running_jobs(db: Session, models: list[Model]) -> set[str]:
    """Ids of the models whose latest training job is running now."""
    ids = [m.job_id for m in models if m.job_id]
    if not ids:
        return set()
    running = set(db.scalars(select(Job.id).where(Job.id.in_(ids), Job.status == "running")))
    return {m.id for m in models if m.job_id in running}


TRAINING_KINDS = ("train", "retrain")


def training_in_progress(db: Session, model_id: str) -> bool:
    """Whether a training or retrain job of the model is queued or running."""
    return db.scalar(select(Job.id).where(Job.model_id == model_id, Job.kind.in_(TRAINING_KINDS),
                                          Job.status.in_(("queued", "running"))).limit(1)) is not None
