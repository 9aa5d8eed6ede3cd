"""Content-addressed blob store over fsspec: originals, thumbnails and model artifacts.

Why content addressing: the key is the sha256 of the bytes, so identical uploads are
stored once, a blob can never be silently replaced by different bytes, and any copy can
be verified against its own name.

Layout under the store's root (chosen by URL, as MLflow picks its stores by URI):

- ``sha256/ab/cd/abcdef…``: content blobs, sharded on the first two byte pairs so no
  directory grows past a few thousand entries even at tens of millions of blobs;
- ``tmp/<random>.part``: writes in progress (never listed as blobs, swept by
  :meth:`BlobStore.cleanup_temp` after a crash);
- any other top-level name (``thumbs/<sha>.webp``, ``models/<id>/<v>/model.onnx``):
  derived artifacts addressed by caller-chosen keys.

Atomicity: every write goes to a temporary key first and only then moves to its final
key, so a reader never sees a half-written blob. On local disks the move is
``os.replace`` (atomic within one filesystem; ``tmp/`` lives under the same root for that
reason) after an ``fsync`` of the data, then the directory is synced so the rename itself
survives a power cut. On other filesystems the move is ``fs.mv``: on object stores (S3,
GCS, Azure) that is a server-side copy followed by a delete, and an object only becomes
visible once its copy is complete, which gives the same guarantee; the memory filesystem
moves a reference.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import mmap
import os
import time
import uuid
from collections.abc import Container, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pigeonhole.storage.blob_types import (
    CONTENT_PREFIX,
    SHA256_RE,
    TEMP_PREFIX,
    BlobCorrupt,
    BlobMissing,
    BlobRef,
    BlobTooLarge,
    StorageUnavailable,
    StoredBlob,
    SweepResult,
    blob_key,
    check_key,
)

CHUNK_SIZE = 1024 * 1024


def _modified_at(info: dict) -> float | None:
    """Modification time from an fsspec info dict; each backend names it differently."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "created", "mtime_ns"):
        value = info.get(name)
        if value is None:
            continue
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.UTC)
            return value.timestamp()
        if isinstance(value, int | float):
            return value / 1e9 if name == "mtime_ns" else float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def _fsync_dir(path: str) -> None:
    """Persist a directory entry (a rename or a new file) across a power cut; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class BlobStore:
    """A blob store at an fsspec URL: a plain path or ``file:///…`` (local), ``s3://…``, ``memory://…``.

    ``storage_options`` go to the fsspec filesystem (credentials, endpoint); they stay out of
    the URL so that logging the URL never leaks a secret.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        storage_options: dict[str, object] | None = None,
        fsync: bool = True,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.url = os.fspath(url)
        fs, root = url_to_fs(self.url, **(storage_options or {}))
        self.fs: AbstractFileSystem = fs
        self.root: str = root.rstrip("/") if root != "/" else root
        self.is_local = isinstance(fs, LocalFileSystem)
        self._fsync = fsync
        self._chunk_size = chunk_size
        if self.is_local:
            os.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"BlobStore({self.url!r})"

    # ---- paths -------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        if not self.root:
            return key
        return f"{self.root.rstrip('/')}/{key}"

    def local_path(self, sha256: str) -> Path | None:
        """Where a content blob lives on local disk, so decoders can open it without a copy.

        None for non-local stores: callers then fall back to :meth:`open_blob`. The path is
        returned whether or not the blob exists; opening a missing one raises as usual.
        """
        if not self.is_local:
            return None
        return Path(self._path(blob_key(sha256)))

    # ---- content blobs -----------------------------------------------------------------

    def put_file(self, path: str | os.PathLike[str], *, max_size: int | None = None) -> BlobRef:
        with open(path, "rb") as f:
            return self.put_stream(f, max_size=max_size)

    def put_stream(self, fileobj: IO[bytes], *, max_size: int | None = None) -> BlobRef:
        """Store a stream by its sha256, hashing while copying (memory stays one chunk).

        Writing content that is already stored changes nothing but its modification time,
        which tells :meth:`sweep` that the blob is in use again. A stored copy of the wrong
        size (damaged disk) is replaced by the fresh one. ``max_size`` stops the copy (and
        leaves nothing behind) once the stream goes past it: :class:`BlobTooLarge`.
        """
        tmp_key = f"{TEMP_PREFIX}/{uuid.uuid4().hex}.part"
        if self.is_local:
            return self._put_stream_local(fileobj, tmp_key, max_size)
        return self._put_stream_remote(fileobj, tmp_key, max_size)

    def _copy(self, src: IO[bytes], dst: IO[bytes]) -> int:
        """Copy a derived artifact (named by its key: no hash wanted; 0.2 s saved per 60 MB); returns its size."""
        size = 0
        while chunk := src.read(self._chunk_size):
            size += len(chunk)
            dst.write(chunk)
        return size

    def _copy_hashing(self, src: IO[bytes], dst: IO[bytes], max_size: int | None) -> BlobRef:
        digest = hashlib.sha256()
        size = 0
        while True:
            chunk = src.read(self._chunk_size)
            if not chunk:
                break
            size += len(chunk)
            if max_size is not None and size > max_size:
                raise BlobTooLarge(f"the content is larger than the limit of {max_size} bytes")
            digest.update(chunk)
            dst.write(chunk)
        return BlobRef(digest.hexdigest(), size)

    def _put_stream_local(self, fileobj: IO[bytes], tmp_key: str, max_size: int | None) -> BlobRef:
        tmp_path = self._path(tmp_key)
        os.makedirs(os.path.dirname(tmp_path), exist_ok=True)
        try:
            with open(tmp_path, "xb") as out:
                ref = self._copy_hashing(fileobj, out, max_size)
                out.flush()
                if self._fsync:
                    os.fsync(out.fileno())
            final = self._path(blob_key(ref.sha256))
            with contextlib.suppress(FileNotFoundError):
                if os.path.getsize(final) == ref.size:
                    os.unlink(tmp_path)
                    os.utime(final)  # "recently written": keeps a concurrent sweep off it
                    return ref
            self._replace_local(tmp_path, final)
            return ref
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)
            raise

    def _replace_local(self, tmp_path: str, final: str) -> None:
        directory = os.path.dirname(final)
        created = not os.path.isdir(directory)
        os.makedirs(directory, exist_ok=True)
        os.replace(tmp_path, final)
        if self._fsync:
            _fsync_dir(directory)
            if created:  # new shard directories must survive too
                _fsync_dir(os.path.dirname(directory))
                _fsync_dir(os.path.dirname(os.path.dirname(directory)))

    def _put_stream_remote(self, fileobj: IO[bytes], tmp_key: str, max_size: int | None) -> BlobRef:
        tmp_path = self._path(tmp_key)
        try:
            with self.fs.open(tmp_path, "wb") as out:
                ref = self._copy_hashing(fileobj, out, max_size)
            # Moved even when the blob exists: identical bytes, and the fresh modification
            # time is what keeps a concurrent sweep from deleting a blob just deduplicated.
            self.fs.mv(tmp_path, self._path(blob_key(ref.sha256)))
            return ref
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(tmp_path)
            raise

    def exists(self, sha256: str) -> bool:
        return bool(self.fs.exists(self._path(blob_key(sha256))))

    def size(self, sha256: str) -> int:
        try:
            return int(self.fs.size(self._path(blob_key(sha256))))
        except FileNotFoundError:
            raise BlobMissing(f"blob {sha256} is missing from {self.url}") from None

    def open_blob(self, sha256: str, expected_size: int) -> BinaryIO:
        """Open a blob for reading after checking its size against the recorded one.

        The size check is cheap (one stat) and catches the common damage: a truncated copy
        from a full disk or an interrupted restore. :meth:`verify` re-hashes for a full check.
        """
        path = self._path(blob_key(sha256))
        actual = self.size(sha256)
        if actual != expected_size:
            raise BlobCorrupt(f"blob {sha256} in {self.url} has {actual} bytes but {expected_size} were stored")
        try:
            if self.is_local:
                return open(path, "rb")
            return self.fs.open(path, "rb")
        except FileNotFoundError:
            raise BlobMissing(f"blob {sha256} is missing from {self.url}") from None

    def read_blob(self, sha256: str, expected_size: int) -> bytes:
        with self.open_blob(sha256, expected_size) as f:
            return f.read()

    def verify(self, sha256: str, expected_size: int) -> None:
        """Re-hash a blob; raises :class:`BlobCorrupt` or :class:`BlobMissing` (for scrubs)."""
        digest = hashlib.sha256()
        with self.open_blob(sha256, expected_size) as f:
            while chunk := f.read(self._chunk_size):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            raise BlobCorrupt(f"blob {sha256} in {self.url} does not match its hash")

    def delete(self, sha256: str) -> bool:
        """Remove a blob; True if it existed. Only the sweep should call this for originals."""
        try:
            self.fs.rm(self._path(blob_key(sha256)))
        except FileNotFoundError:
            return False
        return True

    def iter_blobs(self) -> Iterator[StoredBlob]:
        """Every content blob, one shard at a time so memory stays bounded on huge stores.

        Anything that does not sit where its own hash says (stray files) is skipped.
        """
        base = self._path(CONTENT_PREFIX)
        if self.is_local:
            yield from self._iter_local(base)
            return
        try:
            shards = sorted(self.fs.ls(base, detail=False))
        except FileNotFoundError:
            return
        for shard in shards:
            for path, info in sorted(self.fs.find(shard, detail=True).items()):
                blob = self._stored_blob(path, info.get("size"), _modified_at(info))
                if blob is not None:
                    yield blob

    def _iter_local(self, base: str) -> Iterator[StoredBlob]:
        if not os.path.isdir(base):
            return
        for top in sorted(os.scandir(base), key=lambda e: e.name):
            if not top.is_dir(follow_symlinks=False):
                continue
            for mid in sorted(os.scandir(top.path), key=lambda e: e.name):
                if not mid.is_dir(follow_symlinks=False):
                    continue
                for entry in sorted(os.scandir(mid.path), key=lambda e: e.name):
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    blob = self._stored_blob(entry.path, st.st_size, st.st_mtime)
                    if blob is not None:
                        yield blob

    def _stored_blob(self, path: str, size: object, modified_at: float | None) -> StoredBlob | None:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if not SHA256_RE.match(name) or not path.endswith(blob_key(name)) or not isinstance(size, int):
            return None
        return StoredBlob(name, size, modified_at)

    def sweep(
        self, referenced: Container[str], *, min_age_s: float = 24 * 3600, now: float | None = None
    ) -> SweepResult:
        """Delete blobs that are not referenced and were not written for ``min_age_s``.

        ``referenced`` must be read from the database *after* this call starts listing (or be
        a live view): a blob uploaded during the sweep is young, so the grace period protects
        it until its row is committed. Dedup hits refresh the blob's modification time for the
        same reason. The age is re-read just before each delete to narrow the remaining window
        (an upload deduplicating against a blob in the very instant it is deleted) to a few
        microseconds; the grace period should comfortably exceed the longest upload request.
        """
        deleted = freed = kept = 0
        for blob in self.iter_blobs():
            if blob.sha256 in referenced:
                continue
            current = time.time() if now is None else now
            if blob.modified_at is None or current - blob.modified_at < min_age_s:
                kept += 1
                continue
            fresh = self._fresh_modified_at(blob.sha256)
            if fresh is None:  # deleted meanwhile
                continue
            if current - fresh < min_age_s:
                kept += 1
                continue
            if self.delete(blob.sha256):
                deleted += 1
                freed += blob.size
        return SweepResult(deleted, freed, kept)

    def _fresh_modified_at(self, sha256: str) -> float | None:
        path = self._path(blob_key(sha256))
        try:
            if self.is_local:
                return os.stat(path).st_mtime
            return _modified_at(self.fs.info(path))
        except FileNotFoundError:
            return None

    def cleanup_temp(self, *, older_than_s: float = 3600) -> int:
        """Remove temporary files left by writers that crashed; returns how many."""
        base = self._path(TEMP_PREFIX)
        removed = 0
        cutoff = time.time() - older_than_s
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return 0
        for path, info in found.items():
            modified = _modified_at(info)
            if modified is not None and modified > cutoff:
                continue
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path)
                removed += 1
        return removed

    # ---- derived artifacts (caller-chosen keys) ----------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        self.put_object(key, io.BytesIO(data))

    def put_object(self, key: str, fileobj: IO[bytes]) -> int:
        """Write a derived artifact atomically under ``key``, replacing any previous one.

        Returns the number of bytes written. Immutability of versioned artifacts (model
        versions) is the caller's rule: it chooses keys that are never reused.
        """
        check_key(key)
        tmp_key = f"{TEMP_PREFIX}/{uuid.uuid4().hex}.part"
        tmp_path, final = self._path(tmp_key), self._path(key)
        if self.is_local:
            os.makedirs(os.path.dirname(tmp_path), exist_ok=True)
            try:
                with open(tmp_path, "xb") as out:
                    size = self._copy(fileobj, out)
                    out.flush()
                    if self._fsync:
                        os.fsync(out.fileno())
                self._replace_local(tmp_path, final)
                return size
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_path)
                raise
        try:
            with self.fs.open(tmp_path, "wb") as out:
                size = self._copy(fileobj, out)
            self.fs.mv(tmp_path, final)
            return size
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(tmp_path)
            raise

    def open(self, key: str) -> BinaryIO:
        path = self._path(check_key(key))
        try:
            if self.is_local:
                return open(path, "rb")  # noqa: SIM115 - the caller closes it
            return self.fs.open(path, "rb")
        except FileNotFoundError:
            raise BlobMissing(f"{key} is missing from {self.url}") from None

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def map_bytes(self, key: str) -> bytes | mmap.mmap:
        """The artifact's bytes, memory-mapped read-only where the store is local (a 460 MB head file whose rows
        are mostly never touched then costs nothing to open); read whole otherwise."""
        if not self.is_local:
            return self.read_bytes(key)
        with self.open(key) as f:
            if os.fstat(f.fileno()).st_size == 0:
                return b""
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def key_exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(check_key(key))))

    def delete_key(self, key: str) -> bool:
        try:
            self.fs.rm(self._path(check_key(key)))
        except FileNotFoundError:
            return False
        return True

    # ---- readiness ---------------------------------------------------------------------

    def check(self) -> None:
        """Readiness probe: write, read back and delete a small object, or raise why not.

        Goes through the same temporary namespace as real writes, so a full disk, a
        read-only mount or revoked credentials all show up here before an upload fails.
        """
        probe = self._path(f"{TEMP_PREFIX}/probe-{uuid.uuid4().hex}")
        payload = os.urandom(16)
        step = "write to"
        try:
            if self.is_local:
                os.makedirs(os.path.dirname(probe), exist_ok=True)
            with self.fs.open(probe, "wb") as f:
                f.write(payload)
            step = "read back from"
            with self.fs.open(probe, "rb") as f:
                back = f.read()
            if back != payload:
                raise StorageUnavailable(f"the blob store at {self.url} returned different bytes")
            step = "delete from"
            self.fs.rm(probe)
        except StorageUnavailable:
            raise
        except Exception as exc:  # every backend fails differently; the reason is what matters
            with contextlib.suppress(Exception):
                self.fs.rm(probe)
            raise StorageUnavailable(
                f"cannot {step} the blob store at {self.url}: {type(exc).__name__}: {exc}"
            ) from exc
