"""HTTP routes for jobs: list (optionally for one model), detail with progress, cancel."""

from __future__ import annotations

from fastapi import APIRouter, Query

from pigeonhole.api.deps import DbSession, Reader, Writer
from pigeonhole.api.schemas import ListPage
from pigeonhole.db.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, paginate
from pigeonhole.db.tables import Job
from pigeonhole.jobs import repository as repo
from pigeonhole.jobs import service
from pigeonhole.jobs.schemas import JobPublic, JobStatus, job_public

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


@router.get("", response_model=ListPage[JobPublic])
def list_jobs(principal: Reader, db: DbSession, model_id: str | None = None, status: JobStatus | None = None,
              cursor: str | None = None, limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
              ) -> ListPage[JobPublic]:
    """Your jobs, newest first; ``model_id`` keeps one model's jobs only."""
    statement = repo.jobs_readable_by(principal.user_id)
    if model_id is not None:
        statement = statement.where(Job.model_id == model_id)
    if status is not None:
        statement = statement.where(Job.status == status)
    page = paginate(db, statement, Job.id, cursor=cursor, limit=limit)
    return ListPage(items=[job_public(j) for j in page.items], next_cursor=page.next_cursor)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, principal: Reader, db: DbSession) -> JobPublic:
    """A job with its status, progress 0-1, stage, ETA, metric history and log tail."""
    return job_public(service.get_job(db, principal.user_id, job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, principal: Writer, db: DbSession) -> JobPublic:
    """Stop a job. A waiting job is cancelled at once; a running one within a second or two. Model versions
    it had already activated stay."""
    return job_public(service.cancel_job(db, principal.user_id, job_id))
