"""Who an API token belongs to, remembered for a few seconds.

Looking a token up costs two queries; on the prediction path that was more CPU than the inference
itself (measured with py-spy: about a fifth of the API's busy time). Tokens are remembered by their
digest for ``ttl_s``: a revocation takes effect at once in the process that revoked it (the cache is
cleared) and within ``ttl_s`` in other API replicas. Expiry is checked on every use.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from datetime import datetime

from pigeonhole.auth.scopes import Principal
from pigeonhole.db.base import utcnow


class TokenCache:
    def __init__(self, ttl_s: float, max_entries: int = 10_000):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, Principal, datetime | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str) -> Principal | None:
        if self.ttl_s <= 0:
            return None
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            seen_at, principal, expires_at = entry
            if time.monotonic() - seen_at > self.ttl_s:
                del self._entries[digest]
                return None
        if expires_at is not None and expires_at <= utcnow():
            return None
        return principal

    def put(self, digest: str, principal: Principal, expires_at: datetime | None) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._entries[digest] = (time.monotonic(), principal, expires_at)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
