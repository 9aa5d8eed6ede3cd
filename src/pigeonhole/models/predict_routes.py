"""The prediction route, apart from the other model routes: the hottest path of the service, included first so
that routing matches it before trying the other routes' patterns, and written so that a call costs as little
Python as it can (``benchmarks/predict.py`` profiles it).

The version to serve is looked up before the body is read (another user's model is a 404 whatever the body).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import Engine, make_url, select

from pigeonhole.api.deps import Predictor, SettingsDep
from pigeonhole.auth.scopes import Principal
from pigeonhole.db.base import utcnow
from pigeonhole.db.engine import create_db_engine, is_sqlite
from pigeonhole.db.tables import DatasetImage
from pigeonhole.errors import TooManyRequests
from pigeonhole.learn.neighbours import MAX_NEIGHBOURS
from pigeonhole.models import repository as repo
from pigeonhole.models.predict import Target, prediction_id, read_inputs
from pigeonhole.models.schemas import PredictionResult, PredictRequest
from pigeonhole.models.service import no_such_model, no_such_version, no_version_yet
from pigeonhole.serving.limits import retry_after
from pigeonhole.usage.quota import next_month_seconds

router = APIRouter(prefix="/api/v1/models", tags=["models"])


@dataclass(frozen=True)
class Lookups:
    """Where the prediction path reads the version to serve.

    With SQLite: on the event loop, from an engine of its own. A read of a local file in WAL mode never waits for
    a writer and takes tens of microseconds, where handing it to a thread and back cost about 0.7 ms of the loop's
    Python time per call under load (py-spy). Its own engine, because the loop must never wait for a connection
    of the shared pool: a request's session gives its connection back when the loop runs that request's clean-up,
    so a loop waiting for one could wait until the pool's timeout. With a database across the network: the app's
    engine, off the loop.
    """

    engine: Engine
    on_loop: bool
    own: bool = False  # made for these lookups (closed with them), not the app's

    @classmethod
    def for_database(cls, url: str, shared: Engine) -> Lookups:
        if not is_sqlite(url):
            return cls(shared, False)
        if make_url(url).database in (None, "", ":memory:"):  # one database per connection: share the app's
            return cls(shared, True)  # (its pool keeps one connection per thread and never makes a caller wait)
        return cls(create_db_engine(url), True, own=True)

    def close(self) -> None:
        if self.own:
            self.engine.dispose()


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined: OpenAPI cannot resolve pydantic's local refs."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)




PREDICT_ROUTE = "/api/v1/models/{model_id}/predict"


def _within_rate(request: Request, principal: Principal) -> None:
    """Rate limit per token (or user): 429 with Retry-After. In memory, so it runs before anything else."""
    wait = request.app.state.predict_limiter.acquire(principal.token_id or f"user:{principal.user_id}")
    if wait > 0:
        raise TooManyRequests("Too many prediction calls at once. Slow down a little and try again.",
                              retry_after_s=retry_after(wait), code="rate_limited")


def _within_quota(request: Request, principal: Principal, monthly: int) -> None:
    """The user's monthly quota (a sum over the month's usage, at most every few seconds): 429 with Retry-After."""
    if request.app.state.monthly_quota.images_this_month(principal.user_id, PREDICT_ROUTE) >= monthly:
        raise TooManyRequests(f"You have used this month's {monthly} predictions. Ask the administrator for a "
                              "larger quota, or wait for next month.", retry_after_s=next_month_seconds(utcnow()),
                              code="monthly_quota")


def _resolve_target(request: Request, principal: Principal, model_id: str, version: int | None) -> Target:
    """The version to serve, in one query on the prediction path's own engine (``app.state.lookups``)."""
    with request.app.state.lookups.engine.connect() as connection:
        row = repo.serving_row(connection, principal.user_id, model_id, version)
    if row is None:
        raise no_such_model()
    dataset_id, v, onnx_key, neighbours_key = row
    if v is None:
        raise no_version_yet() if version is None else no_such_version(version)
    return Target(model_id=model_id, v=v, onnx_key=onnx_key, dataset_id=dataset_id, neighbours_key=neighbours_key)


async def _target(request: Request, principal: Predictor, settings: SettingsDep, model_id: str,
                  version: int | None = Query(None, ge=1, description="default: the active version")
                  ) -> AsyncIterator[Target]:
    """The version to serve, authorised before the body is read (another user's model is a 404 whatever the body),
    and the call counted as under way until it is answered (or refused at once when too many are)."""
    request.state.meter = True  # every prediction counts, from the web app too
    _within_rate(request, principal)
    with request.app.state.predictions.admitted():
        loop = asyncio.get_running_loop()
        if settings.predict_monthly_images_per_user:  # a sum over many rows now and then: never on the loop
            await loop.run_in_executor(None, _within_quota, request, principal,
                                       settings.predict_monthly_images_per_user)
        if request.app.state.lookups.on_loop:
            yield _resolve_target(request, principal, model_id, version)
        else:  # a database across the network: off the loop, on the default executor (lighter than anyio's)
            yield await loop.run_in_executor(None, _resolve_target, request, principal, model_id, version)


def name_neighbours(session_factory: Any, dataset_id: str | None, answers: list[dict[str, Any]]) -> None:
    """The dataset's image id and thumbnail for each neighbour (none where the image has since been deleted)."""
    wanted = {n["sha256"] for a in answers for n in a.get("neighbours") or []}
    ids: dict[tuple[str, str], str] = {}
    if wanted and dataset_id is not None:
        with session_factory() as db:
            for image_id, sha, label in db.execute(
                    select(DatasetImage.id, DatasetImage.sha256, DatasetImage.label)
                    .where(DatasetImage.dataset_id == dataset_id, DatasetImage.sha256.in_(wanted))):
                ids.setdefault((sha, label), image_id)
    for answer in answers:
        for n in answer.get("neighbours") or []:
            image_id = ids.get((n["sha256"], n["label"]))
            n["image_id"] = image_id
            n["thumbnail_url"] = (f"/api/v1/datasets/{dataset_id}/images/{image_id}/thumbnail"
                                  if image_id is not None else None)


@router.post("/{model_id}/predict", response_model=PredictionResult,
             openapi_extra={"requestBody": {"content": {
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
                 "application/json": {"schema": inline_schema(PredictRequest)}}}})
async def predict(request: Request, target: Annotated[Target, Depends(_target)], settings: SettingsDep,
                  top_k: int = Query(3, ge=1, le=100),
                  threshold: float | None = Query(None, ge=0, le=1, description="override the version's caution: "
                                                  "answer 'unknown' below this familiarity"),
                  neighbours: int = Query(0, ge=0, le=MAX_NEIGHBOURS, description="also return this many training "
                                          "images of the predicted class that look most alike"),
                  ) -> PredictionResult:
    """Classify images (multipart ``files``, or JSON with base64 or URLs). ``label`` is null ("unknown") when the
    image looks unlike the images the model was taught."""
    images = await read_inputs(request, settings)
    request.state.usage_images = len(images)
    answers = await request.app.state.predictions.predict(target, images, k=top_k, threshold=threshold,
                                                          neighbours=neighbours)
    if neighbours:
        await asyncio.to_thread(name_neighbours, request.app.state.session_factory, target.dataset_id, answers)
    for answer, image in zip(answers, images, strict=True):  # what feedback refers to: this version, these bytes
        answer["prediction_id"] = prediction_id(target.v, image.data if image.data is not None else image.url or "")
    return PredictionResult(model_id=target.model_id, version=target.v, predictions=answers)  # type: ignore[arg-type]
