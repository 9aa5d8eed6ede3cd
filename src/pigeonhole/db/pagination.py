"""Keyset pagination over time-ordered ids: ``{"items": [...], "next_cursor": ...}`` everywhere."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from pigeonhole.errors import BadRequest
from pigeonhole.ids import looks_like_id

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        value = ""
    if not looks_like_id(value):
        raise BadRequest("This page cursor is not valid. Start again from the first page.", code="bad_cursor")
    return value


def paginate(
    db: Session,
    statement: Select[Any],
    id_column: InstrumentedAttribute[str],
    *,
    cursor: str | None,
    limit: int = DEFAULT_PAGE_SIZE,
    newest_first: bool = True,
) -> Page[Any]:
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    if cursor:
        after = decode_cursor(cursor)
        statement = statement.where(id_column < after if newest_first else id_column > after)
    statement = statement.order_by(id_column.desc() if newest_first else id_column.asc()).limit(limit + 1)
    rows = list(db.scalars(statement))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(items=rows, next_cursor=encode_cursor(rows[-1].id) if more and rows else None)
