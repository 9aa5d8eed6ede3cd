"""Every error answers ``{"detail": "<sentence>", "code": "<machine_code>"}``, never a bare 500 for bad input."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from pigeonhole.api.middleware import security_headers
from pigeonhole.errors import STORAGE_FULL_SENTENCE, PigeonholeError, StorageFull, is_storage_full

CLIENT_CLOSED_REQUEST = 499

log = logging.getLogger(__name__)

_STATUS_SENTENCES = {
    400: ("bad_request", "The request could not be understood."),
    401: ("not_authenticated", "Sign in, or send an API token, to use this."),
    403: ("forbidden", "You are not allowed to do this."),
    404: ("not_found", "There is no such page or API endpoint."),
    413: ("payload_too_large", "The request is too large."),
    415: ("unsupported_media_type", "This kind of request body is not supported here."),
    429: ("rate_limited", "Too many requests. Wait a moment and try again."),
}


def error_body(detail: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, "code": code, **extra}


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts)


def validation_sentence(errors: list[dict[str, Any]]) -> str:
    """One readable sentence for the first problem (the full list stays in ``errors``)."""
    if not errors:
        return "The request is not valid."
    first = errors[0]
    kind, field = first.get("type", ""), _field_name(tuple(first.get("loc", ())))
    if kind == "json_invalid":
        return "The request body is not valid JSON."
    if kind == "missing" and not field:
        return "The request needs a body."
    if kind == "missing":
        return f"The field '{field}' is required."
    message = str(first.get("msg", "is not valid")).rstrip(".")
    message = message[0].lower() + message[1:] if message else message
    if not field:
        return f"The request body is not valid: {message}."
    return f"The field '{field}' is not valid: {message}."


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route accepts at ``path`` (Starlette names only the first matching route's)."""
    methods: set[str] = set()
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PigeonholeError)
    async def _domain_error(_: Request, exc: PigeonholeError) -> JSONResponse:
        return JSONResponse(error_body(exc.detail, exc.code), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse(error_body(validation_sentence(errors), "invalid_input", errors=errors),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, sentence = _STATUS_SENTENCES.get(exc.status_code, ("error", str(exc.detail)))
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            code, sentence = "method_not_allowed", f"This address does not accept {request.method} requests."
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path))
        elif isinstance(exc.detail, str) and exc.detail and exc.detail not in ("Not Found", "Method Not Allowed"):
            sentence = exc.detail
        return JSONResponse(error_body(sentence, code), status_code=exc.status_code, headers=headers or None)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(_: Request, __: ClientDisconnect) -> Response:
        # The caller hung up while sending its body (a closed tab, a load test ending): nothing to answer and
        # nothing wrong here. 499 is what proxies log for it; nobody receives it.
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers crashes outside every middleware, so the security headers are added here.
        headers = {name.decode(): value.decode() for name, value in security_headers(request.url.path,
                                                                                      request.url.scheme)}
        if is_storage_full(exc):  # the disk or the database is full: the transaction rolled back
            log.error("no space left while answering %s %s", request.method, request.url.path)
            return JSONResponse(error_body(STORAGE_FULL_SENTENCE, StorageFull.code), status_code=StorageFull.status,
                                headers=headers)
        # Method and path only: never the query, headers or body, which may hold passwords or tokens.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("Something went wrong on our side. Try again; if it keeps happening, "
                                       "tell the administrator.", "internal_error"), status_code=500,
                            headers=headers)
