"""The neighbour index: the nearest training images of a class, edited as a head is."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pigeonhole.learn.neighbours import NeighbourIndex


def test_nearest_images_of_the_asked_class_survive_saving_and_editing() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(30, 16))
    labels = ["a"] * 10 + ["b"] * 10 + ["c"] * 10
    shas = [f"s{i:02d}" for i in range(30)]
    index = NeighbourIndex.from_bytes(NeighbourIndex(shas, labels, feats).to_bytes())
    query = feats[[3, 15]] * 2.0  # the same directions: their own images come first
    near = index.nearest(query, ["a", "b"], 3)
    assert [n.sha256 for n in near[0]][0] == "s03" and [n.sha256 for n in near[1]][0] == "s15"
    assert all(n.label == "a" for n in near[0]) and near[0][0].similarity > 0.99
    assert [n.similarity for n in near[0]] == sorted((n.similarity for n in near[0]), reverse=True)
    grown = index.without(["a"]).renamed({"b": "bee"}).plus(["t0"], ["new"], feats[:1])
    assert len(grown) == 21 and grown.nearest(query[:1], ["a"], 2) == [[]]
    assert grown.nearest(feats[:1], ["new"], 5)[0][0].sha256 == "t0"
    assert all(n.label == "bee" for n in grown.nearest(query[1:], ["bee"], 2)[0])


def test_a_grown_index_points_at_the_unchanged_classes_and_old_files_still_load() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(40, 16))
    labels = ["a"] * 10 + ["b"] * 10 + ["c"] * 20
    shas = [f"{i:064x}" for i in range(40)]
    store: dict[str, bytes] = {"v1": NeighbourIndex(shas, labels, feats).to_bytes()}
    first = NeighbourIndex.read("v1", store.__getitem__)
    store["v2"] = first.without(["a"]).renamed({"b": "bee"}).plus(["f" * 64], ["new"], feats[:1]).to_bytes()
    assert len(store["v2"]) < len(store["v1"]) / 4  # one new image written; "bee" and "c" point into v1
    grown = NeighbourIndex.read("v2", store.__getitem__)
    store["v3"] = grown.without(["new"]).to_bytes()
    third = NeighbourIndex.read("v3", store.__getitem__)
    assert len(third) == 30 and set(third.shas) == set(shas[10:])
    assert third.nearest(feats[[12]], ["bee"], 1)[0][0].sha256 == shas[12]
    assert third.nearest(feats[[25]], ["c"], 1)[0][0].similarity > 0.99
    with pytest.raises(ValueError, match="reader"):
        NeighbourIndex.from_bytes(store["v3"])

    # an index saved by numpy.savez before (one array for every class) loads as it was
    buffer = io.BytesIO()
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    np.savez(buffer, shas=np.asarray(shas), labels=np.asarray(labels), features=unit.astype(np.float16))
    old = NeighbourIndex.from_bytes(buffer.getvalue())
    assert len(old) == 40 and old.nearest(feats[[3]], ["a"], 1)[0][0].sha256 == shas[3]
