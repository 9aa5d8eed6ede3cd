"""Batching across requests: images for the same model that wait together share one inference call.

No timer: a request that finds an inference lane free runs at once, so a lone caller waits for nothing.
While every lane is busy, requests queue; the next free lane takes the oldest waiting request and every
other one waiting for the same model (up to ``max_batch`` images). The batches therefore grow with the
load by themselves, which is what Triton's dynamic batcher and Ray Serve's ``@serve.batch`` do with a
delay that has to be tuned.

Lanes are threads that call ONNX Runtime, which releases the GIL: with one ONNX Runtime thread per lane
and one lane per core, inference uses every core while Python keeps parsing the next requests. A request may
hand over its images still encoded (a function that decodes them): the lane decodes them just before the
inference, which saves the request a hand-off to another thread and back (measured: about a tenth of the
Python time of a one-image call). An image that cannot be decoded fails its own request only.
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


Pixels = np.ndarray | Callable[[], np.ndarray]  # uint8 (N, C, H, W), or what makes them (run on a lane)


@dataclass(eq=False)
class _Part:
    model: ServingModel
    pixels: Pixels
    rows: int
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
    def waiting(self) -> int:
        """Images queued for a lane (not those being inferred)."""
        return self._queued_images

    async def run(self, model: ServingModel, pixels: Pixels, rows: int | None = None) -> np.ndarray:
        """``model.run(pixels)``, computed together with other waiting requests. ``pixels`` may be a function
        that returns them (called on the lane); then ``rows`` says how many images it will return."""
        if rows is None:
            if callable(pixels):
                raise TypeError("rows is needed when the pixels are made on the lane")
            rows = len(pixels)
        if self._busy >= self.lanes and self._queued_images + rows > self.max_queued:
            backlog = (self._queued_images + rows) * self._seconds_per_image / self.lanes
            raise Overloaded(max(1, math.ceil(backlog)))
        part = _Part(model, pixels, rows, asyncio.get_running_loop().create_future())
        self._queue.append(part)
        self._queued_images += rows
        self._dispatch()
        try:
            return await part.future
        except asyncio.CancelledError:
            if not part.taken:  # the caller went away before its turn: its images leave the queue with it
                self._queue.remove(part)
                self._queued_images -= rows
            raise

    def _dispatch(self) -> None:
        while self._busy < self.lanes and self._queue:
            first = self._queue.popleft()
            batch, rows, rest = [first], first.rows, deque[_Part]()
            while self._queue:
                part = self._queue.popleft()
                if part.model is first.model and rows + part.rows <= self.max_batch:
                    batch.append(part)
                    rows += part.rows
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
        try:
            started = time.perf_counter()
            outcomes = await asyncio.get_running_loop().run_in_executor(self._lane(), _work, batch)
            elapsed = time.perf_counter() - started
            self._seconds_per_image += SMOOTHING * (elapsed / rows - self._seconds_per_image)
            self.sizes[rows] += 1
            if self._observe is not None:
                self._observe(rows)
            for part, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    _settle(part, error=outcome)
                else:
                    _settle(part, result=outcome)
        except BaseException as exc:  # the lane itself failed (shut down): nobody may be left waiting
            for part in batch:
                _settle(part, error=exc if isinstance(exc, Exception) else RuntimeError("prediction stopped"))
            if not isinstance(exc, Exception):
                raise
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


def _work(batch: list[_Part]) -> list[np.ndarray | BaseException]:
    """On a lane: each request's pixels (decoded here if they came encoded), one inference for all of them,
    and each request's rows of the answer, or what went wrong for that request alone."""
    outcomes: list[np.ndarray | BaseException | None] = [None] * len(batch)
    ready: list[tuple[int, np.ndarray]] = []
    for i, part in enumerate(batch):
        try:
            ready.append((i, part.pixels() if callable(part.pixels) else part.pixels))
        except Exception as exc:  # an image that cannot be decoded: that request's 4xx
            outcomes[i] = exc
    if ready:
        model = batch[0].model
        try:
            out = model.run(np.concatenate([p for _, p in ready]) if len(ready) > 1 else ready[0][1])
            start = 0
            for i, pixels in ready:
                outcomes[i] = out[start:start + len(pixels)]
                start += len(pixels)
        except Exception as exc:
            if len(ready) == 1:
                outcomes[ready[0][0]] = exc
            else:  # one request's images broke the batch: each request alone, so only that one fails
                for i, pixels in ready:
                    try:
                        outcomes[i] = model.run(pixels)
                    except Exception as alone:
                        outcomes[i] = alone
    return outcomes  # type: ignore[return-value]


def _settle(part: _Part, *, result: np.ndarray | None = None, error: BaseException | None = None) -> None:
    """Hand a caller its answer, unless it stopped waiting (a cancelled future takes nothing)."""
    if part.future.done():
        return
    if error is not None:
        part.future.set_exception(error)
    else:
        part.future.set_result(result)  # type: ignore[arg-type]
