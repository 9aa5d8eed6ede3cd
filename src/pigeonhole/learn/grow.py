"""Growing a model version from its files alone: the frozen extractor stays, the head changes exactly.

A version's ONNX file outputs ``probabilities`` and ``features``. The extractor part (pixels ->
features) is cut out of that graph, and a new head (from updated per-class statistics) is exported
and joined to it, so adding or removing classes needs neither the training run nor the torch
weights: only the features of the new images, computed by the very extractor that serves.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings

import numpy as np
import onnx
import onnx.compose
import onnx.utils
import torch

from pigeonhole.learn.export import INPUT_META_KEY, INPUT_NAME, OPSET, open_session
from pigeonhole.learn.features import OnnxExtractor
from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.preprocess import InputSpec

FEATURES, PROBABILITIES = "features", "probabilities"
_HEAD_PREFIX = "head_"


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
    """An extractor session keyed by the model file's hash (features of the same file are the same)."""
    session = open_session(extractor_model(model_bytes).SerializeToString(), intra_op_threads=threads)
    key = "version-" + hashlib.sha256(model_bytes).hexdigest()[:16]
    return OnnxExtractor(session, input_spec_of(model_bytes), key)


def _head_model(head: RidgeHead, ir_version: int) -> onnx.ModelProto:
    module = head.to_module().eval()
    dummy = torch.zeros((2, head.input_dim), dtype=torch.float32)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(module, (dummy,), buffer, input_names=[FEATURES], output_names=[PROBABILITIES],
                          dynamic_axes={FEATURES: {0: "batch"}, PROBABILITIES: {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = ir_version
    return model


def rebuild_model(model_bytes: bytes, head: RidgeHead) -> bytes:
    """The same extractor joined to ``head``: pixels -> (probabilities, features), metadata updated."""
    base = onnx.load_from_string(model_bytes)
    extractor = extractor_model(model_bytes)
    head_model = onnx.compose.add_prefix(_head_model(head, extractor.ir_version), _HEAD_PREFIX)
    merged = onnx.compose.merge_models(extractor, head_model, io_map=[(FEATURES, _HEAD_PREFIX + FEATURES)],
                                       outputs=[_HEAD_PREFIX + PROBABILITIES, FEATURES])
    for node in merged.graph.node:
        for i, name in enumerate(node.output):
            if name == _HEAD_PREFIX + PROBABILITIES:
                node.output[i] = PROBABILITIES
    for output in merged.graph.output:
        if output.name == _HEAD_PREFIX + PROBABILITIES:
            output.name = PROBABILITIES
    meta = {p.key: p.value for p in base.metadata_props}
    meta.update({"pigeonhole.classes": json.dumps(head.classes), "pigeonhole.threshold": repr(float(head.threshold))})
    del merged.metadata_props[:]
    for key, value in meta.items():
        entry = merged.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(merged)
    return merged.SerializeToString()


def probabilities(model_bytes: bytes, pixels: np.ndarray) -> np.ndarray:
    session = open_session(model_bytes)
    return session.run([PROBABILITIES], {INPUT_NAME: pixels})[0]
