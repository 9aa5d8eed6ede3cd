"""Thumbnails for the web app: made at ingest, kept in the bounded node-local cache, rebuilt on a miss.

They are derived data: eviction only costs a rebuild from the original blob.
"""

from __future__ import annotations

from PIL import Image

from pigeonhole.storage.blobs import BlobStore
from pigeonhole.storage.cache import DiskCache
from pigeonhole.storage.images import THUMBNAIL_FORMAT, THUMBNAIL_MEDIA_TYPE, decode_for_model, make_thumbnail

THUMBNAIL_SIDE = 128
MEDIA_TYPE = THUMBNAIL_MEDIA_TYPE
_EXTENSION = "webp" if THUMBNAIL_FORMAT == "WEBP" else "jpg"


class Thumbnails:
    def __init__(self, cache: DiskCache, blobs: BlobStore, side: int = THUMBNAIL_SIDE):
        self.cache = cache
        self.blobs = blobs
        self.side = side

    def _key(self, sha256: str) -> str:
        return f"thumbs/{sha256[:2]}/{sha256}-{self.side}.{_EXTENSION}"

    def store(self, sha256: str, image: Image.Image) -> bytes:
        data = make_thumbnail(image, self.side)
        self.cache.put_bytes(self._key(sha256), data)
        return data

    def get(self, sha256: str, size_bytes: int) -> bytes:
        cached = self.cache.get_bytes(self._key(sha256))
        if cached is not None:
            return cached
        with self.blobs.open_blob(sha256, size_bytes) as original:
            decoded = decode_for_model(original, self.side)
        return self.store(sha256, decoded.image)
