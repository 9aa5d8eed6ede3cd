"""Who an API token belongs to, remembered for a few seconds.

Looking a token up costs two queries; on the prediction path that was more CPU than the inference
itself (measured with py-spy: about a fifth of the API's busy time). Tokens are remembered by their
digest for ``ttl_s``. A revocation takes effect at once in every API process of the machine: the process
that revokes clears its memory and touches ``epoch_file`` (under the data directory), and the others see the
file change on their next lookup (one ``stat``) and forget too. API replicas on other machines have their
own data directory and forget within ``ttl_s``. Expiry is checked on every use.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path

from pigeonhole.auth.scopes import Principal
from pigeonhole.db.base import utcnow


class TokenCache:
    def __init__(self, ttl_s: float, max_entries: int = 10_000, *, epoch_file: Path | None = None):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.epoch_file = epoch_file
        self._entries: OrderedDict[str, tuple[float, Principal, datetime | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._epoch = self._read_epoch()

    def _read_epoch(self) -> int:
        if self.epoch_file is None:
            return 0
        try:
            return self.epoch_file.stat().st_mtime_ns
        except OSError:
            return 0

    def get(self, digest: str) -> Principal | None:
        if self.ttl_s <= 0:
            return None
        epoch = self._read_epoch()
        with self._lock:
            if epoch != self._epoch:  # another process revoked something
                self._epoch = epoch
                self._entries.clear()
                return None
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
        """Forget every token, here and (through ``epoch_file``) in the other API processes of this machine."""
        with self._lock:
            self._entries.clear()
            if self.epoch_file is not None:
                self.epoch_file.parent.mkdir(parents=True, exist_ok=True)
                self.epoch_file.write_text(str(time.time_ns()))
                self._epoch = self._read_epoch()
