"""Storage: content-addressed blobs, safe image decoding, safe zip reading, bounded disk caches.

Nothing here imports the web stack: settings arrive as plain arguments, so API servers,
the dispatcher and compute workers can all use the same code.

Modules:

- :mod:`pigeonhole.storage.blobs`: :class:`~pigeonhole.storage.blobs.BlobStore` over fsspec.
- :mod:`pigeonhole.storage.blob_types`: the blob store's errors, blob records and key layout.
- :mod:`pigeonhole.storage.images`: validation and decoding of untrusted images, thumbnails.
- :mod:`pigeonhole.storage.archives`: streaming iteration over uploaded zip archives.
- :mod:`pigeonhole.storage.cache`: a size-bounded on-disk cache directory with LRU eviction.
"""
