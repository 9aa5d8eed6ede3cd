"""Typed errors carrying the API's ``detail`` sentence and ``code``."""

from __future__ import annotations


class PigeonholeAPIError(Exception):
    """An error answer from the server (4xx/5xx)."""

    def __init__(self, status: int, detail: str, code: str = "error", retry_after_s: float | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.retry_after_s = retry_after_s


class BadRequest(PigeonholeAPIError):
    pass


class AuthenticationError(PigeonholeAPIError):
    """401: no credentials, or the token is wrong, revoked or expired."""


class PermissionDenied(PigeonholeAPIError):
    """403: the token lacks a scope, or the action is for administrators."""


class NotFound(PigeonholeAPIError):
    pass


class Conflict(PigeonholeAPIError):
    pass


class PayloadTooLarge(PigeonholeAPIError):
    pass


class ValidationFailed(PigeonholeAPIError):
    """422: the request was understood but its content is not acceptable."""


class RateLimited(PigeonholeAPIError):
    """429: wait ``retry_after_s`` seconds."""


class ServerError(PigeonholeAPIError):
    pass


class ConnectionFailed(Exception):
    """The server could not be reached (down, wrong URL, network)."""


_BY_STATUS: dict[int, type[PigeonholeAPIError]] = {
    400: BadRequest, 401: AuthenticationError, 403: PermissionDenied, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 422: ValidationFailed, 429: RateLimited,
}


def error_for(status: int, body: object, retry_after: str | None) -> PigeonholeAPIError:
    detail, code = f"The server answered {status}.", "error"
    if isinstance(body, dict):
        detail = str(body.get("detail") or detail)
        code = str(body.get("code") or code)
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else PigeonholeAPIError)
    wait = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
    return cls(status, detail, code, wait)
