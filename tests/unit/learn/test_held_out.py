"""The test images' features a version keeps (``learn/held_out.py``): the next version takes each class whose test
images did not change from the file, computes the others, and its file points at the blocks it took."""

from __future__ import annotations

import numpy as np
import pytest

from pigeonhole.learn.array_file import ArrayFile
from pigeonhole.learn.held_out import MAGIC, HeldOutFeatures, features_for

DIM = 16


def _images(rng: np.random.Generator, classes: int, per_class: int) -> tuple[list[str], list[str], np.ndarray]:
    """Rows interleaved across classes (as a dataset lists them), each image's feature a function of its name."""
    shas = [f"{k:02d}{i:02d}".ljust(64, "f") for i in range(per_class) for k in range(classes)]
    labels = [f"c{k}" for i in range(per_class) for k in range(classes)]
    return shas, labels, rng.standard_normal((len(shas), DIM)).astype(np.float32)


class _Extractor:
    """Computes the rows it is asked for (from the true features) and remembers which."""

    def __init__(self, features: np.ndarray) -> None:
        self.features, self.asked = features, []

    def __call__(self, places: list[int]) -> np.ndarray:
        self.asked.append(list(places))
        return self.features[places]


def test_unchanged_classes_come_from_the_file_and_the_new_file_points_at_them() -> None:
    rng = np.random.default_rng(0)
    shas, labels, true = _images(rng, 5, 4)
    first = _Extractor(true)
    features, held = features_for(shas, labels, None, first)
    np.testing.assert_array_equal(features, true)  # in the rows' order, though kept by class
    assert len(first.asked) == 1 and sorted(first.asked[0]) == list(range(20))  # one call, every row
    store = {"v1": held.to_bytes()}
    kept = HeldOutFeatures.read("v1", store.__getitem__)

    # class c2 is removed, c1 gets another test image, c5 is new: only c1's and c5's rows are computed
    extra = rng.standard_normal((5, DIM)).astype(np.float32)
    keep = [i for i, label in enumerate(labels) if label != "c2"]
    shas2 = [shas[i] for i in keep] + ["c1-new".ljust(64, "0")] + [f"c5-{i}".ljust(64, "0") for i in range(4)]
    labels2 = [labels[i] for i in keep] + ["c1"] + ["c5"] * 4
    true2 = np.vstack([true[keep], extra])
    second = _Extractor(true2)
    features2, held2 = features_for(shas2, labels2, kept, second)
    np.testing.assert_array_equal(features2, true2)
    assert [labels2[i] for i in second.asked[0]] == ["c1"] * 5 + ["c5"] * 4
    store["v2"] = held2.to_bytes()
    arrays = ArrayFile(store["v2"], MAGIC).meta["arrays"]
    pointing = {name for name, spec in arrays.items() if spec.get("key") == "v1"}
    assert len(pointing) == 2 * 3  # shas and features of c0, c3 and c4
    assert not any(spec.get("key") for name, spec in arrays.items() if name not in pointing)

    # read back through the second file: the same features, and nothing is computed for an unchanged set
    third = _Extractor(true2)
    features3, _ = features_for(shas2, labels2, HeldOutFeatures.read("v2", store.__getitem__), third)
    np.testing.assert_array_equal(features3, true2)
    assert third.asked == []


def test_a_class_whose_images_changed_order_or_content_is_computed_again() -> None:
    rng = np.random.default_rng(1)
    shas, labels, true = _images(rng, 3, 3)
    _, held = features_for(shas, labels, None, _Extractor(true))
    kept = HeldOutFeatures.read("v1", {"v1": held.to_bytes()}.__getitem__)
    swapped = list(shas)
    swapped[0], swapped[3] = swapped[3], swapped[0]  # two images of c0 in the other order
    again = _Extractor(true[[3, 1, 2, 0, 4, 5, 6, 7, 8]])
    features, _ = features_for(swapped, labels, kept, again)
    assert [labels[i] for i in again.asked[0]] == ["c0"] * 3
    np.testing.assert_array_equal(features, true[[3, 1, 2, 0, 4, 5, 6, 7, 8]])


def test_a_renamed_class_keeps_its_block_and_mismatched_rows_are_refused() -> None:
    rng = np.random.default_rng(2)
    shas, labels, true = _images(rng, 2, 3)
    _, held = features_for(shas, labels, None, _Extractor(true))
    kept = HeldOutFeatures.read("v1", {"v1": held.to_bytes()}.__getitem__).renamed({"c0": "zero"})
    later = _Extractor(true)
    features, _ = features_for(shas, ["zero" if x == "c0" else x for x in labels], kept, later)
    assert later.asked == []
    np.testing.assert_array_equal(features, true)
    with pytest.raises(ValueError, match="differ in number"):
        features_for(shas, labels[:-1], kept, later)
