"""Feature extraction and the bounded LRU feature cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pigeonhole.learn.features import FeatureCache, FeatureKey, ImageItem, compute_features


def _counting(items: list[ImageItem]) -> tuple[list[ImageItem], list[int]]:
    loads = [0]

    def wrap(item: ImageItem) -> ImageItem:
        def load() -> bytes:
            loads[0] += 1
            return item.load()

        return ImageItem(item.sha256, load)

    return [wrap(i) for i in items], loads


def test_cache_hit_is_identical_and_runs_nothing(mobilenet_onnx, flowers, tmp_path: Path) -> None:
    items, loads = _counting([ImageItem.from_bytes(b) for b, _ in flowers.train[:12]])
    cache = FeatureCache(tmp_path / "cache", max_bytes=10 << 20)
    before = mobilenet_onnx.images_run
    first = compute_features(items, mobilenet_onnx, cache, batch_size=5)
    assert mobilenet_onnx.images_run - before == 12 and loads[0] == 12
    assert first.shape == (12, 1280) and first.dtype == np.float32

    again = compute_features(items[::-1], mobilenet_onnx, cache)
    assert mobilenet_onnx.images_run - before == 12 and loads[0] == 12  # no image read, no network run
    np.testing.assert_array_equal(again, first[::-1])

    # a new process sees the same cache; adding images computes only the new ones
    cache.close()
    reopened = FeatureCache(tmp_path / "cache", max_bytes=10 << 20)
    more, _ = _counting([ImageItem.from_bytes(b) for b, _ in flowers.train[12:15]])
    mixed = compute_features(items[:3] + more, mobilenet_onnx, reopened)
    assert mobilenet_onnx.images_run - before == 15
    np.testing.assert_array_equal(mixed[:3], first[:3])


def test_duplicates_computed_once(mobilenet_onnx, flowers) -> None:
    item = ImageItem.from_bytes(flowers.train[0][0])
    before = mobilenet_onnx.images_run
    feats = compute_features([item, item, item], mobilenet_onnx)
    assert mobilenet_onnx.images_run - before == 1
    np.testing.assert_array_equal(feats[0], feats[2])


def test_key_separates_extractor_size_and_policy(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, max_bytes=1 << 20)
    keys = [
        FeatureKey("a" * 64, "m:1", 224, "center_crop"),
        FeatureKey("a" * 64, "m:1", 160, "center_crop"),
        FeatureKey("a" * 64, "m:1", 224, "resize"),
        FeatureKey("a" * 64, "m:2", 224, "center_crop"),
    ]
    cache.put_many((k, np.full(4, i, dtype=np.float32)) for i, k in enumerate(keys))
    got = cache.get_many(keys)
    assert [int(got[k][0]) for k in keys] == [0, 1, 2, 3]


def test_eviction_respects_byte_bound_and_lru(tmp_path: Path) -> None:
    vec_bytes = 256 * 4
    cache = FeatureCache(tmp_path, max_bytes=10 * vec_bytes)
    keys = [FeatureKey(f"{i:064x}", "x", 8, "resize") for i in range(30)]
    for i, key in enumerate(keys[:10]):
        cache.put_many([(key, np.full(256, i, dtype=np.float32))])
    assert cache.total_bytes == 10 * vec_bytes and len(cache) == 10
    cache.get_many(keys[:3])  # touch the three oldest: they become most recent
    cache.put_many((k, np.zeros(256, dtype=np.float32)) for k in keys[10:15])
    assert cache.total_bytes <= cache.max_bytes and len(cache) == 10
    present = cache.get_many(keys)
    assert set(keys[:3]) <= set(present)  # recently used survived
    assert not set(keys[3:8]) & set(present)  # least recently used went first
    cache.put_many((k, np.zeros(256, dtype=np.float32)) for k in keys[15:30])
    assert cache.total_bytes <= cache.max_bytes
    # replacing a key does not double-count its bytes
    cache.put_many([(keys[29], np.ones(256, dtype=np.float32))])
    assert cache.total_bytes == 10 * vec_bytes


def test_rejects_nonsense_bound(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FeatureCache(tmp_path, max_bytes=0)
