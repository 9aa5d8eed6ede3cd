"""Job rules: create (with per-user limits), read, cancel. Called by routes and by other domains.

The API only writes rows here; the dispatcher process claims and runs them on Ray.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from pigeonhole.compute.handlers import Resources, handler_for
from pigeonhole.db.base import utcnow
from pigeonhole.db.tables import Job
from pigeonhole.errors import Conflict, NotFound, TooManyRequests, Unprocessable
from pigeonhole.jobs import repository as repo
from pigeonhole.jobs import transitions
from pigeonhole.settings import Settings


def create_job(db: Session, owner_id: str, kind: str, params: dict[str, Any], *, model_id: str | None = None,
               dataset_id: str | None = None, resources: Resources | None = None,
               settings: Settings) -> Job:
    """Queue a job of a registered ``kind`` for ``owner_id`` and return its row (flushed, not committed).

    ``params`` must be JSON-able; ``resources`` overrides the kind's declared needs; ``model_id`` /
    ``dataset_id`` say what the job is about (listing by model, data affinity).
    """
    handler = handler_for(kind)
    if handler is None:
        raise Unprocessable(f"There is no kind of job called '{kind}'.", code="unknown_job_kind")
    try:
        json.dumps(params)
    except (TypeError, ValueError) as exc:
        raise Unprocessable("The job's parameters must be plain data (text, numbers, lists).",
                            code="invalid_job_params") from exc
    limit = settings.jobs_max_queued_per_user
    repo.lock_owner(db, owner_id)
    if repo.count_by_status(db, owner_id, "queued") >= limit:
        raise TooManyRequests(f"You already have {limit} jobs waiting to run. Wait for some to finish, or cancel "
                              "some, before starting more.", retry_after_s=30, code="too_many_jobs")
    now = utcnow()
    job = Job(owner_id=owner_id, kind=kind, status="queued", params=dict(params), model_id=model_id,
              dataset_id=dataset_id, resources=(resources or handler.resources).as_dict(),
              placement=str(handler.placement), attempt=0, max_attempts=settings.job_max_attempts,
              progress=0.0, stage="waiting to start", metrics=[], log_tail="", queued_at=now, updated_at=now,
              created_at=now)
    job.affinity_key = handler.affinity_key(job)
    db.add(job)
    db.flush()
    return job


def get_job(db: Session, owner_id: str, job_id: str) -> Job:
    job = repo.job_readable_by(db, owner_id, job_id)
    if job is None:
        raise NotFound("There is no such job.", code="job_not_found")
    return job


def cancel_job(db: Session, owner_id: str, job_id: str) -> Job:
    """Queued: cancelled at once. Running: the dispatcher stops its Ray work and marks it cancelled within a
    second or so. Already cancelled: nothing to do. Finished: refused."""
    job = get_job(db, owner_id, job_id)
    if job.status == "cancelled":
        return job
    if job.status in ("succeeded", "failed"):
        raise Conflict(f"This job has already {'succeeded' if job.status == 'succeeded' else 'failed'}; "
                       "there is nothing to cancel.", code="job_finished")
    if not transitions.cancel_if_queued(db, owner_id, job_id):
        transitions.request_cancel(db, owner_id, job_id)
    db.refresh(job)
    return job
