"""Usage figures as the API answers them."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, Field


class UsageFigures(BaseModel):
    calls: int
    errors: int = Field(description="calls answered with a 4xx or 5xx status")
    images: int
    p50_ms: float | None = Field(description="median latency (within 10 %)")
    p95_ms: float | None
    p99_ms: float | None


class UsageItem(UsageFigures):
    key: str | None = Field(description="the day (YYYY-MM-DD), token id or model id; null: no model")
    label: str | None = Field(default=None, description="token name for group_by=token")


class UsageReport(BaseModel):
    from_: date = Field(alias="from")
    to: date
    group_by: Literal["day", "token", "model"]
    items: list[UsageItem]
    next_cursor: str | None = None
    total: UsageFigures

    model_config = {"populate_by_name": True}
