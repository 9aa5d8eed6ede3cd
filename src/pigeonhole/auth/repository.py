"""Queries for users, sessions, tokens and sign-in failures.

Every read of a user-owned row goes through a statement that filters by owner, so no route can
forget the check: another user's id simply finds nothing.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, delete, func, select, type_coerce
from sqlalchemy.orm import Session

from pigeonhole.db.base import UTCDateTime
from pigeonhole.db.tables import ApiToken, LoginFailure, User, WebSession


def user_by_email(db: Session, email: str) -> User | None:
    return db.scalar(select(User).where(User.email == email))


def user_by_id(db: Session, user_id: str) -> User | None:
    return db.get(User, user_id)


def count_users(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(User)) or 0


def admin_exists(db: Session) -> bool:
    return db.scalar(select(User.id).where(User.is_admin.is_(True)).limit(1)) is not None


def users_statement() -> Select[tuple[User]]:
    return select(User)


def tokens_readable_by(user_id: str) -> Select[tuple[ApiToken]]:
    return select(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))


def token_readable_by(db: Session, user_id: str, token_id: str) -> ApiToken | None:
    return db.scalar(tokens_readable_by(user_id).where(ApiToken.id == token_id))


def token_by_digest(db: Session, digest: str) -> ApiToken | None:
    return db.scalar(select(ApiToken).where(ApiToken.digest == digest))


def session_by_id(db: Session, session_id: str) -> WebSession | None:
    return db.get(WebSession, session_id)


def delete_session(db: Session, session_id: str) -> None:
    db.execute(delete(WebSession).where(WebSession.id == session_id))


def delete_expired_sessions(db: Session, now: datetime) -> None:
    db.execute(delete(WebSession).where(WebSession.expires_at < now))


def failures_since(db: Session, *, since: datetime, email: str | None = None, address: str | None = None
                   ) -> tuple[int, datetime | None]:
    """How many failed sign-ins since ``since`` and when the oldest of them happened."""
    oldest = type_coerce(func.min(LoginFailure.created_at), UTCDateTime())
    stmt = select(func.count(), oldest).where(LoginFailure.created_at >= since)
    if email is not None:
        stmt = stmt.where(LoginFailure.email == email)
    if address is not None:
        stmt = stmt.where(LoginFailure.address == address)
    count, first = db.execute(stmt).one()
    return int(count or 0), first


def clear_failures(db: Session, email: str) -> None:
    db.execute(delete(LoginFailure).where(LoginFailure.email == email))


def prune_failures(db: Session, before: datetime) -> None:
    db.execute(delete(LoginFailure).where(LoginFailure.created_at < before))
