"""What the blob store and its callers agree on: the store's errors, the records of a blob, and the key layout.

Separate from how :mod:`pigeonhole.storage.blobs` reads and writes, because callers use them on their own:
backups and restores check archive members against the key layout, the consistency check catches the errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONTENT_PREFIX = "sha256"
TEMP_PREFIX = "tmp"
_RESERVED_PREFIXES = frozenset({CONTENT_PREFIX, TEMP_PREFIX})
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Derived keys are plain relative paths: no "..", no hidden names, no backslashes, so
# a key can never escape the root or collide with the store's own bookkeeping.
_KEY_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._=-]{0,199}$")
_MAX_KEY_LENGTH = 1024


class BlobError(Exception):
    """Base class of the blob store's errors."""


class BlobMissing(BlobError):
    """The blob or key does not exist in the store."""


class BlobCorrupt(BlobError):
    """The stored bytes do not match what the database recorded (size or hash)."""


class BlobTooLarge(BlobError):
    """A write was stopped because the stream went past the caller's size cap."""


class InvalidKey(BlobError, ValueError):
    """A sha256 or derived key is malformed (it could otherwise escape the store's root)."""


class StorageUnavailable(BlobError):
    """The store cannot be used right now: the reason is in the message (for /readyz)."""


@dataclass(frozen=True, slots=True)
class BlobRef:
    """What the database keeps about a blob: enough to find it and to verify it."""

    sha256: str
    size: int

    def __post_init__(self) -> None:
        check_sha(self.sha256)
        if self.size < 0:
            raise ValueError(f"blob size cannot be negative: {self.size}")


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A blob found by listing the store; ``modified_at`` (epoch seconds) drives sweep grace."""

    sha256: str
    size: int
    modified_at: float | None


@dataclass(frozen=True, slots=True)
class SweepResult:
    deleted: int
    freed_bytes: int
    kept_recent: int


def check_sha(sha256: str) -> str:
    if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
        raise InvalidKey(f"not a lowercase hex sha256: {sha256!r}")
    return sha256


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY_LENGTH:
        raise InvalidKey(f"invalid storage key: {key!r}")
    parts = key.split("/")
    if parts[0] in _RESERVED_PREFIXES:
        raise InvalidKey(f"storage key {key!r} uses the reserved namespace {parts[0]!r}")
    for part in parts:
        if not _KEY_SEGMENT_RE.match(part):
            raise InvalidKey(f"invalid storage key {key!r}: bad segment {part!r}")
    return key


def blob_key(sha256: str) -> str:
    """The key of a content blob, relative to the store's root."""
    check_sha(sha256)
    return f"{CONTENT_PREFIX}/{sha256[:2]}/{sha256[2:4]}/{sha256}"
