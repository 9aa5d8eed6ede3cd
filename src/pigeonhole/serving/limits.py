"""Prediction rate limits: a token bucket per caller (API token, or user for browser sessions).

Kept in the API process: with several replicas behind a load balancer each enforces its share,
which is what a rate limit is for (protecting the serving capacity) without a shared store on the
request path. Monthly quotas, which must be exact across replicas, come from the usage records.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, *, max_callers: int = 100_000):
        self.rate = rate_per_s
        self.burst = burst
        self.max_callers = max_callers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller -> (tokens, last time)
        self._lock = threading.Lock()

    def acquire(self, caller: str, cost: float = 1.0) -> float:
        """0 when allowed; otherwise the seconds to wait before this request would be allowed."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= cost:
                self._buckets[caller] = (tokens - cost, now)
                wait = 0.0
            else:
                self._buckets[caller] = (tokens, now)
                wait = (cost - tokens) / self.rate
            while len(self._buckets) > self.max_callers:  # bounded memory: forget the idlest callers
                self._buckets.popitem(last=False)
        return wait


def retry_after(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))
