"""Loaded models kept in memory, least recently used first out, within a byte budget.

Concurrent requests for a model that is not loaded yet wait for one load instead of each loading it.

Keys may be ``(group, member)`` pairs, such as (model id, version): a member that has not been used
for ``superseded_idle_s`` while another member of its group has is unloaded, whatever the budget.
Every retrain or class change makes a new version that takes over the traffic; without this the
old versions' sessions would stay loaded until the (generous) byte budget is reached, and memory
would climb for hours on a service whose models change often.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from pigeonhole.serving.model import ServingModel


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim, or a no-op elsewhere. An unloaded session frees tens of MB into malloc's free
    lists, spread over the arenas of the threads that ran it; without a trim the process keeps them, and
    its resident memory only ever grows as versions come and go."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0) and None


release_freed_memory = _malloc_trim()


class ModelCache:
    def __init__(self, max_bytes: int, *, superseded_idle_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.superseded_idle_s = superseded_idle_s
        self._clock = clock
        self._models: OrderedDict[Hashable, ServingModel] = OrderedDict()
        self._last_used: dict[Hashable, float] = {}
        self._next_sweep = 0.0
        self._unloaded = False
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}
        self.loads = 0

    def get(self, key: Hashable, loader: Callable[[], ServingModel]) -> ServingModel:
        try:
            return self._get(key, loader)
        finally:
            if self._unloaded:  # outside the lock: a trim takes a few milliseconds
                self._unloaded = False
                release_freed_memory()

    def loaded(self, key: Hashable) -> ServingModel | None:
        """The model if it is loaded (marked as used), else None. Never loads, and leaves handing freed memory
        back to the next :meth:`get`: cheap enough for an event loop, which then calls ``get`` in a thread."""
        with self._lock:
            if self._unloaded:
                return None
            self._touch(key)
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
            return model

    def _get(self, key: Hashable, loader: Callable[[], ServingModel]) -> ServingModel:
        with self._lock:
            self._touch(key)
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                model = self._models.get(key)
                if model is not None:
                    return model
            model = loader()
            with self._lock:
                self.loads += 1
                self._models[key] = model
                self._loading.pop(key, None)
                self._evict(keep=key)
            return model

    def _touch(self, key: Hashable) -> None:
        now = self._clock()
        self._last_used[key] = now
        if now >= self._next_sweep:  # at most once a second: the sweep looks at every loaded model
            self._next_sweep = now + 1.0
            self._unload_superseded(now)

    def _unload_superseded(self, now: float) -> None:
        latest: dict[Hashable, float] = {}
        for key in self._models:
            if isinstance(key, tuple) and len(key) == 2:
                latest[key[0]] = max(latest.get(key[0], 0.0), self._last_used.get(key, 0.0))
        for key in list(self._models):
            if not (isinstance(key, tuple) and len(key) == 2):
                continue
            used = self._last_used.get(key, 0.0)
            if now - used > self.superseded_idle_s and latest[key[0]] > used:
                del self._models[key]
                self._last_used.pop(key, None)
                self._unloaded = True

    def _evict(self, keep: Hashable) -> None:
        while self._used() > self.max_bytes and len(self._models) > 1:
            oldest = next(iter(self._models))
            if oldest == keep:
                self._models.move_to_end(oldest)
                continue
            del self._models[oldest]
            self._last_used.pop(oldest, None)
            self._unloaded = True

    def _used(self) -> int:
        return sum(m.memory_bytes for m in self._models.values())

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._models.pop(key, None)
            self._last_used.pop(key, None)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._models

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)
