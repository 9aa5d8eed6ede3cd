"""Job queries. User-facing statements start from the owner, so other users' jobs never match."""

from __future__ import annotations

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from pigeonhole.db.tables import Job, User


def jobs_readable_by(owner_id: str) -> Select[tuple[Job]]:
    return select(Job).where(Job.owner_id == owner_id)


def job_readable_by(db: Session, owner_id: str, job_id: str) -> Job | None:
    return db.scalar(jobs_readable_by(owner_id).where(Job.id == job_id))


def all_jobs() -> Select[tuple[Job]]:
    """Every user's jobs: admin views and the dispatcher only."""
    return select(Job)


def lock_owner(db: Session, owner_id: str) -> None:
    """Serialise job creation per user until the transaction ends: a no-op UPDATE of the user's row takes
    its row lock on PostgreSQL and the write lock on SQLite, so a count that follows sees every job
    that a concurrent request created first (without it, two requests could both count 9 of 10 queued
    and both insert)."""
    db.execute(update(User).where(User.id == owner_id).values(is_active=User.is_active)
               .execution_options(synchronize_session=False))


def count_by_status(db: Session, owner_id: str, status: str) -> int:
    return int(db.scalar(select(func.count()).where(Job.owner_id == owner_id, Job.status == status)) or 0)

