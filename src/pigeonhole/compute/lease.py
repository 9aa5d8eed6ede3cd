"""A lease row in the database so that only one dispatcher acts at a time (several may be started:
the others wait). A crashed holder stops renewing and its lease expires after ``ttl_s``."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pigeonhole.db.base import utcnow
from pigeonhole.db.tables import DispatcherLease

LEASE_NAME = "dispatcher"


def try_acquire(db: Session, holder: str, ttl_s: float, name: str = LEASE_NAME) -> bool:
    """Take or renew the lease; True when ``holder`` holds it until now + ``ttl_s``. Commits."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl_s)
    renewed = db.execute(update(DispatcherLease).where(DispatcherLease.name == name, DispatcherLease.holder == holder)
                         .values(expires_at=expires))
    if not renewed.rowcount:
        renewed = db.execute(update(DispatcherLease)
                             .where(DispatcherLease.name == name, DispatcherLease.expires_at < now)
                             .values(holder=holder, expires_at=expires, acquired_at=now))
    if renewed.rowcount:
        db.commit()
        return True
    if db.scalar(select(DispatcherLease.name).where(DispatcherLease.name == name)) is None:
        db.add(DispatcherLease(name=name, holder=holder, expires_at=expires, acquired_at=now))
        try:
            db.commit()
            return True
        except IntegrityError:
            db.rollback()
            return False
    db.commit()
    return False


def release(db: Session, holder: str, name: str = LEASE_NAME) -> None:
    db.execute(update(DispatcherLease).where(DispatcherLease.name == name, DispatcherLease.holder == holder)
               .values(expires_at=utcnow() - timedelta(seconds=1)))
    db.commit()


def holder_of(db: Session, name: str = LEASE_NAME) -> str | None:
    lease = db.get(DispatcherLease, name)
    return lease.holder if lease is not None and lease.expires_at > utcnow() else None
