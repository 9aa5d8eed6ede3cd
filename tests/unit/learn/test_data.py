"""Training-set description, validation carving and the cached pixel store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pigeonhole.learn.data import MappingSource, PixelStore, TrainingImage, TrainingSet, decode_pixels, sha256_bytes
from pigeonhole.learn.features import FeatureCache
from pigeonhole.learn.preprocess import image_to_pixels


def test_training_set_checks_and_validation_carving() -> None:
    images = [TrainingImage(f"{c}{i:03d}", c, "train") for c in "ab" for i in range(20)]
    images.append(TrainingImage("solo", "c", "train"))
    ts = TrainingSet(tuple(images))
    assert ts.classes == ("a", "b", "c")
    carved = ts.with_validation(0.25, seed=1)
    val = carved.split("val")
    assert sum(i.label == "a" for i in val) == 5 and sum(i.label == "b" for i in val) == 5
    assert not any(i.label == "c" for i in val)  # a single image stays in train
    assert carved.with_validation(0.25, seed=1).split("val") == val  # deterministic, idempotent
    assert ts.with_validation(0.25, seed=2).split("val") != val
    assert carved.fingerprint() != ts.fingerprint()
    with pytest.raises(ValueError, match="not classes"):
        TrainingSet((TrainingImage("x", "z"),), classes=("a",))


def test_pixels_cached_across_instances(flowers, tmp_path: Path) -> None:
    blobs = {sha256_bytes(b): b for b, _ in flowers.train[:6]}
    keys = list(blobs)
    cache = FeatureCache(tmp_path, max_bytes=64 << 20)
    store = PixelStore(MappingSource(blobs), cache)
    first = store.get(keys + keys[:1], 96)
    assert first.shape == (7, 3, 96, 96) and first.dtype == np.uint8 and store.decoded == 6
    # same geometry as the serving preprocessing path
    np.testing.assert_array_equal(first[0], image_to_pixels(blobs[keys[0]], 96))
    again = PixelStore(MappingSource({}), cache)  # a new job on the node: nothing to decode
    np.testing.assert_array_equal(again.get(keys, 96), first[:6])
    assert again.decoded == 0
    grey = store.get(keys[:2], 32, color="L", policy="resize")
    assert grey.shape == (2, 1, 32, 32)
    square = decode_pixels(blobs[keys[0]], 64, "RGB", "square")
    assert square.shape == (3, 64, 64)


def test_pixels_held_in_memory_stay_within_their_budget(flowers) -> None:
    """Each geometry's pixels are kept for the next candidate at that size, but the least recently used
    geometries go once the memo is over its budget (without a disk cache they are decoded again)."""
    blobs = {sha256_bytes(b): b for b, _ in flowers.train[:4]}
    keys = list(blobs)
    one_96 = 4 * 3 * 96 * 96
    store = PixelStore(MappingSource(blobs), None, memo_bytes=2 * one_96)
    first = store.get(keys, 96)
    store.get(keys, 64)
    assert store.in_memory(keys, 96) == 4 and store.in_memory(keys, 64) == 4 and store.decoded == 8
    store.get(keys, 96)  # used again: now the most recent
    store.get(keys, 80)  # over the budget: 64 px, used least recently, goes
    assert store.in_memory(keys, 64) == 0 and store.in_memory(keys, 96) == 4 and store.in_memory(keys, 80) == 4
    np.testing.assert_array_equal(store.get(keys, 96), first)
    assert store.decoded == 12
    store.get(keys, 64)
    assert store.decoded == 16 and store.in_memory(keys, 80) == 0
    huge = PixelStore(MappingSource(blobs), None, memo_bytes=one_96 // 2)
    np.testing.assert_array_equal(huge.get(keys, 96), first)  # answered, then not kept
    assert huge.in_memory(keys, 96) == 0
