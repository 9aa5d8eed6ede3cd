"""Serving: a real exported classifier, the model cache, micro-batching and answers with 'unknown'."""

from __future__ import annotations

import asyncio
import io
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from pigeonhole.serving.batching import Batcher
from pigeonhole.serving.cache import ModelCache
from pigeonhole.serving.model import load_model, split_answers
from pigeonhole.serving.preprocess import pixels_for, top_k
from pigeonhole.storage.images import ImageLimits, ImageRejected
from tests.model_factories import dark_bright_onnx, grey_png

LIMITS = ImageLimits()


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return dark_bright_onnx()


def test_loaded_model_classifies_real_images(onnx_bytes: bytes) -> None:
    model = load_model(onnx_bytes, threads=1)
    assert set(model.classes) == {"dark", "bright"} and (model.height, model.width, model.color) == (28, 28, "L")
    images = [grey_png(40, 900), grey_png(210, 901)]
    pixels = np.stack([pixels_for(model, data, LIMITS) for data in images])
    probs, familiar, features = split_answers(model, model.run(pixels))
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert familiar.shape == (2,) and ((familiar >= 0) & (familiar <= 1)).all() and features.shape[0] == 2
    answers = top_k(model, probs, familiar, k=5)
    assert [a["label"] for a in answers] == ["dark", "bright"]
    assert len(answers[0]["top"]) == 2 and answers[0]["top"][0]["label"] == "dark"
    unknown = top_k(model, probs, familiar, k=1, threshold=1.01)
    assert all(a["label"] is None for a in unknown)  # below the threshold: 'unknown'


def test_big_colour_photos_are_reduced_to_the_model_input(onnx_bytes: bytes) -> None:
    model = load_model(onnx_bytes)
    rng = np.random.default_rng(0)
    photo = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8)).save(photo, "JPEG")
    assert pixels_for(model, photo.getvalue(), LIMITS).shape == (1, 28, 28)


def test_bad_bytes_are_rejected_not_crashed(onnx_bytes: bytes) -> None:
    model = load_model(onnx_bytes)
    with pytest.raises(ImageRejected):
        pixels_for(model, b"definitely not an image", LIMITS)
    with pytest.raises(ValueError, match="metadata"):
        load_model(_plain_onnx())


def _plain_onnx() -> bytes:
    """A valid ONNX file without Pigeonhole's metadata."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter says it is legacy
        torch.onnx.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), buffer, dynamo=False)
    return buffer.getvalue()


def test_cache_keeps_recent_models_within_budget(onnx_bytes: bytes) -> None:
    one = load_model(onnx_bytes)
    cache = ModelCache(max_bytes=one.memory_bytes * 2)
    for key in ("a", "b", "c"):
        cache.get(key, lambda: load_model(onnx_bytes))
    assert "a" not in cache and "b" in cache and "c" in cache and cache.loads == 3
    cache.get("b", lambda: pytest.fail("a cached model is not loaded again"))
    cache.get("d", lambda: load_model(onnx_bytes))
    assert "c" not in cache and "b" in cache  # b was used more recently than c


def test_superseded_versions_are_unloaded_once_idle(onnx_bytes: bytes) -> None:
    """A retrain or class change moves the traffic to a new version: the old one's session goes after a
    minute without requests, long before the byte budget would push it out."""
    now = [0.0]
    cache = ModelCache(max_bytes=10**12, superseded_idle_s=60, clock=lambda: now[0])
    cache.get(("m", 1), lambda: load_model(onnx_bytes))
    cache.get(("other", 1), lambda: load_model(onnx_bytes))
    now[0] = 10
    cache.get(("m", 2), lambda: load_model(onnx_bytes))  # version 2 serves from now on
    for t in range(20, 60, 5):
        now[0] = t
        cache.get(("m", 2), lambda: pytest.fail("loaded once"))
    assert ("m", 1) in cache  # 55 s without a request: kept
    now[0] = 61
    cache.get(("m", 2), lambda: pytest.fail("loaded once"))
    assert ("m", 1) not in cache and ("m", 2) in cache
    assert ("other", 1) in cache  # the only version of its model: kept however idle (the budget decides)
    now[0] = 200
    cache.get(("m", 1), lambda: load_model(onnx_bytes))  # asked for explicitly again: loaded again
    assert ("m", 1) in cache and cache.loads == 4


def test_concurrent_requests_share_one_load(onnx_bytes: bytes) -> None:
    cache = ModelCache(max_bytes=10**9)
    barrier = threading.Barrier(6)

    def load():  # type: ignore[no-untyped-def]
        return load_model(onnx_bytes)

    def worker() -> None:
        barrier.wait()
        cache.get("same", load)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.loads == 1


def test_requests_waiting_together_share_one_inference(onnx_bytes: bytes) -> None:
    model = load_model(onnx_bytes, threads=1)
    batches = [np.stack([pixels_for(model, grey_png(40 + 20 * i, i), LIMITS)]) for i in range(8)]
    alone = [model.run(b) for b in batches]
    batcher = Batcher(max_batch=64, lanes=1)

    async def all_at_once() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.run(model, b) for b in batches))

    together = asyncio.run(all_at_once())
    # The first went at once (a lane was free: no waiting for company); the other 7 queued behind it.
    assert batcher.sizes == {1: 1, 7: 1}
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)

    small = Batcher(max_batch=3, lanes=1)

    async def overflow() -> list[np.ndarray]:
        return await asyncio.gather(*(small.run(model, b) for b in batches))

    asyncio.run(overflow())
    assert small.sizes == {1: 2, 3: 2}  # 1 at once, then the 7 waiting as 3, 3 and 1
