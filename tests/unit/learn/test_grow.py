"""Growing a version from its files: the rebuilt model equals the updated head on the same extractor."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from tests.model_factories import dark_bright_onnx, grey, grey_png

from pigeonhole.learn.artifacts import export_model
from pigeonhole.learn.backbones import PixelExtractor, build_architecture, get_spec
from pigeonhole.learn.features import ImageItem, compute_features
from pigeonhole.learn.grow import extractor_of, probabilities, rebuild_model
from pigeonhole.learn.head import RidgeHead
from pigeonhole.serving.model import load_model, split_answers

LEVELS = {"dark": 30, "mid": 128, "bright": 220}


def _items(label: str, seeds: range) -> list[ImageItem]:
    return [ImageItem.from_bytes(grey_png(LEVELS[label], s)) for s in seeds]


@pytest.fixture(scope="module")
def version() -> tuple[bytes, RidgeHead]:
    """A two-class version file (dark, bright) with the features output, and its head."""
    torch.manual_seed(0)
    spec = get_spec("smallcnn_l")
    extractor = PixelExtractor(spec, build_architecture(spec)).eval()
    with torch.no_grad():
        def feats(label: str, seeds: range) -> np.ndarray:
            return extractor(torch.from_numpy(np.stack([grey(LEVELS[label], s) for s in seeds])[:, None])).numpy()

        head = RidgeHead(feats("dark", range(1)).shape[1])
        train = np.concatenate([feats("dark", range(20)), feats("bright", range(20))])
        head.add(train, ["dark"] * 20 + ["bright"] * 20)
        head.fit(np.concatenate([feats("dark", range(50, 60)), feats("bright", range(50, 60))]),
                 ["dark"] * 10 + ["bright"] * 10)
    return export_model(extractor, spec.input_spec(), head), head


def test_adding_a_class_from_the_file_alone(version: tuple[bytes, RidgeHead]) -> None:
    model_bytes, head = version
    extractor = extractor_of(model_bytes)
    head = RidgeHead.from_bytes(head.to_bytes())
    new = _items("mid", range(20))
    head.add(compute_features(new, extractor), ["mid"] * 20)
    val = _items("dark", range(60, 66)) + _items("bright", range(60, 66)) + _items("mid", range(60, 66))
    val_labels = ["dark"] * 6 + ["bright"] * 6 + ["mid"] * 6
    head.fit(compute_features(val, extractor), val_labels)
    grown = rebuild_model(model_bytes, head)

    pixels = np.stack([np.asarray(grey(LEVELS[c], 900 + i))[None] for i, c in enumerate(["dark", "mid", "bright"])])
    from_file = probabilities(grown, pixels)
    from_head = head.predict_proba(extractor(pixels))
    np.testing.assert_allclose(from_file, from_head, atol=1e-4)
    assert head.classes == ["dark", "bright", "mid"]
    assert [head.classes[i] for i in from_file.argmax(axis=1)] == ["dark", "mid", "bright"]

    served = load_model(grown)
    assert served.classes == ["dark", "bright", "mid"]
    assert served.outputs == ["probabilities", "familiarity", "features"]
    _, familiar, _ = split_answers(served, served.run(pixels))
    np.testing.assert_allclose(familiar, head.familiarity(extractor(pixels)), atol=1e-3)  # the grown detector


def test_removing_a_class_and_growing_again(version: tuple[bytes, RidgeHead]) -> None:
    model_bytes, head = version
    head = RidgeHead.from_bytes(head.to_bytes())
    head.remove_class("bright")
    head.add(compute_features(_items("mid", range(10)), extractor_of(model_bytes)), ["mid"] * 10)
    head.solve()
    grown = rebuild_model(model_bytes, head)
    again = rebuild_model(grown, head)  # a grown file grows again the same way
    pixels = np.stack([np.asarray(grey(30, 5))[None]])
    np.testing.assert_allclose(probabilities(grown, pixels), probabilities(again, pixels), atol=1e-6)
    # every version grown from the file shares its extractor, so its features are cached under one key
    assert extractor_of(grown).key == extractor_of(again).key == extractor_of(model_bytes).key


def test_a_file_without_features_cannot_grow() -> None:
    model = onnx.load_from_string(dark_bright_onnx())
    kept = [o for o in model.graph.output if o.name != "features"]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    with pytest.raises(ValueError, match="features"):
        extractor_of(model.SerializeToString())
