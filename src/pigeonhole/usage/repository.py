"""Aggregations over usage records, always for one user (the tenant filter is in the query)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from pigeonhole.db.tables import UsageRecord
from pigeonhole.usage.buckets import percentile_from_buckets

GroupBy = Literal["day", "token", "model"]


@dataclass
class UsageGroup:
    key: str | None
    calls: int = 0
    errors: int = 0
    images: int = 0
    buckets: dict[int, int] = field(default_factory=dict)

    @property
    def p50_ms(self) -> float | None:
        return percentile_from_buckets(self.buckets, 0.50)

    @property
    def p95_ms(self) -> float | None:
        return percentile_from_buckets(self.buckets, 0.95)

    @property
    def p99_ms(self) -> float | None:
        return percentile_from_buckets(self.buckets, 0.99)


def aggregate_usage(db: Session, user_id: str, *, start: date, end: date, group_by: GroupBy
                    ) -> tuple[list[UsageGroup], UsageGroup]:
    """Per-group and total figures for calls made on days ``start``..``end`` (inclusive, UTC)."""
    key_column = {"day": UsageRecord.day, "token": UsageRecord.token_id, "model": UsageRecord.model_id}[group_by]
    stmt = (
        select(
            key_column,
            UsageRecord.latency_bucket,
            func.count(),
            func.sum(case((UsageRecord.status >= 400, 1), else_=0)),
            func.sum(UsageRecord.images),
        )
        .where(UsageRecord.user_id == user_id, UsageRecord.day >= start.isoformat(),
               UsageRecord.day <= end.isoformat())
        .group_by(key_column, UsageRecord.latency_bucket)
    )
    groups: dict[str | None, UsageGroup] = {}
    total = UsageGroup(key=None)
    total_buckets: dict[int, int] = defaultdict(int)
    for key, bucket, calls, errors, images in db.execute(stmt):
        group = groups.setdefault(key, UsageGroup(key=key))
        for target in (group, total):
            target.calls += calls
            target.errors += int(errors or 0)
            target.images += int(images or 0)
        group.buckets[bucket] = group.buckets.get(bucket, 0) + calls
        total_buckets[bucket] += calls
    total.buckets = dict(total_buckets)
    ordered = sorted(groups.values(), key=lambda g: (g.key is None, g.key or ""))
    return ordered, total
