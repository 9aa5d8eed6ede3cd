"""``GET /api/v1/usage``: API calls, errors and latency percentiles of your tokens."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Literal

from fastapi import APIRouter, Query
from sqlalchemy import select

from pigeonhole.api.deps import DbSession, Reader
from pigeonhole.db.base import utcnow
from pigeonhole.db.tables import ApiToken
from pigeonhole.errors import Unprocessable
from pigeonhole.usage.repository import UsageGroup, aggregate_usage
from pigeonhole.usage.schemas import UsageFigures, UsageItem, UsageReport

router = APIRouter(prefix="/api/v1", tags=["usage"])

DEFAULT_DAYS = 30
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"


def _day(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise Unprocessable(f"'{name}' is not a real date: use YYYY-MM-DD.", code="invalid_date") from exc
MAX_DAYS = 366


def _figures(group: UsageGroup) -> dict[str, object]:
    return dict(calls=group.calls, errors=group.errors, images=group.images,
                p50_ms=group.p50_ms, p95_ms=group.p95_ms, p99_ms=group.p99_ms)


@router.get("/usage", response_model=UsageReport, response_model_by_alias=True)
def usage(
    principal: Reader,
    db: DbSession,
    from_: str | None = Query(None, alias="from", pattern=DATE_PATTERN,
                              description="first day (UTC, YYYY-MM-DD), default: 30 days ago"),
    to: str | None = Query(None, pattern=DATE_PATTERN, description="last day (UTC, YYYY-MM-DD, inclusive), "
                                                                   "default: today"),
    group_by: Literal["day", "token", "model"] = "day",
) -> UsageReport:
    """Calls made with your API tokens between two days, grouped by day, token or model."""
    end = _day(to, "to") or utcnow().date()
    start = _day(from_, "from") or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise Unprocessable("'from' must be on or before 'to'.", code="invalid_range")
    if (end - start).days >= MAX_DAYS:
        raise Unprocessable(f"Ask for at most {MAX_DAYS} days at a time.", code="invalid_range")
    groups, total = aggregate_usage(db, principal.user_id, start=start, end=end, group_by=group_by)
    labels: dict[str, str] = {}
    if group_by == "token":
        ids = [g.key for g in groups if g.key]
        if ids:
            rows = db.execute(select(ApiToken.id, ApiToken.name).where(
                ApiToken.user_id == principal.user_id, ApiToken.id.in_(ids)))
            labels = {token_id: name for token_id, name in rows}
    items = [UsageItem(key=g.key, label=labels.get(g.key or ""), **_figures(g)) for g in groups]  # type: ignore[arg-type]
    return UsageReport(from_=start, to=end, group_by=group_by, items=items,
                       total=UsageFigures(**_figures(total)))  # type: ignore[arg-type]
