"""The neighbour index: the nearest training images of a class, edited as a head is."""

from __future__ import annotations

import numpy as np

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
