"""Feature extraction with ONNX Runtime, behind a bounded on-disk cache.

Cache design. A feature vector is small (0.5-5 KB: 128-1280 float32), and a search
asks for thousands of them at once, mostly hits. We store each vector as a BLOB row in
one SQLite database (WAL mode) rather than one ``.npy`` file per key because:

- a batch lookup is one indexed ``SELECT ... IN (...)`` instead of thousands of
  ``open()`` calls; SQLite reads small blobs faster than the filesystem does;
- writes and LRU bookkeeping are transactional, so concurrent workers on one node share
  the cache safely and a crash leaves no orphan or half-written files;
- the byte bound is a running sum kept in the same transaction as the rows, so
  eviction (least-recently-used first, by ``last_used``) never needs a directory scan.

The bound counts payload bytes (the vectors); SQLite's page overhead comes on top and
freed pages are reused, so the file stays near the bound rather than growing.

Keys are (image sha256, extractor key, input size, crop policy). The extractor key
must change whenever the weights do (see ``backbones.extractor_key``), so a cache hit
is always the exact vector the extractor would compute.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pigeonhole.learn.backbones import ExtractorSpec, PixelExtractor, build_extractor, extractor_key
from pigeonhole.learn.export import INPUT_NAME, export_onnx, open_session
from pigeonhole.learn.preprocess import InputSpec, image_to_pixels
from pigeonhole.learn.weights import WeightsCatalog

_SQL_CHUNK = 500  # stays under SQLite's host-parameter limit


@dataclass(frozen=True)
class FeatureKey:
    image_sha256: str
    extractor: str
    input_size: int
    crop: str

    def encode(self) -> str:
        return f"{self.extractor}|{self.input_size}|{self.crop}|{self.image_sha256}"


class FeatureCache:
    """Bounded LRU cache of feature vectors in ``<root>/features.sqlite``."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.root / "features.sqlite", timeout=30, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS features (
                key TEXT PRIMARY KEY, dtype TEXT NOT NULL, dim INTEGER NOT NULL,
                nbytes INTEGER NOT NULL, last_used INTEGER NOT NULL, data BLOB NOT NULL);
            CREATE INDEX IF NOT EXISTS features_lru ON features(last_used);
            CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            INSERT OR IGNORE INTO meta VALUES ('bytes', 0);
            """
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE name='bytes'").fetchone()[0])

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM features").fetchone()[0])

    def get_many(self, keys: Sequence[FeatureKey]) -> dict[FeatureKey, np.ndarray]:
        """Vectors for the keys present; refreshes their recency in the same transaction."""
        encoded = {k.encode(): k for k in keys}
        found: dict[FeatureKey, np.ndarray] = {}
        now = time.time_ns()
        names = list(encoded)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for i in range(0, len(names), _SQL_CHUNK):
                    chunk = names[i : i + _SQL_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows = self._db.execute(
                        f"SELECT key, dtype, dim, data FROM features WHERE key IN ({marks})", chunk
                    ).fetchall()
                    for key, dtype, dim, data in rows:
                        found[encoded[key]] = np.frombuffer(data, dtype=np.dtype(dtype), count=dim).copy()
                    self._db.execute(f"UPDATE features SET last_used=? WHERE key IN ({marks})", [now, *chunk])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return found

    def put_many(self, items: Iterable[tuple[FeatureKey, np.ndarray]]) -> None:
        """Store vectors, then evict least-recently-used rows until under the bound.

        A vector larger than the whole bound is not stored (it would evict everything
        and then itself).
        """
        now = time.time_ns()
        rows = []
        for key, vec in items:
            arr = np.ascontiguousarray(vec).reshape(-1)
            if arr.nbytes <= self.max_bytes:
                rows.append((key.encode(), arr.dtype.str, arr.size, arr.nbytes, now, arr.tobytes()))
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                delta = 0
                for row in rows:
                    old = self._db.execute("SELECT nbytes FROM features WHERE key=?", (row[0],)).fetchone()
                    delta += row[3] - (old[0] if old else 0)
                    self._db.execute("INSERT OR REPLACE INTO features VALUES (?,?,?,?,?,?)", row)
                self._db.execute("UPDATE meta SET value=value+? WHERE name='bytes'", (delta,))
                self._evict_locked()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _evict_locked(self) -> None:
        total = int(self._db.execute("SELECT value FROM meta WHERE name='bytes'").fetchone()[0])
        if total <= self.max_bytes:
            return
        freed = 0
        victims = []
        for key, nbytes in self._db.execute("SELECT key, nbytes FROM features ORDER BY last_used, key"):
            if total - freed <= self.max_bytes:
                break
            victims.append((key,))
            freed += nbytes
        self._db.executemany("DELETE FROM features WHERE key=?", victims)
        self._db.execute("UPDATE meta SET value=value-? WHERE name='bytes'", (freed,))


@dataclass(frozen=True)
class ImageItem:
    """An image known by content hash; ``load`` is only called on a cache miss.

    Lazy loading is the point: a fully cached dataset is never read from storage.
    """

    sha256: str
    load: Callable[[], bytes]

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageItem:
        import hashlib

        return cls(hashlib.sha256(data).hexdigest(), lambda: data)


class OnnxExtractor:
    """An exported extractor session plus the facts needed to feed and key it."""

    def __init__(self, session: ort.InferenceSession, input_spec: InputSpec, key: str) -> None:
        self.session = session
        self.input_spec = input_spec
        self.key = key
        self.images_run = 0  # images actually pushed through the network (for tests, metrics)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.images_run += len(pixels)
        return self.session.run(None, {INPUT_NAME: pixels})[0]

    def feature_key(self, image_sha256: str) -> FeatureKey:
        return FeatureKey(image_sha256, self.key, self.input_spec.height, self.input_spec.crop)


def node_feature_cache(learn_dir: Path, max_bytes: int) -> FeatureCache:
    """The node's feature cache, ``<learn_dir>/features``. A training's search and the later jobs of its versions
    (growing, suspected labels, the labelling queue) share it: the features a training computed under a version's
    extractor key (``grow.remember_features``) serve that version's first class change."""
    return FeatureCache(Path(learn_dir) / "features", max_bytes)


def pretrained_onnx_extractor(
    spec: ExtractorSpec, catalog: WeightsCatalog, *, intra_op_threads: int | None = None
) -> OnnxExtractor:
    """Build, export and open a pretrained extractor (about a second for MobileNetV2).

    Exporting on the fly rather than caching ONNX files keeps one source of truth (the
    sha256-checked weights); it costs far less than extracting a dataset.
    """
    module = PixelExtractor(spec, build_extractor(spec, catalog))
    session = open_session(export_onnx(module, spec.input_spec()), intra_op_threads=intra_op_threads)
    return OnnxExtractor(session, spec.input_spec(), extractor_key(spec, catalog))


def compute_features(
    items: Sequence[ImageItem],
    extractor: OnnxExtractor,
    cache: FeatureCache | None = None,
    *,
    batch_size: int = 32,
) -> np.ndarray:
    """(N, D) float32 features in the order of ``items``, computing only cache misses.

    Duplicate images (same sha256) are computed once.
    """
    spec = extractor.input_spec
    keys = [extractor.feature_key(item.sha256) for item in items]
    known = cache.get_many(keys) if cache is not None else {}
    missing: dict[FeatureKey, ImageItem] = {}
    for key, item in zip(keys, items, strict=True):
        if key not in known and key not in missing:
            missing[key] = item
    todo = list(missing.items())
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        pixels = np.stack(
            [image_to_pixels(item.load(), spec.height, color=spec.color, policy=spec.crop) for _, item in chunk]
        )
        feats = np.asarray(extractor(pixels), dtype=np.float32)
        fresh = {key: feats[i] for i, (key, _) in enumerate(chunk)}
        known.update(fresh)
        if cache is not None:
            cache.put_many(fresh.items())
    if not keys:
        dim = extractor.session.get_outputs()[0].shape[-1]
        return np.zeros((0, dim if isinstance(dim, int) else 0), dtype=np.float32)
    return np.stack([known[key] for key in keys]).astype(np.float32, copy=False)
