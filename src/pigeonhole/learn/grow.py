"""Growing a model version from its files alone: the frozen extractor stays, the head changes exactly.

A version's ONNX file outputs ``probabilities`` and ``features``. The extractor part (pixels ->
features) is cut out of that graph, and a new head (from updated per-class statistics) is exported
and joined to it, so adding or removing classes needs neither the training run nor the torch
weights: only the features of the new images, computed by the very extractor that serves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import onnx
import onnx.utils

from pigeonhole.learn.export import INPUT_META_KEY, INPUT_NAME, open_session
from pigeonhole.learn.features import FeatureCache, FeatureKey, OnnxExtractor
from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.onnx_extractor import FEATURES, PROBABILITIES, join_head, metadata_of
from pigeonhole.learn.preprocess import InputSpec


def input_spec_of(model_bytes: bytes) -> InputSpec:
    model = onnx.load_from_string(model_bytes)
    raw = next((json.loads(p.value) for p in model.metadata_props if p.key == INPUT_META_KEY), None)
    if raw is None:
        raise ValueError("this model file has no input description")
    raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
    return InputSpec(**raw)


def extractor_model(model_bytes: bytes) -> onnx.ModelProto:
    """The pixels -> features part of a version's graph."""
    model = onnx.load_from_string(model_bytes)
    if FEATURES not in {o.name for o in model.graph.output}:
        raise ValueError("this model file has no 'features' output, so it cannot grow")
    return onnx.utils.Extractor(model).extract_model([INPUT_NAME], [FEATURES])


def extractor_of(model_bytes: bytes, *, threads: int | None = None) -> OnnxExtractor:
    """An extractor session keyed by the hash of the extractor's own graph, not the whole file's: every version
    grown from a training run shares its extractor, so its features are cached once for all of them (keyed by the
    file, each class change recomputed every validation and test image: 20,000 images, two minutes, at 1,000
    classes)."""
    model = extractor_model(model_bytes)
    session = open_session(model.SerializeToString(), intra_op_threads=threads)
    return OnnxExtractor(session, input_spec_of(model_bytes), _key_of(model))


def _key_of(extractor: onnx.ModelProto) -> str:
    canonical = onnx.GraphProto()
    canonical.CopyFrom(extractor.graph)
    canonical.name = ""  # "Extracted from {...}" nests once more with every version
    return "extractor-" + hashlib.sha256(canonical.SerializeToString(deterministic=True)).hexdigest()[:16]


def remember_features(cache: FeatureCache, model_bytes: bytes, keys: Sequence[str], features: np.ndarray) -> None:
    """Cache features of images under the key :func:`extractor_of` gives this file, so the first class change after
    a training finds the features the training computed instead of passing every validation and test image through
    the network again (1,000 classes: 20,000 images, two and a half minutes). They must be this file's extractor's
    features: the ones its head was fitted on, or its own ``features`` output."""
    spec = input_spec_of(model_bytes)
    key = _key_of(extractor_model(model_bytes))
    cache.put_many((FeatureKey(k, key, spec.height, spec.crop), f) for k, f in zip(keys, features, strict=True))


def rebuild_model(model_bytes: bytes, head: RidgeHead) -> bytes:
    """The same extractor joined to ``head``: pixels -> (probabilities, features), metadata updated."""
    return join_head(extractor_model(model_bytes), head, metadata_of(onnx.load_from_string(model_bytes)))


def probabilities(model_bytes: bytes, pixels: np.ndarray) -> np.ndarray:
    session = open_session(model_bytes)
    return session.run([PROBABILITIES], {INPUT_NAME: pixels})[0]
