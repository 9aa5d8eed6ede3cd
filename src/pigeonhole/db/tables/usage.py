"""One row per API call made with a token: what the usage figures are computed from."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from pigeonhole.db.base import Base, IdMixin, UTCDateTime


class UsageRecord(IdMixin, Base):
    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_user_day", "user_id", "day"),)

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    # No foreign key: usage history outlives a revoked or deleted token.
    token_id: Mapped[str | None] = mapped_column(String(26))
    model_id: Mapped[str | None] = mapped_column(String(26))
    method: Mapped[str] = mapped_column(String(8), nullable=False)
    route: Mapped[str] = mapped_column(String(200), nullable=False)
    status: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    latency_ms: Mapped[float] = mapped_column(nullable=False)
    # Log-scale bucket of the latency, so percentiles can be computed in SQL on any backend.
    latency_bucket: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    images: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    day: Mapped[str] = mapped_column(String(10), nullable=False)  # UTC date, YYYY-MM-DD
