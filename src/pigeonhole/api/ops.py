"""Liveness, readiness and Prometheus metrics for operators and orchestrators."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select, text

from pigeonhole.api.deps import SettingsDep
from pigeonhole.compute.lease import holder_of
from pigeonhole.db.migrate import pending_revisions
from pigeonhole.db.tables import ComputeNode
from pigeonhole.serving.wire import ROUTE_PREFIX

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def _check_database(request: Request) -> str | None:
    engine = request.app.state.engine
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    pending = pending_revisions(engine)
    return f"database schema is not up to date ({len(pending)} migration(s) pending)" if pending else None


def _check_storage(request: Request) -> str | None:
    request.app.state.blob_store.check()
    return None


def _check_compute(request: Request) -> str | None:
    """Ready once a dispatcher holds the lease *and* a compute node has checked in (the admin's node list holds
    it): between the two, a dispatcher that has just started would take jobs it has nowhere to run yet."""
    with request.app.state.session_factory() as db:
        if holder_of(db) is None:
            return ("no job dispatcher is running: predictions work, but training, class changes and imports "
                    "wait until one starts")
        if db.scalar(select(ComputeNode.id).where(ComputeNode.alive.is_(True)).limit(1)) is None:
            return ("the job dispatcher is starting: no compute node has checked in yet, so training, class "
                    "changes and imports wait a moment")
    return None


def _check_predictions(url: str) -> str | None:
    """Ray mode only: Serve's proxy (at ``url``) lists the prediction route once the dispatcher has deployed it."""
    try:
        routes = httpx.get(f"{url}/-/routes", timeout=2.0, trust_env=False)
        if routes.status_code == 200 and ROUTE_PREFIX in routes.json():
            return None
    except (httpx.HTTPError, ValueError):
        pass
    return (f"the prediction service (Ray Serve at {url}) is not running yet: predictions answer 503 until the "
            "dispatcher has started it")


@router.get("/readyz", responses={503: {"description": "not ready"}})
async def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
    """Ready to serve: the database answers with the current schema and the blob store is writable (503
    otherwise). A missing job dispatcher is reported as ``degraded``: the API still serves, jobs wait; so is
    a Ray Serve prediction service that is not running yet (``ray`` mode)."""
    checks: dict[str, Any] = {}
    named: list[tuple[str, Callable[[], str | None]]] = [
        (name, functools.partial(check, request))
        for name, check in (("database", _check_database), ("storage", _check_storage), ("compute", _check_compute))
    ]
    if settings.predict_mode == "ray":
        named.append(("predictions", functools.partial(_check_predictions, settings.resolved_serve_url)))
    for name, check in named:
        try:
            problem = await asyncio.to_thread(check)
        except Exception as exc:  # readiness reports the reason instead of failing
            problem = f"{type(exc).__name__}: {exc}"
        checks[name] = "ok" if problem is None else problem
    ready = checks["database"] == "ok" and checks["storage"] == "ok"
    status = "ok" if all(v == "ok" for v in checks.values()) else ("degraded" if ready else "unavailable")
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Request counts and latencies per route, in Prometheus text format."""
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
