"""Candidate feature stacks: the exported model equals PyTorch within 1e-4 on real images."""

from __future__ import annotations

import numpy as np
import torch

from pigeonhole.learn.artifacts import ClassifierModule, export_model
from pigeonhole.learn.backbones import build_extractor
from pigeonhole.learn.candidates import CandidateConfig, build_stack, extract_features, member_key
from pigeonhole.learn.data import MappingSource, PixelStore, sha256_bytes
from pigeonhole.learn.export import INPUT_NAME, open_session
from pigeonhole.learn.features import FeatureCache
from pigeonhole.learn.head import HeadConfig, RidgeHead


def test_onnx_matches_torch_on_real_images(catalog, flowers, tmp_path) -> None:
    data = flowers.train[:40:4] + flowers.val[:40:4]
    blobs = {sha256_bytes(b): b for b, _ in data}
    keys = [sha256_bytes(b) for b, _ in data]
    labels = [label for _, label in data]
    config = CandidateConfig("frozen", "mobilenet_v2", 96, flip_tta=True)
    spec = config.spec
    members = [(spec, build_extractor(spec, catalog), member_key(spec, catalog)),
               (spec, build_extractor(spec, catalog), member_key(spec, catalog) + "-twin")]
    built = build_stack(config, members)
    assert built.feature_dim == 2 * 1280
    store = PixelStore(MappingSource(blobs), FeatureCache(tmp_path, 64 << 20))
    pixels = store.get(keys, 96)
    feats = extract_features(built, keys, lambda k: store.get(k, 96), None)
    head = RidgeHead(built.feature_dim, HeadConfig(random_features=64))
    head.add(feats, labels)
    head.solve(1.0)

    model = export_model(built.module, built.input_spec, head)
    probs, familiar, onnx_feats = open_session(model).run(None, {INPUT_NAME: pixels})
    with torch.no_grad():
        torch_probs, torch_familiar, torch_feats = ClassifierModule(built.module, head).eval()(
            torch.from_numpy(pixels))
    np.testing.assert_allclose(probs, torch_probs.numpy(), atol=1e-4)
    np.testing.assert_allclose(familiar, torch_familiar.numpy(), atol=1e-4)
    scale = float(np.abs(torch_feats.numpy()).max())
    np.testing.assert_allclose(onnx_feats, torch_feats.numpy(), atol=1e-4 * max(scale, 1.0))
    np.testing.assert_allclose(onnx_feats, feats, atol=1e-4 * max(scale, 1.0))
    # the numpy head on the model's own features reproduces its probabilities (add-class path)
    np.testing.assert_allclose(head.predict_proba(onnx_feats), probs, atol=1e-4)
