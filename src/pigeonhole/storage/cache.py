"""A size-bounded on-disk cache directory: atomic writes, least-recently-used eviction.

Shared by everything that caches derived data on a node (decoded pixels, embeddings,
thumbnails): each user picks a key namespace (``features/<extractor>/<sha>.npy``) and the
directory as a whole stays under one byte budget.

Why these choices:

- Recency is the file's access time, but set explicitly on every hit (``os.utime``):
  filesystems mounted ``noatime``/``relatime`` would otherwise never update it.
- Writes go to a hidden temporary file in the destination directory and are renamed into
  place, so a reader (another worker process on the same node) sees a whole entry or none.
- Several processes may share the directory: each keeps an estimate of the size, rescans
  when it thinks the budget is exceeded (or when the estimate is old) and tolerates files
  vanishing under it. Eviction goes down to a low-water mark so that it does not rescan on
  every write once the cache is full.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

_SEGMENT_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._=-]{0,199}$")
_TMP_PREFIX: Final = ".tmp-"
_STALE_TMP_S: Final = 3600.0


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    bytes: int


class DiskCache:
    """Files under ``root`` whose total size is kept at or under ``max_bytes``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        max_bytes: int,
        *,
        low_water: float = 0.9,
        rescan_interval_s: float = 60.0,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("the cache budget must be positive")
        if not 0 < low_water <= 1:
            raise ValueError("low_water must be in (0, 1]")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._low_water_bytes = int(max_bytes * low_water)
        self._rescan_interval_s = rescan_interval_s
        self._lock = threading.Lock()
        self._estimate: int | None = None
        self._estimated_at = 0.0
        self._last_stamp = 0

    def __repr__(self) -> str:
        return f"DiskCache({str(self.root)!r}, max_bytes={self.max_bytes})"

    def path_for(self, key: str) -> Path:
        """Where ``key`` lives; keys are relative paths of plain segments (no .., no hidden)."""
        if not isinstance(key, str) or not key or len(key) > 1024:
            raise ValueError(f"invalid cache key: {key!r}")
        parts = key.split("/")
        if not all(_SEGMENT_RE.match(p) for p in parts):
            raise ValueError(f"invalid cache key: {key!r}")
        return self.root.joinpath(*parts)

    def _stamp(self) -> int:
        """A strictly increasing time in ns, so two touches never tie in LRU order."""
        with self._lock:
            self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
            return self._last_stamp

    def _touch(self, path: Path) -> bool:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a namespace directory is not an entry
            return False
        os.utime(path, ns=(self._stamp(), st.st_mtime_ns))
        return True

    # ---- reading -------------------------------------------------------------------------

    def get(self, key: str) -> Path | None:
        """The entry's path (marked as just used), or None when it is not cached."""
        path = self.path_for(key)
        try:
            return path if self._touch(path) else None
        except FileNotFoundError:
            return None

    def get_bytes(self, key: str) -> bytes | None:
        path = self.get(key)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:  # evicted by another process in between
            return None

    def __contains__(self, key: str) -> bool:
        return self.path_for(key).is_file()

    # ---- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        """Write an entry through a file object; it appears atomically when the block ends.

        If the block raises, nothing is stored. An entry larger than the whole budget is
        not kept (caching it would evict everything else for one item).
        """
        final = self.path_for(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with open(tmp, "xb") as f:
                yield f
            size = tmp.stat().st_size
            previous = _size_or_zero(final)
            if size > self.max_bytes:
                tmp.unlink()
                with contextlib.suppress(FileNotFoundError):
                    final.unlink()  # a stale older value must not outlive the refused write
                self._account(-previous)
                return
            os.replace(tmp, final)
            os.utime(final, ns=(self._stamp(), final.stat().st_mtime_ns))
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._account(size - previous)

    def put_bytes(self, key: str, data: bytes) -> Path | None:
        """Store ``data`` under ``key``; returns its path, or None if it exceeds the budget."""
        with self.writer(key) as f:
            f.write(data)
        return self.get(key)

    def put_file(self, key: str, source: str | os.PathLike[str]) -> Path | None:
        with self.writer(key) as f, open(source, "rb") as src:
            shutil.copyfileobj(src, f, 1024 * 1024)
        return self.get(key)

    def delete(self, key: str) -> bool:
        path = self.path_for(key)
        size = _size_or_zero(path)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._account(-size)
        return True

    def clear(self) -> None:
        for path, _, _ in list(self._scan()):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with self._lock:
            self._estimate = 0
            self._estimated_at = time.monotonic()

    # ---- budget --------------------------------------------------------------------------

    def _account(self, delta: int) -> None:
        with self._lock:
            stale = self._estimate is None or time.monotonic() - self._estimated_at > self._rescan_interval_s
            if not stale:
                assert self._estimate is not None
                self._estimate += delta
                if self._estimate <= self.max_bytes:
                    return
        self.evict()

    def _scan(self) -> Iterator[tuple[Path, int, int]]:
        """(path, size, access ns) of every entry; removes temporary files left by crashes."""
        now = time.time()
        for dirpath, _, filenames in os.walk(self.root):
            for filename in filenames:
                path = Path(dirpath) / filename
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if filename.startswith(_TMP_PREFIX):
                    if now - st.st_mtime > _STALE_TMP_S:
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()
                    continue  # a write in progress: not an entry, not evictable
                yield path, st.st_size, st.st_atime_ns

    def stats(self) -> CacheStats:
        entries = total = 0
        for _, size, _ in self._scan():
            entries += 1
            total += size
        return CacheStats(entries, total)

    def evict(self, target_bytes: int | None = None) -> int:
        """Delete least recently used entries until the cache holds at most ``target_bytes``
        (default: the low-water mark when over budget); returns the bytes freed."""
        with self._lock:
            found = sorted(self._scan(), key=lambda e: e[2])
            total = sum(size for _, size, _ in found)
            if target_bytes is None:
                target_bytes = self._low_water_bytes if total > self.max_bytes else total
            freed = 0
            for path, size, _ in found:
                if total - freed <= target_bytes:
                    break
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    freed += size
            self._estimate = total - freed
            self._estimated_at = time.monotonic()
            return freed


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
