"""Response shapes shared by every domain: lists and errors."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel

T = TypeVar("T")


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text cannot contain NUL characters")
    return value


# Every free-text field of a request body: PostgreSQL cannot store NUL, so it is refused up front.
Text = Annotated[str, AfterValidator(_no_nul)]


class ListPage(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


class ErrorBody(BaseModel):
    detail: str
    code: str


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "Bad request", 401: "Not signed in", 403: "Not allowed", 404: "Not found",
        409: "Conflict", 413: "Too large", 422: "Invalid input", 429: "Too many requests",
    }.items()
}
