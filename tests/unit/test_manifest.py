"""A version's manifest, one block per class: a grown version's points at the unchanged classes' blocks."""

from __future__ import annotations

import json

import pytest

from pigeonhole.learn.array_file import ArrayFile
from pigeonhole.models.manifest import MAGIC, Manifest

ROWS = [(f"{i:064x}", f"c{i % 3}", "val" if i % 5 == 0 else "train", 1000 + i) for i in range(30)]


def test_blocks_round_trip_and_a_grown_manifest_points_at_the_unchanged_ones() -> None:
    store = {"v1": Manifest.from_rows(ROWS).to_bytes()}
    first = Manifest.read("v1", store.__getitem__)
    # in the order given (the order the head's images were added in: growing refits in that order)
    assert first.rows() == ROWS and first.counts() == {"c0": 10, "c1": 10, "c2": 10}
    new = [("f" * 64, "new", "train", 5)]
    store["v2"] = first.only({"c1", "c2"}).renamed({"c1": "one"}).plus(new).to_bytes()
    arrays = ArrayFile(store["v2"], MAGIC).meta["arrays"]
    assert {spec.get("key") for spec in arrays.values()} == {"v1", None}  # one, c2 in v1; the new class here
    second = Manifest.read("v2", store.__getitem__)
    assert second.counts() == {"one": 10, "c2": 10, "new": 1}
    assert second.rows() == [(s, "one" if c == "c1" else c, p, n) for s, c, p, n in ROWS if c != "c0"] + new
    with pytest.raises(KeyError):  # the file it points into is needed
        Manifest.read("v2", {"v2": store["v2"]}.__getitem__)


def test_manifests_written_as_json_still_load() -> None:
    old = json.dumps([list(r) for r in ROWS]).encode()
    assert sorted(Manifest.read("old", {"old": old}.__getitem__).rows()) == sorted(ROWS)
