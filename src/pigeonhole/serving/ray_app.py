"""The Ray Serve application behind ``PIGEONHOLE_PREDICT_MODE=ray``: inference on the Ray workers.

Imported only by the dispatcher (the only Ray driver), which deploys it, and by the Serve replicas.
The API process never imports this module: it reaches the deployment over HTTP (``serving.backends``).

- **Model multiplexing**: the model id is the version's blob key (the API sends it in Serve's
  ``serve_multiplexed_model_id`` header), so Serve routes a request to a replica that already holds that
  version; each replica keeps ``PIGEONHOLE_SERVE_MODELS_PER_REPLICA`` versions and unloads the least
  recently used one.
- **Autoscaling** between 1 and ``PIGEONHOLE_SERVE_MAX_REPLICAS`` replicas on the number of requests in
  flight; each replica reserves ``PIGEONHOLE_SERVE_REPLICA_CPUS`` CPUs, small by default so it fits
  beside training jobs.
- A replica receives already decoded pixels and answers the model's outputs (``serving.wire``), running the
  same ONNX Runtime session and batcher (``serving.batching``) as ``inline`` mode, so both modes answer the same.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import numpy as np
from ray import serve
from ray.serve.deployment import Application
from starlette.requests import Request
from starlette.responses import Response

from pigeonhole.serving import wire
from pigeonhole.serving.batching import Batcher, Overloaded
from pigeonhole.serving.model import ServingModel, load_model
from pigeonhole.settings import Settings
from pigeonhole.storage.blobs import BlobStore

log = logging.getLogger(__name__)

# Version files only (models/<model id>/<version id>/<name>.onnx): whoever can reach the Serve port
# must not make a replica open any other blob as a model.
MODEL_KEY = re.compile(r"^models/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/[A-Za-z0-9_.-]+\.onnx$")
# Requests one replica accepts at a time: enough for its micro-batcher to gather full batches.
MAX_ONGOING_REQUESTS = 32
TARGET_ONGOING_REQUESTS = 8


@serve.deployment(name="predictor")
class Predictor:
    def __init__(self, config: dict[str, Any]) -> None:
        self.blobs = BlobStore(config["blob_url"])
        self.threads: int | None = config.get("threads")
        # One lane: a replica is one share of the cluster's cores; Serve adds replicas for more.
        self.batcher = Batcher(max_batch=int(config["max_batch"]), lanes=1, max_queued=MAX_ONGOING_REQUESTS * 64)

        async def load_version(model_id: str) -> ServingModel:
            return await asyncio.to_thread(self._load, model_id)

        # Wired up here rather than as a decorated method so that the number of models per replica comes
        # from the settings (a decorator's argument is fixed when the class is defined).
        self.model_for = serve.multiplexed(max_num_models_per_replica=int(config["models_per_replica"]))(
            load_version)

    def _load(self, model_id: str) -> ServingModel:
        log.info("loading model %s", model_id)
        return load_model(self.blobs.read_bytes(model_id), threads=self.threads)

    async def __call__(self, request: Request) -> Response:
        model_id = serve.get_multiplexed_model_id()
        if not MODEL_KEY.match(model_id or "") or ".." in model_id:
            return Response(f"{wire.MODEL_HEADER} must name a model version file", status_code=400)
        try:
            pixels = wire.decode(await request.body(), request.headers)
        except ValueError as exc:
            return Response(f"unreadable pixels: {exc}", status_code=400)
        if pixels.ndim != 4 or pixels.dtype != np.uint8 or len(pixels) == 0:
            return Response("pixels must be a non-empty uint8 (N, C, H, W) array", status_code=400)
        model = await self.model_for(model_id)
        try:
            probs = await self.batcher.run(model, pixels)
        except Overloaded as exc:
            return Response("overloaded", status_code=503, headers={"Retry-After": str(exc.retry_after_s)})
        body, headers = wire.encode(probs)
        return Response(body, headers=headers)


def build_app(settings: Settings) -> Application:
    config = {"blob_url": settings.resolved_blob_url, "threads": settings.serving_threads,
              "max_batch": settings.predict_max_batch,
              "models_per_replica": settings.serve_models_per_replica}
    return Predictor.options(
        ray_actor_options={"num_cpus": settings.serve_replica_cpus},
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": settings.serve_max_replicas,
                            "target_ongoing_requests": TARGET_ONGOING_REQUESTS},
    ).bind(config)


def deploy(settings: Settings) -> None:
    """Start Serve's HTTP proxy and (re)deploy the application; returns once it runs. Needs ``ray.init``."""
    serve.start(http_options={"host": settings.serve_host, "port": settings.serve_port})
    serve.run(build_app(settings), name=wire.APP_NAME, route_prefix=wire.ROUTE_PREFIX)
    log.info("prediction service running on Ray Serve at %s%s", settings.resolved_serve_url, wire.ROUTE_PREFIX)


def shutdown() -> None:
    serve.shutdown()
