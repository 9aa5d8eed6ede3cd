"""Batching across requests, with real exported models: each caller gets its own answer, a bad request fails
alone, the queue bound refuses with a wait, and a caller that goes away leaks nothing."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from pigeonhole.serving.batching import Batcher, Overloaded
from pigeonhole.serving.model import ServingModel, load_model, split_answers
from pigeonhole.serving.preprocess import pixels_for
from pigeonhole.storage.images import ImageLimits, ImageRejected
from tests.model_factories import dark_bright_onnx, grey_png

LIMITS = ImageLimits()


class Gated:
    """A real model whose inference waits for the test to open the gate (it runs on a lane thread)."""

    def __init__(self, model: ServingModel):
        self.model = model
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def run(self, pixels: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(10)
        self.batches.append(len(pixels))
        return self.model.run(pixels)


@pytest.fixture(scope="module")
def models() -> tuple[ServingModel, ServingModel, ServingModel]:
    """Version 1, the same file loaded again as another version, and a model that names the classes the
    other way round (so an answer tells which model gave it)."""
    first = dark_bright_onnx()
    return (load_model(first, threads=1), load_model(first, threads=1),
            load_model(dark_bright_onnx(dark="bright", bright="dark"), threads=1))


def image(model: ServingModel, level: int, seed: int) -> np.ndarray:
    return pixels_for(model, grey_png(level, seed), LIMITS)[None]


async def until(condition, timeout_s: float = 10) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout_s / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out")


def label(model: ServingModel, out: np.ndarray) -> str:
    probs, _, _ = split_answers(model, out)
    return model.classes[int(probs[0].argmax())]


def test_each_caller_gets_its_own_answer_with_mixed_models_and_versions(models) -> None:  # type: ignore[no-untyped-def]
    v1, v2, swapped = models
    blocker = Gated(v1)
    batcher = Batcher(max_batch=32, lanes=1)
    asks = [(model, level, seed) for seed in range(6) for model in (v1, v2, swapped) for level in (40, 210)]

    async def scenario() -> list[np.ndarray]:
        first = asyncio.ensure_future(batcher.run(blocker, image(v1, 40, 99)))  # type: ignore[arg-type]
        await until(blocker.entered.is_set)  # the lane is busy: everything after this queues
        rest = [asyncio.ensure_future(batcher.run(m, image(m, level, seed))) for m, level, seed in asks]
        await until(lambda: batcher.waiting == len(asks))
        blocker.gate.set()
        await first
        return await asyncio.gather(*rest)

    answers = asyncio.run(scenario())
    for (model, level, seed), out in zip(asks, answers, strict=True):
        # ONNX Runtime rounds in float32 differently at another batch size (familiarity of this untrained
        # extractor's tiny features moves by up to 3e-5); another caller's answer would differ far more.
        np.testing.assert_allclose(out, model.run(image(model, level, seed)), atol=1e-4)
        dark = "dark" if model is not swapped else "bright"  # the swapped model calls dark images "bright"
        assert label(model, out) == (dark if level == 40 else {"dark": "bright", "bright": "dark"}[dark])
    # One call per model object for the 12 images each waited with, never a mixed batch.
    assert batcher.sizes == {1: 1, 12: 3}


def test_a_request_that_breaks_its_batch_fails_alone(models) -> None:  # type: ignore[no-untyped-def]
    v1 = models[0]
    blocker = Gated(v1)
    batcher = Batcher(max_batch=32, lanes=1)
    wrong_size = np.zeros((1, 1, 20, 20), dtype=np.uint8)  # not the model's 28 x 28: ONNX Runtime refuses it

    def undecodable() -> np.ndarray:  # encoded images are decoded on the lane, just before the inference
        return pixels_for(v1, b"not an image at all", LIMITS)[None]

    async def scenario() -> list[object]:
        first = asyncio.ensure_future(batcher.run(blocker, image(v1, 40, 1)))  # type: ignore[arg-type]
        await until(blocker.entered.is_set)
        waiting = [batcher.run(v1, image(v1, 40, 2)), batcher.run(v1, wrong_size), batcher.run(v1, undecodable, 1),
                   batcher.run(v1, lambda: image(v1, 210, 3), 1)]
        tasks = [asyncio.ensure_future(w) for w in waiting]
        await until(lambda: batcher.waiting == 4)
        blocker.gate.set()
        await first
        return await asyncio.gather(*tasks, return_exceptions=True)

    good, bad, not_an_image, also_good = asyncio.run(scenario())
    assert isinstance(bad, Exception) and isinstance(not_an_image, ImageRejected)
    assert label(v1, good) == "dark" and label(v1, also_good) == "bright"  # type: ignore[arg-type]


def test_past_the_queue_bound_a_request_is_refused_with_a_wait(models) -> None:  # type: ignore[no-untyped-def]
    v1 = models[0]
    blocker = Gated(v1)
    batcher = Batcher(max_batch=32, lanes=1, max_queued=4)

    async def scenario() -> tuple[Overloaded, list[np.ndarray]]:
        first = asyncio.ensure_future(batcher.run(blocker, image(v1, 40, 1)))  # type: ignore[arg-type]
        await until(blocker.entered.is_set)
        queued = [asyncio.ensure_future(batcher.run(v1, image(v1, 40, i))) for i in range(4)]
        await until(lambda: batcher.waiting == 4)
        with pytest.raises(Overloaded) as refused:
            await batcher.run(v1, image(v1, 210, 9))
        blocker.gate.set()
        await first
        return refused.value, await asyncio.gather(*queued)

    refused, answers = asyncio.run(scenario())
    assert refused.retry_after_s >= 1 and len(answers) == 4  # the refused one took nobody's place
    assert batcher.waiting == 0


def test_a_caller_that_goes_away_leaks_nothing(models) -> None:  # type: ignore[no-untyped-def]
    v1 = models[0]
    blocker = Gated(v1)
    batcher = Batcher(max_batch=32, lanes=1)

    async def scenario() -> np.ndarray:
        in_flight = asyncio.ensure_future(batcher.run(blocker, image(v1, 40, 1)))  # type: ignore[arg-type]
        await until(blocker.entered.is_set)
        leaving = asyncio.ensure_future(batcher.run(v1, np.concatenate([image(v1, 40, 2), image(v1, 40, 3)])))
        staying = asyncio.ensure_future(batcher.run(v1, image(v1, 210, 4)))
        await until(lambda: batcher.waiting == 3)
        leaving.cancel()  # gone while queued: its images leave the queue
        in_flight.cancel()  # gone while its batch runs: the answer is dropped, nothing else is disturbed
        await until(lambda: batcher.waiting == 1)
        blocker.gate.set()
        answer = await staying
        await until(lambda: not batcher._tasks)
        return answer

    answer = asyncio.run(scenario())
    assert label(v1, answer) == "bright"
    assert batcher.waiting == 0 and batcher._busy == 0 and batcher.sizes == {1: 2}
    assert blocker.batches == [1]  # the cancelled in-flight call still ran once; nothing ran for the one that left
