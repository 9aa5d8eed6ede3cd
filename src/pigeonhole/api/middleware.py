"""Pure ASGI middleware: request size limits, security headers, and metrics + usage recording after each
response."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pigeonhole.api.metrics import Metrics
from pigeonhole.errors import OVERLOADED_SENTENCE
from pigeonhole.settings import Settings
from pigeonhole.usage.recorder import UsageEvent, UsageRecorder

# The built Svelte app needs nothing but its own files: its script and stylesheet are files under /assets
# (no inline <script> or <style>), Svelte sets dynamic styles through the CSSOM (el.style.setProperty), which
# style-src does not govern, and previews of picked files are blob: URLs.
APP_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
           "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; "
           "form-action 'self'")
# FastAPI's /docs (Swagger UI) and /redoc pages load their code from a CDN and start it with an inline
# script; they get a policy that allows exactly that, and keep every other protection.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
            "font-src 'self' https://fonts.gstatic.com; img-src 'self' data: blob: https://fastapi.tiangolo.com "
            "https://cdn.redoc.ly; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; "
            "base-uri 'self'; frame-ancestors 'none'; form-action 'self'")
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
HSTS = "max-age=31536000"


def security_headers(path: str, scheme: str) -> list[tuple[bytes, bytes]]:
    """Headers every response carries (the error handler for crashes uses them too).

    HSTS only when the request arrived over HTTPS (served directly, or ``X-Forwarded-Proto: https`` from a
    trusted proxy): browsers ignore it over plain HTTP, and sending it there would promise what is not true.
    """
    headers = [
        (b"content-security-policy", (DOCS_CSP if path in DOCS_PATHS else APP_CSP).encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),
        (b"cross-origin-opener-policy", b"same-origin"),
    ]
    if scheme in ("https", "wss"):
        headers.append((b"strict-transport-security", HSTS.encode()))
    return headers


class SecurityHeaders:
    """Adds :func:`security_headers` to every response; a header a route set itself is kept (the landing
    page allows its one inline stylesheet by hash)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in security_headers(scope.get("path", ""),
                                                                               scope.get("scheme", "http"))
                            if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _too_large_sentence(limit: int) -> str:
    return f"The request is too large: the limit is {limit / (1024 * 1024):.0f} MiB."


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing lets it through to the error handler."""

    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=_too_large_sentence(limit))


async def _send_json(send: Send, status: int, payload: dict[str, Any],
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """Refuses what no route can handle safely, before any route sees it.

    Bodies over the limit (from Content-Length up front, or counted while streaming), and NUL
    characters in the path or query (PostgreSQL cannot store them; no id or name contains one).
    """

    def __init__(self, app: ASGIApp, *, settings: Settings):
        self.app = app
        self.settings = settings  # read per request, so limits can change at run time

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b"").lower():
            await _send_json(send, 400, {"detail": "The address contains a NUL character, which is never valid.",
                                         "code": "bad_request"})
            return
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"")
        if content_type.startswith(b"multipart/"):
            limit = self.settings.max_upload_bytes
        elif content_type.startswith((b"image/", b"application/octet-stream")):  # one image to classify
            limit = max(self.settings.max_body_bytes, self.settings.max_image_bytes)
        else:
            limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        await _send_json(send, 413, {"detail": _too_large_sentence(limit), "code": "payload_too_large"})


class Observability:
    """Times every request; feeds Prometheus and, for API-token calls, the usage records."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, recorder: UsageRecorder):
        self.app = app
        self.metrics = metrics
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture_status)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"  # unmatched: bounded label cardinality
            method = scope.get("method", "GET")
            self.metrics.observe(method, template, status, seconds)
            state = scope.get("state") or {}
            principal = state.get("principal")
            # Token calls are always metered; routes may ask for browser calls too (predictions).
            if principal is not None and (principal.token_id is not None or state.get("meter")):
                params = scope.get("path_params") or {}
                self.recorder.record(UsageEvent(
                    user_id=principal.user_id, token_id=principal.token_id, model_id=params.get("model_id"),
                    method=method, route=template, status=status, latency_ms=seconds * 1000,
                    images=int(state.get("usage_images", 0)), at=datetime.now(UTC)))


PREDICT_PATH = re.compile(r"^/api/v1/models/[^/]+/predict$")
REFUSAL_HOLD_S = 0.5


class PredictAdmission:
    """Refuses a prediction call at the door while the process has too many under way.

    The route refuses them too (``PredictionService.admitted``), but only after the middleware, the routing,
    the token check and the rate limit: under a flood of instant retries that work, about a millisecond of
    Python per refusal, took the cores from the calls being answered (measured with 1,200 connections that
    retry at once: 30 answered/s instead of 300; refused here at once, 116/s). Here a refusal is a status line
    and a sentence, held half a second. It goes outermost, so a refused call is counted in /metrics (route
    "overloaded") but not in anyone's usage.
    """

    def __init__(self, app: ASGIApp, *, predictions: Any, metrics: Metrics):
        self.app = app
        self.predictions = predictions
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST" and PREDICT_PATH.match(scope.get("path", "")):
            wait = self.predictions.refusal()
            if wait is not None:
                # Held a moment before the answer: a client that retries at once (no back-off) then sends a
                # couple of calls a second per connection, not thousands, and the cores stay with the work.
                await asyncio.sleep(REFUSAL_HOLD_S)
                self.metrics.observe("POST", "overloaded", 503, REFUSAL_HOLD_S)
                await _send_json(send, 503, {"detail": OVERLOADED_SENTENCE, "code": "overloaded"},
                                 [(b"retry-after", str(wait).encode()),
                                  *security_headers(scope.get("path", ""), scope.get("scheme", "http"))])
                return
        await self.app(scope, receive, send)
