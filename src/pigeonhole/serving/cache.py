"""Loaded models kept in memory, least recently used first out, within a byte budget.

Concurrent requests for a model that is not loaded yet wait for one load instead of each loading it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from pigeonhole.serving.model import ServingModel


class ModelCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._models: OrderedDict[Hashable, ServingModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}
        self.loads = 0

    def get(self, key: Hashable, loader: Callable[[], ServingModel]) -> ServingModel:
        with self._lock:
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

    def _evict(self, keep: Hashable) -> None:
        while self._used() > self.max_bytes and len(self._models) > 1:
            oldest = next(iter(self._models))
            if oldest == keep:
                self._models.move_to_end(oldest)
                continue
            del self._models[oldest]

    def _used(self) -> int:
        return sum(m.memory_bytes for m in self._models.values())

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._models.pop(key, None)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._models

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)
