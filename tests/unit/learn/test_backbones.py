"""Extractor registry: strict pretrained loading, feature shapes, clear unavailability."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.unit.learn.conftest import read_class_zip

from pigeonhole.learn._torchvision import tv_models
from pigeonhole.learn.backbones import (
    SPECS,
    PixelExtractor,
    available_specs,
    build_architecture,
    build_extractor,
    extractor_key,
    get_spec,
    split_after_stem,
    stem_modules,
    unavailable_reason,
)
from pigeonhole.learn.preprocess import Normalize, images_to_batch
from pigeonhole.learn.weights import WeightsCatalog, WeightsError, WeightsNotFoundError

PRETRAINED = ["mobilenet_v2", "squeezenet1_0"]
NOT_SHIPPED = ["resnet18", "efficientnet_b0", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_v2_s",
               "convnext_tiny", "efficientnet_lite2"]


@pytest.mark.parametrize("extractor_id", PRETRAINED)
def test_pretrained_loads_strictly_and_gives_features(extractor_id: str, catalog, flowers) -> None:
    spec = get_spec(extractor_id)
    assert unavailable_reason(spec, catalog) is None
    entry = catalog.get(spec.weights)
    full = getattr(tv_models(), spec.architecture)(weights=None)
    result = full.load_state_dict(catalog.load_state_dict(entry.name), strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    model = PixelExtractor(spec, build_extractor(spec, catalog))
    pixels = images_to_batch([b for b, _ in flowers.train[:4]], spec.input_size)
    with torch.no_grad():
        feats = model(torch.from_numpy(pixels)).numpy()
    assert feats.shape == (4, spec.feature_dim) == (4, entry.feature_dim)
    assert np.isfinite(feats).all() and feats.std() > 0
    # pretrained features differ between different images (not a degenerate network)
    assert np.abs(feats[0] - feats[1]).max() > 1e-3


def test_pretrained_weights_beat_random_init(catalog, flowers) -> None:
    """Sanity that the real weights are in: the 1000-way ImageNet head of a daisy photo
    is confident with pretrained weights, near-uniform with random ones."""
    spec = get_spec("mobilenet_v2")
    tv = tv_models()
    full = tv.mobilenet_v2(weights=None)
    full.load_state_dict(catalog.load_state_dict("mobilenet_v2-imagenet"))
    pixels = torch.from_numpy(images_to_batch([b for b, _ in flowers.train[:4]], 224))
    with torch.no_grad():
        probs = torch.softmax(full.eval()(Normalize(spec.mean, spec.std)(pixels)), dim=1)
        rand = torch.softmax(tv.mobilenet_v2(weights=None).eval()(Normalize(spec.mean, spec.std)(pixels)), dim=1)
    assert probs.max(dim=1).values.mean() > 5 * rand.max(dim=1).values.mean()


@pytest.mark.parametrize("extractor_id", NOT_SHIPPED)
def test_specs_without_weights_report_clearly(extractor_id: str, catalog) -> None:
    spec = get_spec(extractor_id)
    reason = unavailable_reason(spec, catalog)
    assert reason is not None and spec.weights in reason
    assert spec not in available_specs(catalog)
    with pytest.raises(WeightsNotFoundError, match=spec.weights):
        build_extractor(spec, catalog)
    # the architecture itself is right: random init at a small size gives (N, D)
    with torch.no_grad():
        out = build_architecture(spec)(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, spec.feature_dim)


def test_efficientnet_lite0_ships_with_the_product_and_knows_ants_from_bees(tmp_path: Path, shared_datasets) -> None:
    """The packaged weights through the product's own path (no weights directory at all): features of the
    extractor as the search builds it, times the checkpoint's ImageNet classifier, name ImageNet's 'ant' (310)
    and 'bee' (309) in the top 5 for most photos. Swish for ReLU6, ImageNet's mean/std for (x - 127) / 128, or
    symmetric for TensorFlow's padding each cost this sanity."""
    catalog = WeightsCatalog(tmp_path / "fresh-install")
    spec = get_spec("efficientnet_lite0", 224)
    assert unavailable_reason(spec, catalog) is None and spec in available_specs(catalog)
    raw = catalog.load_state_dict("efficientnet_lite0-imagenet")
    model = PixelExtractor(spec, build_extractor(spec, catalog)).eval()
    hits = []
    for label, imagenet_class in (("ants", 310), ("bees", 309)):
        photos = [b for b, y in read_class_zip(shared_datasets / "hymenoptera" / "val.zip", 20) if y == label]
        with torch.no_grad():
            feats = model(torch.from_numpy(images_to_batch(photos, 224)))
        logits = feats @ raw["_fc.weight"].T + raw["_fc.bias"]
        hits += (logits.topk(5, dim=1).indices == imagenet_class).any(dim=1).tolist()
    assert np.mean(hits) >= 0.8


def test_a_dinov2_checkpoint_in_meta_s_layout_loads_strictly_at_the_extractor_size() -> None:
    """The published file's names and its 37 x 37 position grid (518 px), resized at load time to 224 px."""
    from pigeonhole.learn.vit import DinoViT

    published = DinoViT(image_size=518).state_dict()
    assert published["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    spec = get_spec("dinov2_vits14")
    body = build_architecture(spec, published)
    with torch.no_grad():
        assert body(torch.zeros(2, 3, 224, 224)).shape == (2, spec.feature_dim) == (2, 768)


def test_available_specs_cheapest_first(catalog) -> None:
    ids = [s.id for s in available_specs(catalog)]
    assert {"mobilenet_v2", "squeezenet1_0", "smallcnn_l"} <= set(ids)
    costs = [s.mflops for s in available_specs(catalog)]
    assert costs == sorted(costs)
    assert get_spec("mobilenet_v2", 112).mflops == pytest.approx(SPECS["mobilenet_v2"].mflops / 4)
    assert available_specs(None) == [s for s in available_specs(catalog) if not s.pretrained]
    assert "efficientnet_lite0" in ids  # shipped in a registry package, beside the operator's files


def test_catalog_entry_under_another_name_is_found_by_architecture(tmp_path: Path, shared_weights: Path) -> None:
    entry = json.loads((shared_weights / "weights.json").read_text())["weights"][1]
    assert entry["architecture"].endswith("squeezenet1_0")
    (tmp_path / entry["file"]).symlink_to(shared_weights / entry["file"])
    (tmp_path / "weights.json").write_text(json.dumps({"weights": [{**entry, "name": "my-squeezenet"}]}))
    catalog = WeightsCatalog(tmp_path)
    spec = get_spec("squeezenet1_0")
    assert unavailable_reason(spec, catalog) is None
    assert extractor_key(spec, catalog) == f"squeezenet1_0:{entry['sha256'][:16]}"
    assert build_extractor(spec, catalog) is not None


def test_mismatched_state_dict_is_refused() -> None:
    bad = build_architecture(get_spec("squeezenet1_0")).state_dict()
    with pytest.raises(WeightsError, match="do not match"):
        build_architecture(get_spec("mobilenet_v2"), bad)


def test_small_cnn_on_mnist(mnist) -> None:
    images, _ = mnist
    spec = get_spec("smallcnn_l")
    assert spec.color == "L" and spec.input_size == 28 and not spec.pretrained
    model = PixelExtractor(spec, build_architecture(spec))
    with torch.no_grad():
        feats = model(torch.from_numpy(images[:8, None]))
    assert feats.shape == (8, spec.feature_dim)


@pytest.mark.parametrize("extractor_id", ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_0",
                                          "efficientnet_lite0"])
def test_the_stem_and_the_rest_compute_the_whole_network(extractor_id: str) -> None:
    """Fine-tuning runs a frozen stem apart from the rest (in ONNX Runtime): the two must be the network."""
    spec = get_spec(extractor_id, 64)
    torch.manual_seed(0)
    body = build_architecture(spec).eval()
    split = split_after_stem(spec, body)
    assert split is not None
    stem, rest = split
    assert list(stem) == stem_modules(spec, body)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rest(stem(x)), body(x), rtol=0, atol=0)


def test_a_network_whose_stem_is_no_prefix_is_not_split() -> None:
    spec = get_spec("resnet18", 64)
    assert stem_modules(spec, build_architecture(spec)) and split_after_stem(spec, build_architecture(spec)) is None
