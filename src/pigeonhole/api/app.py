"""``create_app()``: everything a process needs is built here from one Settings object, never at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from pigeonhole import __version__
from pigeonhole.admin.routes import router as admin_router
from pigeonhole.api.errors import install_error_handlers
from pigeonhole.api.metrics import Metrics
from pigeonhole.api.middleware import Observability, PredictAdmission, RequestLimits, SecurityHeaders
from pigeonhole.api.ops import router as ops_router
from pigeonhole.api.schemas import ERROR_RESPONSES
from pigeonhole.api.web import install_web
from pigeonhole.auth.passwords import passwords_from
from pigeonhole.auth.routes import router as auth_router
from pigeonhole.auth.routes import tokens_router
from pigeonhole.auth.token_cache import TokenCache
from pigeonhole.datasets.routes import router as datasets_router
from pigeonhole.datasets.service import BlobSweeper
from pigeonhole.datasets.thumbnails import Thumbnails
from pigeonhole.db.engine import create_db_engine, create_session_factory
from pigeonhole.db.migrate import upgrade
from pigeonhole.jobs.routes import router as jobs_router
from pigeonhole.models.feedback import router as feedback_router
from pigeonhole.models.predict import PredictionService
from pigeonhole.models.predict_routes import Lookups
from pigeonhole.models.predict_routes import router as predict_router
from pigeonhole.models.queue_routes import router as queue_router
from pigeonhole.models.routes import router as models_router
from pigeonhole.models.suspect_routes import router as suspects_router
from pigeonhole.serving.limits import RateLimiter
from pigeonhole.settings import Settings, load_settings
from pigeonhole.storage.blobs import BlobStore
from pigeonhole.storage.cache import DiskCache
from pigeonhole.usage.quota import MonthlyQuota
from pigeonhole.usage.recorder import UsageRecorder
from pigeonhole.usage.routes import router as usage_router

log = logging.getLogger(__name__)


def operation_id(route: APIRoute) -> str:
    """Stable, readable operation ids (``tokens-create_token``) for the generated TypeScript client."""
    tag = route.tags[0] if route.tags else "default"
    return f"{tag}-{route.name}"


def create_app(settings: Settings | None = None, *, migrate: bool = True) -> FastAPI:
    settings = settings or load_settings()
    _ = settings.secret  # resolve (and persist, in development) before serving anything
    engine = create_db_engine(settings.resolved_database_url, pool_size=settings.db_pool_size)
    session_factory = create_session_factory(engine)
    metrics = Metrics()
    recorder = UsageRecorder(session_factory, flush_interval_s=settings.usage_flush_interval_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if migrate:
            upgrade(engine)
        recorder.start()
        try:
            yield
        finally:
            await app.state.predictions.aclose()  # ray mode: its HTTP connections to Ray Serve
            recorder.stop()
            app.state.lookups.close()
            engine.dispose()

    app = FastAPI(
        title="Pigeonhole",
        version=__version__,
        summary="Self-hosted, no-code image classification.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        responses=ERROR_RESPONSES,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.lookups = Lookups.for_database(settings.resolved_database_url, engine)
    app.state.session_factory = session_factory
    app.state.passwords = passwords_from(settings)
    app.state.token_cache = TokenCache(settings.token_cache_ttl_s,
                                       epoch_file=settings.data_dir / "run" / "tokens-revoked")
    app.state.metrics = metrics
    app.state.usage_recorder = recorder
    app.state.blob_store = blobs = BlobStore(settings.resolved_blob_url)
    app.state.derived_cache = derived = DiskCache(settings.resolved_cache_dir, settings.cache_max_bytes)
    app.state.thumbnails = Thumbnails(derived, blobs)
    app.state.predictions = PredictionService(settings, blobs, observe=metrics.observe_batch)
    app.state.predict_limiter = RateLimiter(settings.predict_rate_per_s, settings.predict_burst)
    app.state.monthly_quota = MonthlyQuota(session_factory)
    app.state.blob_sweeper = BlobSweeper(session_factory, blobs, settings.blob_sweep_grace_s)

    install_error_handlers(app)
    # The prediction route first: the busiest by far, matched before the other routes' patterns are tried.
    for router in (predict_router, auth_router, tokens_router, datasets_router, suspects_router, queue_router,
                   models_router, feedback_router, jobs_router, usage_router, admin_router, ops_router):
        app.include_router(router)
    install_web(app)

    # Each one added wraps the ones before it: observe everything, including refused oversized bodies; add
    # security headers to all of that; and first of all, believe X-Forwarded-For/-Proto only from the
    # configured proxies, so the client address (sign-in throttling) and the scheme (Secure cookies, HSTS)
    # that everything inside sees cannot be forged by anyone else. Done here rather than by uvicorn, so it
    # holds under any ASGI server and in tests.
    app.add_middleware(RequestLimits, settings=settings)
    app.add_middleware(Observability, metrics=metrics, recorder=recorder)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies.split(","))
    app.add_middleware(PredictAdmission, predictions=app.state.predictions, metrics=metrics)  # cheapest refusal first
    return app


def worker_app() -> FastAPI:
    """The app of one of several API worker processes (``serve --workers N``): settings from the
    environment that ``serve`` prepared, migrations already applied by ``serve``."""
    return create_app(load_settings(), migrate=False)
