"""Monthly prediction quotas per user, counted from the usage records (exact across API replicas).

The count is cached per user for a few seconds so the request path does not query on every call;
a user can overshoot by at most what they send in that window.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pigeonhole.db.tables import UsageRecord

CACHE_S = 5.0


def month_start(now: datetime) -> str:
    return now.astimezone(UTC).date().replace(day=1).isoformat()


def next_month_seconds(now: datetime) -> int:
    now = now.astimezone(UTC)
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if first.month == 12:
        following = first.replace(year=first.year + 1, month=1)
    else:
        following = first.replace(month=first.month + 1)
    return max(1, int((following - now).total_seconds()))


class MonthlyQuota:
    def __init__(self, session_factory: sessionmaker[Session]):
        self.session_factory = session_factory
        self._cache: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def images_this_month(self, user_id: str, route: str) -> int:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(user_id)
            if cached and now - cached[0] < CACHE_S:
                return cached[1]
        with self.session_factory() as db:
            used = db.scalar(select(func.coalesce(func.sum(UsageRecord.images), 0)).where(
                UsageRecord.user_id == user_id, UsageRecord.route == route,
                UsageRecord.day >= month_start(datetime.now(UTC)), UsageRecord.status < 400)) or 0
        with self._lock:
            self._cache[user_id] = (now, int(used))
        return int(used)

    def forget(self, user_id: str) -> None:
        with self._lock:
            self._cache.pop(user_id, None)
