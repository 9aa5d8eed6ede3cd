"""Compute tables: jobs and what they reported, compute nodes (with persisted drain flags), which node
caches which dataset/model (data affinity), and the dispatcher's lease.

Only the API (creating and cancelling jobs) and the dispatcher (everything else) write these rows;
Ray workers never touch the database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from pigeonhole.db.base import Base, CreatedMixin, IdMixin, UTCDateTime, utcnow

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATUSES = ("queued", "running")


class Job(IdMixin, CreatedMixin, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_owner_status", "owner_id", "status"),
        Index("ix_jobs_model_id", "model_id"),
    )

    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    kind: Mapped[str] = mapped_column(String(40), nullable=False)
    status: Mapped[str] = mapped_column(String(12), default="queued", nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    # What the job is about (no foreign keys: a job's record outlives a deleted model or dataset).
    model_id: Mapped[str | None] = mapped_column(String(26))
    dataset_id: Mapped[str | None] = mapped_column(String(26))
    # Placement: what it asks Ray for, its placement class, and the cache it would like to find.
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    placement: Mapped[str] = mapped_column(String(16), nullable=False)
    affinity_key: Mapped[str | None] = mapped_column(String(80))
    node_id: Mapped[str | None] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, nullable=False)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    # Progress as the worker last reported it.
    progress: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    stage: Mapped[str | None] = mapped_column(String(200))
    eta_s: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    log_tail: Mapped[str] = mapped_column(Text, default="", nullable=False)
    checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class JobEvent(IdMixin, CreatedMixin, Base):
    """An applied worker event or outcome. The unique key makes a replay a no-op (exactly once)."""

    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "attempt", "seq", name="uq_job_events_job_attempt_seq"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    seq: Mapped[int] = mapped_column(Integer, nullable=False)  # -1: the attempt's outcome
    type: Mapped[str] = mapped_column(String(40), nullable=False)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)


class ComputeNode(Base):
    """A Ray node as the dispatcher last saw it. ``draining`` is set by admins and survives restarts."""

    __tablename__ = "compute_nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the Ray node id
    address: Mapped[str] = mapped_column(String(255), nullable=False)
    hostname: Mapped[str | None] = mapped_column(String(255))
    alive: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    draining: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    node_class: Mapped[str] = mapped_column(String(16), default="cpu", nullable=False)  # cpu or gpu
    resources_total: Mapped[dict[str, float]] = mapped_column(JSON, nullable=False)
    resources_available: Mapped[dict[str, float]] = mapped_column(JSON, nullable=False)
    cache_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    cache_free_bytes: Mapped[int | None] = mapped_column(BigInteger)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class NodeCacheEntry(Base):
    """``node_id`` holds the cache for ``key`` (``dataset:<id>`` or ``model:<id>``): data affinity."""

    __tablename__ = "node_cache_entries"

    node_id: Mapped[str] = mapped_column(ForeignKey("compute_nodes.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(80), primary_key=True, index=True)
    used_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class DispatcherLease(Base):
    """Only the holder of an unexpired lease dispatches; a crashed holder's lease simply expires."""

    __tablename__ = "dispatcher_leases"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
