"""Where a prediction's inference runs: in this process (``inline``) or on Ray Serve (``ray``).

Both backends are given the same decoded uint8 pixels and return the model's outputs (probabilities,
familiarity and features: ``ServingModel.run``); decoding, validation, thresholds and top-k stay in the API
for both. The two modes therefore answer the same by
construction, and the API keeps authenticating, authorising and metering every call in either mode.
This module must not import Ray: in ``ray`` mode the API talks to the Serve HTTP proxy with httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Protocol

import httpx
import numpy as np

from pigeonhole.errors import OVERLOADED_SENTENCE, ServiceUnavailable
from pigeonhole.serving import wire
from pigeonhole.serving.batching import Batcher, Overloaded, Pixels
from pigeonhole.serving.cache import ModelCache
from pigeonhole.serving.model import ModelContract, ServingModel, load_model, read_contract
from pigeonhole.settings import Settings
from pigeonhole.storage.blobs import BlobStore

log = logging.getLogger(__name__)

BUSY = "The prediction service is starting or busy; try again in a few seconds."


class PredictBackend(Protocol):
    """``key`` identifies a version within this process (model id, version number); ``onnx_key`` is its
    file in the blob store, which is all a Serve replica needs to load it."""

    async def contract(self, key: Hashable, onnx_key: str) -> ModelContract: ...

    async def outputs(self, key: Hashable, onnx_key: str, pixels: Pixels, rows: int | None = None) -> np.ndarray:
        """``pixels`` may be a function that decodes them (``rows`` images): it runs off the event loop."""
        ...

    async def aclose(self) -> None: ...


class InlineBackend:
    """Sessions in this process: a byte-bounded LRU, and batches across concurrent requests on the lanes."""

    def __init__(self, settings: Settings, blobs: BlobStore, observe: Callable[[int], None] | None = None):
        self.settings = settings
        self.blobs = blobs
        self.cache = ModelCache(settings.serving_cache_bytes)
        self.batcher = Batcher(max_batch=settings.predict_max_batch, lanes=settings.resolved_predict_lanes,
                               max_queued=settings.predict_max_in_flight * settings.predict_max_batch,
                               observe=observe)  # the calls admitted (PredictionService) bound it first

    def _load(self, key: Hashable, onnx_key: str) -> ServingModel:
        return self.cache.get(key, lambda: load_model(self.blobs.read_bytes(onnx_key),
                                                      threads=self.settings.resolved_serving_threads))

    async def contract(self, key: Hashable, onnx_key: str) -> ServingModel:
        model = self.cache.loaded(key)  # nearly always: no thread hop
        return model if model is not None else await asyncio.to_thread(self._load, key, onnx_key)

    async def outputs(self, key: Hashable, onnx_key: str, pixels: Pixels, rows: int | None = None) -> np.ndarray:
        model = await self.contract(key, onnx_key)
        try:
            return await self.batcher.run(model, pixels, rows)
        except Overloaded as exc:
            raise ServiceUnavailable(OVERLOADED_SENTENCE, retry_after_s=exc.retry_after_s, code="overloaded") from exc

    async def aclose(self) -> None:
        self.batcher.close()


class ContractCache:
    """Contracts by blob key (versions are immutable, so entries never go stale); bounded by count."""

    def __init__(self, blobs: BlobStore, max_entries: int = 1024):
        self.blobs = blobs
        self.max_entries = max_entries
        self._entries: OrderedDict[str, ModelContract] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def peek(self, onnx_key: str) -> ModelContract | None:
        """The contract if it is known already (no file read: fine on an event loop)."""
        with self._lock:
            return self._entries.get(onnx_key)

    def get(self, onnx_key: str) -> ModelContract:
        with self._lock:
            found = self._entries.get(onnx_key)
            if found is not None:
                self._entries.move_to_end(onnx_key)
                return found
        contract = read_contract(self.blobs.read_bytes(onnx_key))  # rare: a racing duplicate load is harmless
        with self._lock:
            self.loads += 1
            self._entries[onnx_key] = contract
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return contract


class RayServeBackend:
    """Forwards the decoded pixels to the Ray Serve deployment over HTTP and reads back the model's outputs.

    The model's blob key goes in Serve's multiplexing header, so the request lands on a replica that
    already holds that version. Anything going wrong on the Serve side (not started yet, restarting,
    overloaded, timed out) is a 503 with a sentence and ``Retry-After``, never a 500.
    """

    def __init__(self, settings: Settings, blobs: BlobStore):
        self.settings = settings
        self.base_url = settings.resolved_serve_url
        self.contracts = ContractCache(blobs)
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self.calls = 0

    def _http(self) -> httpx.AsyncClient:
        # One client per event loop: a client's connections belong to the loop that opened them.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            # trust_env=False: an HTTP proxy configured for outbound traffic must not carry internal calls.
            self._client = httpx.AsyncClient(base_url=self.base_url, timeout=self.settings.serve_timeout_s,
                                             limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
                                             trust_env=False)
            self._client_loop = loop
        return self._client

    async def contract(self, key: Hashable, onnx_key: str) -> ModelContract:
        known = self.contracts.peek(onnx_key)
        return known if known is not None else await asyncio.to_thread(self.contracts.get, onnx_key)

    async def outputs(self, key: Hashable, onnx_key: str, pixels: Pixels, rows: int | None = None) -> np.ndarray:
        if callable(pixels):
            pixels = await asyncio.to_thread(pixels)
        body, headers = wire.encode(pixels)
        headers[wire.MODEL_HEADER] = onnx_key
        self.calls += 1
        try:
            response = await self._http().post(wire.ROUTE_PREFIX, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            log.warning("Ray Serve did not answer within %.0f s (%s)", self.settings.serve_timeout_s, exc)
            raise ServiceUnavailable(BUSY, code="predictions_unavailable") from exc
        except httpx.HTTPError as exc:
            log.warning("Ray Serve at %s cannot be reached: %s", self.base_url, exc)
            raise ServiceUnavailable(BUSY, code="predictions_unavailable") from exc
        if response.status_code == 503 and response.headers.get("retry-after", "").isdigit():
            raise ServiceUnavailable(OVERLOADED_SENTENCE, retry_after_s=int(response.headers["retry-after"]),
                                     code="overloaded")
        if response.status_code != 200:
            log.warning("Ray Serve answered %s: %s", response.status_code, response.text[:500])
            raise ServiceUnavailable(BUSY, code="predictions_unavailable")
        try:
            probs = wire.decode(response.content, response.headers)
        except ValueError as exc:
            log.error("Ray Serve sent an unreadable answer: %s", exc)
            raise ServiceUnavailable(BUSY, code="predictions_unavailable") from exc
        if probs.ndim != 2 or probs.shape[0] != pixels.shape[0]:
            log.error("Ray Serve answered shape %s for %s images", probs.shape, pixels.shape[0])
            raise ServiceUnavailable(BUSY, code="predictions_unavailable")
        return probs

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(RuntimeError):  # opened on a loop that has since closed: nothing to release
                await client.aclose()


def make_backend(settings: Settings, blobs: BlobStore, observe: Callable[[int], None] | None = None
                 ) -> PredictBackend:
    """``observe`` hears the number of images of each inference call made in this process."""
    if settings.predict_mode == "ray":
        return RayServeBackend(settings, blobs)
    return InlineBackend(settings, blobs, observe)
