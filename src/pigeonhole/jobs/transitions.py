"""Every change of a job's status, in one place: the API's cancels and the dispatcher's claims and outcomes.

Each function works inside the caller's transaction and never commits, so an outcome is written together
with whatever the caller writes beside it (a handler's hook, the worker's last reports). The API and the
dispatcher change the same rows concurrently, so the statements that race (claim, cancel, the row lock an
outcome is written under, requeue) carry the state they expect in their ``WHERE``: whichever comes second
changes nothing. No Ray here; the ``on_failure`` and ``on_cancel`` hooks run here because they belong to
the transaction that ends the job.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from sqlalchemy import Row, func, update
from sqlalchemy.orm import Session

from pigeonhole.compute import nodes
from pigeonhole.compute.handlers import handler_for
from pigeonhole.db.base import utcnow
from pigeonhole.db.tables import Job, JobEvent
from pigeonhole.settings import Settings

log = logging.getLogger(__name__)

LOG_TAIL_CHARS = 8000
OUTCOME_SEQ = -1  # the job_events seq of an attempt's outcome: after every event the worker emitted

Retried = Literal["cancelled", "retried", "failed"]


def append_log(job: Job, line: str) -> None:
    job.log_tail = (job.log_tail + line.rstrip("\n") + "\n")[-LOG_TAIL_CHARS:]


# -- asked by the API -------------------------------------------------------------------------------
def cancel_if_queued(db: Session, owner_id: str, job_id: str) -> bool:
    """Queued → cancelled in one conditional statement (the dispatcher may be claiming it right now)."""
    now = utcnow()
    result = db.execute(update(Job).where(Job.id == job_id, Job.owner_id == owner_id, Job.status == "queued")
                        .values(status="cancelled", cancel_requested=True, finished_at=now, updated_at=now,
                                stage="cancelled before it started"))
    return bool(result.rowcount)


def request_cancel(db: Session, owner_id: str, job_id: str) -> bool:
    """A running job is only flagged: the dispatcher stops its Ray work, then calls :func:`cancel_running`."""
    result = db.execute(update(Job).where(Job.id == job_id, Job.owner_id == owner_id, Job.status == "running")
                        .values(cancel_requested=True, updated_at=utcnow()))
    return bool(result.rowcount)


# -- the dispatcher ---------------------------------------------------------------------------------
def start(db: Session, job_id: str, node_id: str) -> Row[tuple[int, Any, str]] | None:
    """Queued → running on ``node_id`` as the next attempt; None when it was cancelled or claimed meanwhile.
    Returns the attempt, the checkpoint to resume from and the kind."""
    now = utcnow()
    return db.execute(update(Job).where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
                      .values(status="running", attempt=Job.attempt + 1, node_id=node_id,
                              started_at=func.coalesce(Job.started_at, now), updated_at=now, stage="starting")
                      .returning(Job.attempt, Job.checkpoint, Job.kind)
                      .execution_options(synchronize_session=False)).first()


def lock_running(db: Session, job_id: str, attempt: int) -> Job | None:
    """Take the job's row (write lock on SQLite, row lock on PostgreSQL) if this attempt still runs and no
    cancel was asked: anything written in this transaction then happens before any later cancel."""
    locked = db.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.attempt == attempt,
                                          Job.cancel_requested.is_(False)).values(updated_at=utcnow()))
    if not locked.rowcount:
        db.rollback()
        return None
    return db.get(Job, job_id, populate_existing=True)


def succeed(db: Session, job: Job, attempt: int, result: dict[str, Any], node_id: str) -> None:
    """The row taken by :func:`lock_running` → succeeded (the caller has run ``on_success``)."""
    now = utcnow()
    job.status, job.result, job.progress, job.finished_at, job.eta_s = "succeeded", result, 1.0, now, 0.0
    job.stage = "finished"
    db.add(JobEvent(job_id=job.id, attempt=attempt, seq=OUTCOME_SEQ, type="succeeded", data={"node_id": node_id}))
    if job.affinity_key:
        nodes.record_cache(db, node_id, job.affinity_key)


def fail(db: Session, job: Job, reason: str, settings: Settings) -> None:
    handler = handler_for(job.kind)
    if handler is not None:
        try:
            handler(settings).on_failure(db, job, reason)
        except Exception:
            log.exception("on_failure of job %s raised", job.id)
    job.status, job.error, job.finished_at, job.eta_s = "failed", reason, utcnow(), None
    job.stage = "failed"
    db.add(JobEvent(job_id=job.id, attempt=job.attempt, seq=OUTCOME_SEQ, type="failed", data={"reason": reason}))


def fail_queued(db: Session, job_id: str, reason: str, settings: Settings) -> bool:
    """A job that cannot start (unknown kind, ``prepare`` refused it) fails without an attempt."""
    job = db.get(Job, job_id, populate_existing=True)
    if job is None or job.status != "queued":
        return False
    fail(db, job, reason, settings)
    return True


def cancel_running(db: Session, job: Job, settings: Settings) -> None:
    """A running job whose cancel was requested → cancelled (its Ray work has been told to stop)."""
    handler = handler_for(job.kind)
    if handler is not None:
        try:
            handler(settings).on_cancel(db, job)
        except Exception:
            log.exception("on_cancel of job %s raised", job.id)
    job.status, job.finished_at, job.stage, job.eta_s = "cancelled", utcnow(), "cancelled", None


def retry_or_fail(db: Session, job_id: str, attempt: int, reason: str, settings: Settings) -> Retried | None:
    """An attempt lost its Ray work (node, worker, restart): back to the queue until ``max_attempts``, then
    failed; cancelled instead if that was asked. None when the attempt no longer runs."""
    job = db.get(Job, job_id, populate_existing=True)
    if job is None or job.status != "running" or job.attempt != attempt:
        return None
    if job.cancel_requested:
        cancel_running(db, job, settings)
        return "cancelled"
    if job.attempt >= job.max_attempts:
        fail(db, job, f"{reason} The job was tried {attempt} times; giving up.", settings)
        return "failed"
    requeued = db.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.attempt == attempt)
                          .values(status="queued", node_id=None, queued_at=utcnow(), updated_at=utcnow(),
                                  stage=f"waiting to retry: {reason}"[:200]))
    if not requeued.rowcount:
        db.rollback()
        return None
    db.refresh(job)
    append_log(job, f"attempt {attempt} lost: {reason}")
    return "retried"


def requeue_interrupted(db: Session, job_id: str, attempt: int) -> None:
    """A dispatcher stopping cleanly: the job waits again and the interrupted attempt does not count."""
    db.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.attempt == attempt)
               .values(status="queued", attempt=Job.attempt - 1, node_id=None, queued_at=utcnow(),
                       stage="waiting: the dispatcher restarted"))
