"""Model and version queries; every statement starts from the owner."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Integer, Row, Select, and_, bindparam, func, select
from sqlalchemy.orm import Session

from pigeonhole.db.tables import Job, Model, ModelVersion

MAX_VERSION = 2**31 - 1  # version numbers are 32-bit integers in the database


def _storable(v: int | None) -> int | None:
    """A version number the database can compare: one past what its column holds names no version (-1), instead
    of failing to convert (a number from a URL can be any size)."""
    return v if v is None or -MAX_VERSION <= v <= MAX_VERSION else -1


def models_readable_by(owner_id: str) -> Select[tuple[Model]]:
    return select(Model).where(Model.owner_id == owner_id)


def model_readable_by(db: Session, owner_id: str, model_id: str) -> Model | None:
    return db.scalar(models_readable_by(owner_id).where(Model.id == model_id))


# Built once: executing the same statement object skips SQLAlchemy's per-statement compilation work, which
# matters on the prediction path (one of these per call).
_SERVING_ROW = (
    select(Model.dataset_id, ModelVersion.v, ModelVersion.onnx_key,
           ModelVersion.lineage["neighbours_key"].as_string())
    .outerjoin(ModelVersion, and_(ModelVersion.model_id == Model.id,
                                  ModelVersion.v == func.coalesce(bindparam("v", type_=Integer),
                                                                  Model.active_version)))
    .where(Model.owner_id == bindparam("owner_id"), Model.id == bindparam("model_id")))


def serving_row(connection: Connection, owner_id: str, model_id: str, v: int | None) -> Row[Any] | None:
    """What a prediction needs of a model and the version it asks for (``v``, or the active one), in one Core
    query: (dataset_id, version number or None, onnx_key, neighbours_key). None when the
    owner has no such model."""
    return connection.execute(_SERVING_ROW, {"owner_id": owner_id, "model_id": model_id, "v": _storable(v)}).first()


def versions_of(model_id: str) -> Select[tuple[ModelVersion]]:
    return select(ModelVersion).where(ModelVersion.model_id == model_id)


def version(db: Session, model_id: str, v: int) -> ModelVersion | None:
    return db.scalar(versions_of(model_id).where(ModelVersion.v == _storable(v)))


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
