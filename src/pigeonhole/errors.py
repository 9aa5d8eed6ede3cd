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
