"""Predictions: read images from a multipart or JSON request, decode off the event loop, infer on the backend
chosen by ``PIGEONHOLE_PREDICT_MODE`` (this process, or Ray Serve), answer with thresholds and top-k."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from fastapi import Request
from pydantic import ValidationError

from pigeonhole.errors import OVERLOADED_SENTENCE, PayloadTooLarge, ServiceUnavailable, Unprocessable
from pigeonhole.learn.neighbours import NeighbourIndex
from pigeonhole.models.schemas import PredictRequest
from pigeonhole.serving.backends import PredictBackend, make_backend
from pigeonhole.serving.cache import ModelCache
from pigeonhole.serving.model import ModelContract, split_answers
from pigeonhole.serving.preprocess import pixels_for, top_k
from pigeonhole.settings import Settings
from pigeonhole.storage.blobs import BlobStore
from pigeonhole.storage.fetch import FetchPolicy, FetchRefused, fetch
from pigeonhole.storage.images import ImageLimits, ImageRejected

DECODED_ON_LANE = 4  # calls with up to this many images (and no URLs) are decoded by the inference lane
INDEXES_KEPT = 4  # neighbour indexes held in memory (a 10,000-image version's is about 25 MB)


@dataclass(frozen=True)
class Target:
    """The version to serve, as plain data resolved (and authorised) before the body is read."""

    model_id: str
    v: int
    onnx_key: str
    dataset_id: str | None = None
    neighbours_key: str | None = None  # the version's neighbour index ("it looks like these"), if it has one


@dataclass
class InputImage:
    name: str | None
    data: bytes | None = None
    url: str | None = None


def prediction_id(version: int, content: bytes | str) -> str:
    """What a feedback call names a prediction by: the version that answered and the image (its sha256, or the
    address it was read from)."""
    data = content.encode() if isinstance(content, str) else content
    return f"v{version}-{hashlib.sha256(data).hexdigest()[:32]}"


async def read_inputs(request: Request, settings: Settings) -> list[InputImage]:
    """The images of a prediction call: multipart ``files``, JSON, or one image as the raw body (``image/*``,
    the lightest for a program that classifies one image per call: no form to parse)."""
    content_type = request.headers.get("content-type", "")
    limit = settings.predict_max_images
    if content_type.startswith(("image/", "application/octet-stream")):
        images = [InputImage(name=None, data=await request.body())]
        if not images[0].data:
            raise Unprocessable("Send at least one image.", code="no_images")
    elif content_type.startswith("multipart/"):
        form = await request.form(max_files=limit + 1)
        files = [f for f in form.getlist("files") if hasattr(f, "read")]
        images = [InputImage(name=getattr(f, "filename", None), data=await f.read()) for f in files]  # type: ignore[union-attr]
    elif content_type.startswith("application/json"):
        try:
            body = PredictRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            raise Unprocessable("The body must be {\"images\": [{\"base64\": \"...\"} or {\"url\": \"...\"}]}.",
                                code="invalid_input") from exc
        images = []
        for position, item in enumerate(body.images, start=1):
            if bool(item.base64) == bool(item.url):
                raise Unprocessable(f"Image {position}: give either 'base64' or 'url'.", code="invalid_input")
            if item.base64:
                try:
                    images.append(InputImage(name=None, data=base64.b64decode(item.base64, validate=True)))
                except (binascii.Error, ValueError) as exc:
                    raise Unprocessable(f"Image {position}: the base64 text is not valid.",
                                        code="invalid_base64") from exc
            else:
                images.append(InputImage(name=item.url, url=item.url))
    else:
        raise Unprocessable("Send images as multipart 'files', JSON {\"images\": [...]}, or one image as the body "
                            "with its type (Content-Type: image/jpeg).", code="unsupported_media_type")
    if not images:
        raise Unprocessable("Send at least one image.", code="no_images")
    if len(images) > limit:
        raise PayloadTooLarge(f"Send at most {limit} images per call.", code="too_many_images")
    return images


def _pixels(model: ModelContract, image: InputImage, limits: ImageLimits, policy: FetchPolicy,
            position: int) -> np.ndarray:
    label = f"'{image.name}'" if image.name else f"Image {position}"
    data = image.data
    if image.url is not None:
        try:
            fetched = fetch(image.url, policy)
        except FetchRefused as exc:
            raise Unprocessable(f"{label}: {exc.sentence}", code=exc.code) from exc
        with fetched.body:
            data = fetched.body.read()
    try:
        return pixels_for(model, data or b"", limits)
    except ImageRejected as exc:
        raise Unprocessable(f"{label}: {exc.sentence}", code=exc.code.value) from exc


class PredictionService:
    """One per app. Decoding, validation, thresholds and top-k happen here in both modes; only the
    inference itself goes to the backend, so ``inline`` and ``ray`` answer the same."""

    def __init__(self, settings: Settings, blobs: BlobStore, backend: PredictBackend | None = None,
                 observe: Callable[[int], None] | None = None):
        self.settings = settings
        self.blobs = blobs
        self.backend = backend or make_backend(settings, blobs, observe)
        self._indexes: OrderedDict[str, NeighbourIndex] = OrderedDict()
        self._index_lock = threading.Lock()
        self.max_in_flight = settings.predict_max_in_flight
        self.in_flight = 0  # calls admitted and not yet answered (read and changed on the event loop only)
        self._call_s = 0.05  # how long recent calls took, queueing included: the Retry-After of a refusal

    def refusal(self) -> int | None:
        """None while a new call can be taken on; else the seconds to tell it to wait (Retry-After)."""
        return max(1, math.ceil(self._call_s)) if self.in_flight >= self.max_in_flight else None

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """One prediction call, if fewer than ``max_in_flight`` are under way; else 503 with Retry-After.

        Bounding the calls (not only the images waiting for a lane) bounds every queue a call passes through:
        the body being read, the decoding threads, the lanes. Under a flood, what gets through is answered
        within about a second and the rest is told at once when to come back, instead of all timing out.
        """
        wait = self.refusal()
        if wait is not None:
            raise ServiceUnavailable(OVERLOADED_SENTENCE, retry_after_s=wait, code="overloaded")
        self.in_flight += 1
        started = time.monotonic()
        try:
            yield
        finally:
            self.in_flight -= 1
            self._call_s += 0.1 * (time.monotonic() - started - self._call_s)

    @property
    def cache(self) -> ModelCache | None:
        """The inline backend's loaded sessions (None in ray mode: the replicas hold them)."""
        return getattr(self.backend, "cache", None)

    async def predict(self, target: Target, images: list[InputImage], *, k: int,
                      threshold: float | None, neighbours: int = 0) -> list[dict[str, object]]:
        key = (target.model_id, target.v)
        contract = await self.backend.contract(key, target.onnx_key)
        if neighbours and target.neighbours_key is None:
            raise Unprocessable("This version keeps no features of its training images, so it cannot show the "
                                "images an answer looks like. Versions trained or changed from now on can; "
                                "retrain the model, or ask without 'neighbours'.", code="no_neighbours")
        limits = ImageLimits(max_pixels=self.settings.max_image_pixels, max_bytes=self.settings.max_image_bytes)
        policy = FetchPolicy(allow_private=self.settings.fetch_allow_private, timeout_s=self.settings.fetch_timeout_s,
                             max_bytes=self.settings.max_image_bytes)
        if len(images) <= DECODED_ON_LANE and all(image.url is None for image in images):
            def decode() -> np.ndarray:  # on the inference lane, just before the inference
                return np.stack([_pixels(contract, image, limits, policy, i) for i, image in enumerate(images, 1)])

            out = await self.backend.outputs(key, target.onnx_key, decode, rows=len(images))
        else:  # many images, or images to fetch first: decoded side by side, off the lanes
            arrays = await asyncio.gather(*(asyncio.to_thread(_pixels, contract, image, limits, policy, i)
                                            for i, image in enumerate(images, start=1)))
            out = await self.backend.outputs(key, target.onnx_key, np.stack(arrays))
        probs, familiar, features = split_answers(contract, out)
        answers = top_k(contract, probs, familiar, k, threshold)
        for answer, image in zip(answers, images, strict=True):
            answer["name"] = image.name
        if neighbours and target.neighbours_key is not None:
            index = await asyncio.to_thread(self._index, target.neighbours_key)
            classes = [contract.classes[int(i)] for i in probs.argmax(axis=1)]  # the answer, or the best guess
            found = index.nearest(features, classes, neighbours)
            for answer, near in zip(answers, found, strict=True):
                answer["neighbours"] = [{"sha256": n.sha256, "label": n.label, "similarity": n.similarity}
                                        for n in near]
        return answers

    def _index(self, key: str) -> NeighbourIndex:
        """A version's neighbour index, kept for the last few versions asked (they are read-only files)."""
        with self._index_lock:
            if key in self._indexes:
                self._indexes.move_to_end(key)
                return self._indexes[key]
        index = NeighbourIndex.read(key, self.blobs.map_bytes)
        with self._index_lock:
            self._indexes[key] = index
            while len(self._indexes) > INDEXES_KEPT:
                self._indexes.popitem(last=False)
        return index

    async def aclose(self) -> None:
        await self.backend.aclose()
