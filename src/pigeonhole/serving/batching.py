"""Batching across requests: images for the same model that wait together share one inference call.

No timer: a request that finds an inference lane free runs at once, so a lone caller waits for nothing.
While every lane is busy, requests queue; the next free lane takes the oldest waiting request and every
other one waiting for the same model (up to ``max_batch`` images). The batches therefore grow with the
load by themselves, which is what Triton's dynamic batcher and Ray Serve's ``@serve.batch`` do with a
delay that has to be tuned.

Lanes are threads that call ONNX Runtime, which releases the GIL: with one ONNX Runtime thread per lane
and one lane per core, inference uses every core while Python keeps parsing the next requests.
Past ``max_queued`` waiting images the service is overloaded: :class:`Overloaded` says when to come back,
instead of a queue that only grows until clients time out. (In the API, the bound on calls admitted,
``PredictionService.admitted``, comes first; this one guards Ray Serve replicas.)
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pigeonhole.serving.model import ServingModel

SMOOTHING = 0.2  # weight of the newest batch in the seconds-per-image estimate behind Retry-After


class Overloaded(Exception):
    """More images are waiting than the queue bound allows."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"overloaded: retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class _Part:
    model: ServingModel
    pixels: np.ndarray
    future: asyncio.Future[np.ndarray]
    taken: bool = field(default=False)


class Batcher:
    def __init__(self, *, max_batch: int = 32, lanes: int = 1, max_queued: int = 256,
                 observe: Callable[[int], None] | None = None):
        self.max_batch = max_batch
        self.lanes = lanes
        self.max_queued = max_queued
        self._observe = observe
        self._queue: deque[_Part] = deque()
        self._queued_images = 0
        self._busy = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._seconds_per_image = 0.005
        self.sizes: Counter[int] = Counter()  # images per inference call: tests, and the benchmark's histogram

    @property
    def calls(self) -> int:
        return sum(self.sizes.values())

    @property
    def waiting(self) -> int:
        """Images queued for a lane (not those being inferred)."""
        return self._queued_images

    async def run(self, model: ServingModel, pixels: np.ndarray) -> np.ndarray:
        """``model.run(pixels)`` for uint8 (N, C, H, W) pixels, computed together with other waiting requests."""
        if self._busy >= self.lanes and self._queued_images + len(pixels) > self.max_queued:
            backlog = (self._queued_images + len(pixels)) * self._seconds_per_image / self.lanes
            raise Overloaded(max(1, math.ceil(backlog)))
        part = _Part(model, pixels, asyncio.get_running_loop().create_future())
        self._queue.append(part)
        self._queued_images += len(pixels)
        self._dispatch()
        try:
            return await part.future
        except asyncio.CancelledError:
            if not part.taken:  # the caller went away before its turn: its images leave the queue with it
                self._queue.remove(part)
                self._queued_images -= len(pixels)
            raise

    def _dispatch(self) -> None:
        while self._busy < self.lanes and self._queue:
            first = self._queue.popleft()
            batch, rows, rest = [first], len(first.pixels), deque[_Part]()
            while self._queue:
                part = self._queue.popleft()
                if part.model is first.model and rows + len(part.pixels) <= self.max_batch:
                    batch.append(part)
                    rows += len(part.pixels)
                else:
                    rest.append(part)
            self._queue = rest
            for part in batch:
                part.taken = True
            self._queued_images -= rows
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._infer(batch, rows))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _infer(self, batch: list[_Part], rows: int) -> None:
        loop = asyncio.get_running_loop()
        model = batch[0].model
        try:
            started = time.perf_counter()
            try:
                pixels = np.concatenate([p.pixels for p in batch]) if len(batch) > 1 else batch[0].pixels
                out = await loop.run_in_executor(self._lane(), model.run, pixels)
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0], error=exc)
                    return
                # One request's images broke the batch: each request alone, so only that one fails.
                for part in batch:
                    try:
                        _settle(part, result=await loop.run_in_executor(self._lane(), model.run, part.pixels))
                    except Exception as alone:
                        _settle(part, error=alone)
                return
            elapsed = time.perf_counter() - started
            self._seconds_per_image += SMOOTHING * (elapsed / rows - self._seconds_per_image)
            self.sizes[rows] += 1
            if self._observe is not None:
                self._observe(rows)
            start = 0
            for part in batch:
                _settle(part, result=out[start:start + len(part.pixels)])
                start += len(part.pixels)
        finally:
            self._busy -= 1
            self._dispatch()

    def _lane(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.lanes, thread_name_prefix="predict-lane")
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _settle(part: _Part, *, result: np.ndarray | None = None, error: BaseException | None = None) -> None:
    """Hand a caller its answer, unless it stopped waiting (a cancelled future takes nothing)."""
    if part.future.done():
        return
    if error is not None:
        part.future.set_exception(error)
    else:
        part.future.set_result(result)  # type: ignore[arg-type]
