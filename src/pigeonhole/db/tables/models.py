"""Trained models and their immutable versions. Artifacts (ONNX, head statistics, card) live in the blob store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from pigeonhole.db.base import Base, CreatedMixin, IdMixin, UTCDateTime, utcnow

MODEL_STATUSES = ("queued", "training", "ready", "failed", "cancelled")


class Model(IdMixin, CreatedMixin, Base):
    __tablename__ = "models"

    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    # A model keeps serving when its dataset is deleted; it only loses the ability to grow.
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    status: Mapped[str] = mapped_column(String(12), default="queued", nullable=False)
    active_version: Mapped[int | None] = mapped_column(Integer)
    # The classes the user wants now; versions converge to them (expand jobs). ``classes_rev`` counts
    # changes, so two concurrent changes cannot overwrite each other (compare-and-set).
    requested_classes: Mapped[list[str] | None] = mapped_column(JSON)
    classes_rev: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    target_accuracy: Mapped[float | None] = mapped_column(Float)
    time_budget_s: Mapped[int] = mapped_column(Integer, nullable=False)
    preference: Mapped[str] = mapped_column(String(10), nullable=False)
    job_id: Mapped[str | None] = mapped_column(String(26))  # the latest training job
    # Drift guard: start a retrain by itself when classes added without retraining lag behind; and the
    # suggestion shown until a newer training version exists ({gap_points, reason}, or null).
    auto_retrain: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false(), nullable=False)
    retrain_suggested: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Grow by itself once this many images have come back from production with a label since the active version
    # (0: only when the owner asks, POST /models/{id}/refresh).
    grow_after_feedback: Mapped[int] = mapped_column(Integer, default=0, server_default="0", nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class ModelVersion(IdMixin, CreatedMixin, Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "v", name="uq_model_versions_model_v"),)

    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True, nullable=False)
    v: Mapped[int] = mapped_column(Integer, nullable=False)
    classes: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    input_spec: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    threshold: Mapped[float] = mapped_column(Float, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    throughput: Mapped[float | None] = mapped_column(Float)  # images per second in batches
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    onnx_key: Mapped[str] = mapped_column(String(300), nullable=False)
    head_key: Mapped[str | None] = mapped_column(String(300))
    card_key: Mapped[str | None] = mapped_column(String(300))
    job_id: Mapped[str | None] = mapped_column(String(26))
