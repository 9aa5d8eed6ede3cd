"""Errors that carry a status, a machine code and a sentence a non-expert understands.

Services raise these; the API turns them into ``{"detail": ..., "code": ...}``. They live outside
the web stack so that services, the dispatcher and the CLI can share them.
"""

from __future__ import annotations


class PigeonholeError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, detail: str, *, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        if code:
            self.code = code
        self.headers = headers or {}


class BadRequest(PigeonholeError):
    status, code = 400, "bad_request"


class Unauthorized(PigeonholeError):
    status, code = 401, "not_authenticated"


class Forbidden(PigeonholeError):
    status, code = 403, "forbidden"


class NotFound(PigeonholeError):
    status, code = 404, "not_found"


class Conflict(PigeonholeError):
    status, code = 409, "conflict"


class PayloadTooLarge(PigeonholeError):
    status, code = 413, "payload_too_large"


class Unprocessable(PigeonholeError):
    status, code = 422, "invalid_input"


class TooManyRequests(PigeonholeError):
    status, code = 429, "rate_limited"

    def __init__(self, detail: str, *, retry_after_s: int, code: str | None = None):
        super().__init__(detail, code=code, headers={"Retry-After": str(max(1, retry_after_s))})
        self.retry_after_s = retry_after_s


OVERLOADED_SENTENCE = "The prediction service has more images to answer than it can answer quickly; try again shortly."


class ServiceUnavailable(PigeonholeError):
    """A part of the service this request needs is starting, restarting or overloaded: worth retrying soon."""

    status, code = 503, "service_unavailable"

    def __init__(self, detail: str, *, retry_after_s: int = 5, code: str | None = None):
        super().__init__(detail, code=code, headers={"Retry-After": str(max(1, retry_after_s))})


class StorageFull(PigeonholeError):
    """The disk (or the database's disk) is full: the server's state, not the user's input, so a 507, with
    what to do about it; nothing half-written is kept (blob writes are temp + rename, the transaction rolls
    back)."""

    status, code = 507, "storage_full"

    def __init__(self, detail: str = "", *, code: str | None = None):
        super().__init__(detail or STORAGE_FULL_SENTENCE, code=code)


STORAGE_FULL_SENTENCE = ("The server has run out of storage space, so this was not saved. Nothing already "
                         "stored was lost. Ask the administrator to free or add disk space, then try again.")
_NO_SPACE_ERRNOS = {28, 122}  # ENOSPC, EDQUOT
_NO_SPACE_SQLSTATE = "53100"  # PostgreSQL disk_full


def is_storage_full(exc: BaseException) -> bool:
    """True for 'no space left' however it surfaces: an OSError from a file write, SQLite's 'database or disk
    is full', or PostgreSQL's disk_full, possibly wrapped by SQLAlchemy (``.orig``) or chained."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _NO_SPACE_ERRNOS:
            return True
        if "database or disk is full" in str(current) or getattr(current, "sqlstate", None) == _NO_SPACE_SQLSTATE \
                or getattr(current, "pgcode", None) == _NO_SPACE_SQLSTATE:
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False
