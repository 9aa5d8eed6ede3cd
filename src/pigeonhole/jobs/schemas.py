"""Job response bodies (jobs are created by other domains, never directly by clients)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from pigeonhole.db.tables import Job

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobPublic(BaseModel):
    id: str
    kind: str
    status: JobStatus
    progress: float = Field(description="0-1")
    stage: str | None = Field(description="what the job is doing now, in words")
    eta_s: float | None = Field(description="estimated seconds left")
    model_id: str | None
    dataset_id: str | None
    attempt: int = Field(description="how many times it was started (a lost node or worker makes it retry)")
    max_attempts: int
    cancel_requested: bool
    metrics: list[dict[str, Any]] = Field(description="metric history, one point per report (for curves)")
    log_tail: str
    result: dict[str, Any] | None
    error: str | None = Field(description="why it failed, in words")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class JobAdmin(JobPublic):
    owner_id: str
    params: dict[str, Any]
    resources: dict[str, Any]
    placement: str
    affinity_key: str | None
    node_id: str | None


def job_public(job: Job) -> JobPublic:
    return JobPublic.model_validate(job, from_attributes=True)


def job_admin(job: Job) -> JobAdmin:
    return JobAdmin.model_validate(job, from_attributes=True)
