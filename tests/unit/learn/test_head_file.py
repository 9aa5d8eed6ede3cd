"""A grown version's head file keeps the unchanged classes' rows where they already are (``learn/head_file.py``)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from pigeonhole.learn import head_file
from pigeonhole.learn.array_file import ArrayFile
from pigeonhole.learn.head import RidgeHead

DIM = 64


def _rows(rng: np.random.Generator, classes: int, per_class: int, start: int = 0) -> tuple[np.ndarray, list[str]]:
    centres = np.abs(rng.standard_normal((classes, DIM))) * 2
    x = np.abs(centres[:, None, :] + rng.standard_normal((classes, per_class, DIM)))
    return x.reshape(-1, DIM).astype(np.float32), [f"c{k + start}" for k in range(classes) for _ in range(per_class)]


def _trained(rng: np.random.Generator) -> tuple[RidgeHead, np.ndarray, list[str]]:
    x, labels = _rows(rng, 30, 60)  # fewer rows a class than dimensions: held as rows
    head = RidgeHead(DIM)
    head.add(x, labels)
    head.solve(0.1)
    return head, x, labels


def _saved(base: RidgeHead) -> tuple[dict[str, bytes], head_file.Reader, RidgeHead]:
    """A store holding ``base`` as the first version's file, its reader, and the head read back from it."""
    store: dict[str, bytes] = {"v1/head": base.to_bytes()}
    return store, store.__getitem__, head_file.read("v1/head", store.__getitem__)


def test_a_grown_version_writes_only_its_new_rows_and_reads_back_the_same_head() -> None:
    rng = np.random.default_rng(0)
    base, _, _ = _trained(rng)
    store, read, loaded = _saved(base)
    assert all(loaded._stats[c].rows.dtype == np.float32 for c in loaded.classes)  # views of the file, not copies
    new, new_labels = _rows(rng, 1, 8, start=30)
    loaded.add(new, new_labels)
    loaded.remove_class("c3")
    loaded.solve(0.1)
    store["v2/head"] = loaded.to_bytes()
    # the new file holds one class of 8 rows instead of thirty of 60 (and the settings, sums, Gram and weights)
    assert len(store["v2/head"]) < len(store["v1/head"]) / 3

    again = RidgeHead.from_bytes(store["v2/head"], key="v2/head", read=read)
    assert again.classes == loaded.classes and again.counts == loaded.counts
    for name in again.classes:
        np.testing.assert_array_equal(again._stats[name].rows, loaded._stats[name].rows)
    np.testing.assert_array_equal(again.weights, loaded.weights)
    # a third version points at both earlier files, never through the second to the first
    again.remove_class("c30")
    store["v3/head"] = again.to_bytes()
    assert {spec.get("key") for name, spec in _arrays(store["v3/head"]).items() if name.startswith("rows_")} == {
        "v1/head"}
    third = RidgeHead.from_bytes(store["v3/head"], key="v3/head", read=read)
    third.solve(0.1)
    refit = RidgeHead(DIM)
    for name in third.classes:
        refit.add(np.asarray(base._stats[name].rows, dtype=np.float32), [name] * base.counts[name])
    refit.solve(0.1)
    np.testing.assert_allclose(third.weights, refit.weights, rtol=1e-9, atol=1e-12)


def test_changed_rows_are_written_again_and_read_only_views_are_never_edited() -> None:
    rng = np.random.default_rng(1)
    base, x, labels = _trained(rng)
    store, read, loaded = _saved(base)
    own = [i for i, label in enumerate(labels) if label == "c0"][:2]
    loaded.remove_images(x[own], ["c0", "c0"])  # two rows of c0 go: its rows are new, so written here
    assert loaded.counts["c0"] == 58
    loaded.solve(0.1)
    store["v2/head"] = loaded.to_bytes()
    arrays = _arrays(store["v2/head"])
    assert "key" not in arrays["rows_0"] and arrays["rows_1"]["key"] == "v1/head"  # c0, c1
    restored = RidgeHead.from_bytes(store["v2/head"], key="v2/head", read=read)
    np.testing.assert_array_equal(restored._stats["c0"].rows, loaded._stats["c0"].rows)
    np.testing.assert_array_equal(RidgeHead.from_bytes(store["v1/head"])._stats["c0"].rows,
                                  base._stats["c0"].rows)  # the first file is as it was


def test_a_file_pointing_elsewhere_needs_a_reader_and_old_savez_files_still_load() -> None:
    rng = np.random.default_rng(2)
    base, _, _ = _trained(rng)
    store, read, loaded = _saved(base)
    loaded.remove_class("c0")
    with pytest.raises(ValueError, match="reader"):
        RidgeHead.from_bytes(loaded.to_bytes())

    old = _savez(base)
    restored = RidgeHead.from_bytes(old, key="old/head", read=read)
    assert restored.classes == base.classes and restored.alpha == base.alpha
    np.testing.assert_array_equal(restored.weights, base.weights)
    restored.remove_class("c1")
    # rows from an old file have no place to point at: the next file holds them
    assert not any("key" in spec for spec in _arrays(restored.to_bytes()).values())


def _arrays(data: bytes) -> dict:
    """The file's arrays: where each is (``key`` when it is in another file)."""
    return ArrayFile(data, head_file.MAGIC).meta["arrays"]


def _savez(head: RidgeHead) -> bytes:
    """A head as versions before ``head_file`` saved it."""
    meta = {"format": 1, "input_dim": head.input_dim, "config": {"l2_normalize": True, "random_features": 0,
                                                                  "bandwidth": 0.5, "seed": 0},
            "dense_after": head.dense_after, "classes": head.classes, "counts": list(head.counts.values()),
            "alpha": head.alpha, "temperature": head.temperature, "threshold": head.threshold,
            "threshold_precision": None, "threshold_coverage": None, "detector": None}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), "weights": head.weights,
              "bias": head.bias}
    for i, name in enumerate(head.classes):
        arrays[f"sum_{i}"] = head._stats[name].sum
        arrays[f"rows_{i}"] = head._stats[name].rows
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
