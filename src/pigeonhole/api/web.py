"""What the browser gets outside ``/api``: the built Svelte app, or a landing page when it is not built.

The app is built (``make web``) into ``pigeonhole/web_dist``. When its ``index.html`` exists:

- ``/`` and every unknown ``GET``/``HEAD`` path outside ``/api`` that a browser navigates to (``Accept`` names
  ``text/html``) answer ``index.html`` (the app routes in the browser), with ``Cache-Control: no-cache`` so a
  new release is picked up at once; scripts asking for an unknown path still get the JSON 404;
- files under ``/assets/`` have content hashes in their names and are cached for a year (``immutable``);
- other files at the top of the build (``favicon.svg``) are cached for an hour;
- ``/api/…`` paths that do not exist keep answering the JSON 404, and other methods keep their 404/405.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from pigeonhole.api.middleware import APP_CSP

WEB_DIST = Path(__file__).resolve().parent.parent / "web_dist"

IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "public, max-age=3600"
NO_CACHE = "no-cache"
# Paths the SPA fallback never answers: the API and the server's own pages keep their own 404s.
RESERVED_PREFIXES = ("/api/", "/docs/", "/redoc/")
RESERVED_PATHS = {"/api", "/openapi.json", "/healthz", "/readyz", "/metrics"}

LANDING_STYLE = ("body{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;"
                 "line-height:1.5}\ncode{background:#f2f2f2;padding:.1rem .3rem;border-radius:4px}")
LANDING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Pigeonhole</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>""" + LANDING_STYLE + """</style></head>
<body><h1>Pigeonhole is running</h1>
<p>The web app has not been built into this installation yet. The REST API is ready:
see the <a href="/docs">interactive API documentation</a>.</p>
<p>Create the first account (it becomes the administrator) with
<code>POST /api/v1/auth/signup</code>, or from a terminal:
<code>pigeonhole create-admin --email you@example.com</code>.</p></body></html>"""


def _landing_csp() -> str:
    """The app's policy, plus the hash of the landing page's one inline stylesheet (and nothing else inline)."""
    digest = base64.b64encode(hashlib.sha256(LANDING_STYLE.encode()).digest()).decode()
    return APP_CSP.replace("style-src 'self'", f"style-src 'self' 'sha256-{digest}'")


def install_web(app: FastAPI, dist: Path | None = None) -> None:
    dist = (dist or WEB_DIST).resolve()
    if (dist / "index.html").is_file():
        _install_app(app, dist)
    else:
        _install_landing(app)


def _install_landing(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def landing() -> HTMLResponse:
        return HTMLResponse(LANDING, headers={"Content-Security-Policy": _landing_csp()})


def _index(dist: Path) -> FileResponse:
    return FileResponse(dist / "index.html", media_type="text/html", headers={"Cache-Control": NO_CACHE})


def _install_app(app: FastAPI, dist: Path) -> None:
    assets = (dist / "assets").resolve()

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return _index(dist)

    @app.get("/assets/{path:path}", include_in_schema=False)
    def asset(path: str) -> FileResponse:
        target = (assets / path).resolve()
        if not target.is_relative_to(assets) or not target.is_file():
            raise StarletteHTTPException(404, "There is no such file.")
        return FileResponse(target, headers={"Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff"})

    # Top-level files of the build (favicon and the like), fixed at start-up.
    for file in sorted(dist.iterdir()):
        if file.is_file() and file.name != "index.html":
            app.add_api_route(f"/{file.name}", _top_level_file(file), methods=["GET"], include_in_schema=False)

    # Unknown pages are the app's to route: a 404 for GET/HEAD outside /api becomes index.html. Everything
    # else (API paths, other methods) goes to the JSON error handler installed before this one.
    json_error = app.exception_handlers.get(StarletteHTTPException)

    async def not_found(request: Request, exc: Exception) -> Response:
        path = request.url.path
        reserved = path in RESERVED_PATHS or path.startswith(RESERVED_PREFIXES) or path.startswith("/assets/")
        if request.method in ("GET", "HEAD") and not reserved and _wants_html(request):
            return _index(dist)
        if json_error is None:  # pragma: no cover - create_app always installs it
            raise exc
        return await json_error(request, exc)  # type: ignore[misc]

    app.add_exception_handler(404, not_found)


def _wants_html(request: Request) -> bool:
    """A browser navigating (as history-API fallbacks decide it): its ``Accept`` names an HTML type."""
    accept = request.headers.get("accept", "")
    return "text/html" in accept or "application/xhtml+xml" in accept


def _top_level_file(file: Path):  # type: ignore[no-untyped-def]
    def serve() -> FileResponse:
        return FileResponse(file, headers={"Cache-Control": SHORT, "X-Content-Type-Options": "nosniff"})

    serve.__name__ = f"web_file_{file.stem}"
    return serve
