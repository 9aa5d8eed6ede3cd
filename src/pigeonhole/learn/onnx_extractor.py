"""Extractors the operator brings as ONNX files: any graph that maps an image batch to one vector per image.

The operator states the input size, colour order and normalisation (``pigeonhole weights import``). The search
then treats the file like a built-in frozen extractor: the graph is wrapped so that it takes the product's uint8
``pixels`` and gives ``features`` (:func:`wrap_extractor`), features are extracted and cached in ONNX Runtime,
the ridge head is joined to the same graph for serving (:func:`join_head`, the path growing uses too), and the
version file grows and shrinks like any other. It is never fine-tuned: there are no torch weights to train.

Its cost for the search's time planning is the multiply-adds of its convolutions and matrix products, counted
from the graph's inferred shapes (:func:`count_mflops`).
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx.compose
import onnx.helper as oh
import onnx.shape_inference
import onnx.version_converter
import torch
from torch import nn

from pigeonhole.learn.export import INPUT_META_KEY, INPUT_NAME, OPSET, open_session
from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.preprocess import InputSpec
from pigeonhole.learn.weights import WeightsError

FEATURES, PROBABILITIES, FAMILIARITY = "features", "probabilities", "familiarity"
_OP, _HEAD = "op_", "head_"


class OnnxBody(nn.Module):
    """Stands for an operator's ONNX graph among the torch extractors: it runs in ONNX Runtime only."""

    def __init__(self, path: Path, feature_dim: int) -> None:
        super().__init__()
        self.path = Path(path)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("an imported ONNX extractor runs in ONNX Runtime, not in PyTorch")


def _load(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises several unrelated types for a bad file
        raise WeightsError(f"{path.name} is not a valid ONNX file ({exc})") from exc
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1 or len(model.graph.output) < 1:
        raise WeightsError(f"{path.name} must take one input (an image batch) and give a vector per image")
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if version != OPSET:
        try:
            model = onnx.version_converter.convert_version(model, OPSET)
        except Exception as exc:
            raise WeightsError(f"{path.name} uses ONNX opset {version}, which cannot be converted to {OPSET} "
                               f"({exc}); export it with opset {OPSET}") from exc
    return model


def describe_onnx(path: Path, *, size: int, channels: int) -> int:
    """The feature size of an extractor graph, after checking that it runs on a float (1, C, size, size) batch
    and gives one vector (or a 1 x 1 map) per image."""
    model = _load(path)
    session = open_session(model.SerializeToString(), intra_op_threads=1)
    name = session.get_inputs()[0].name
    try:
        out = session.run(None, {name: np.zeros((2, channels, size, size), dtype=np.float32)})[0]
    except Exception as exc:  # ONNX Runtime's errors
        raise WeightsError(f"{path.name} does not run on a batch of {channels} x {size} x {size} images ({exc})") \
            from exc
    if out.ndim < 2 or out.shape[0] != 2 or int(np.prod(out.shape[2:], dtype=np.int64)) != 1:
        raise WeightsError(f"{path.name} gives {tuple(out.shape)} for 2 images: one vector per image is needed")
    return int(out.shape[1])


def wrap_extractor(path: Path, spec: InputSpec) -> bytes:
    """uint8 ``pixels`` (N, C, H, W) -> normalised float -> the operator's graph -> ``features`` (N, D)."""
    op = onnx.compose.add_prefix(_load(path), _OP)
    op_input = next(i.name for i in op.graph.input if i.name not in {t.name for t in op.graph.initializer})
    op_output = op.graph.output[0].name
    c = spec.channels
    shape = [1, c, 1, 1]
    consts = [oh.make_tensor("scale", onnx.TensorProto.FLOAT, [], [1 / 255]),
              oh.make_tensor("mean", onnx.TensorProto.FLOAT, shape, list(spec.mean)),
              oh.make_tensor("std", onnx.TensorProto.FLOAT, shape, list(spec.std))]
    pre = oh.make_graph(
        [oh.make_node("Cast", [INPUT_NAME], ["as_float"], to=onnx.TensorProto.FLOAT),
         oh.make_node("Mul", ["as_float", "scale"], ["unit"]),
         oh.make_node("Sub", ["unit", "mean"], ["centred"]),
         oh.make_node("Div", ["centred", "std"], ["normalised"])],
        "pixels_to_input",
        [oh.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.UINT8, ["batch", c, spec.height, spec.width])],
        [oh.make_tensor_value_info("normalised", onnx.TensorProto.FLOAT, ["batch", c, spec.height, spec.width])],
        consts,
    )
    pre_model = oh.make_model(pre, opset_imports=list(op.opset_import), ir_version=op.ir_version)
    merged = onnx.compose.merge_models(pre_model, op, io_map=[("normalised", op_input)], outputs=[op_output])
    merged.graph.node.append(oh.make_node("Flatten", [op_output], [FEATURES], axis=1))
    del merged.graph.output[:]
    merged.graph.output.append(oh.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT, ["batch", None]))
    _set_metadata(merged, {INPUT_META_KEY: json.dumps(spec.as_dict())})
    onnx.checker.check_model(merged)
    return merged.SerializeToString()


def count_mflops(model_bytes: bytes) -> float:
    """Multiply-adds (millions) of the convolutions and matrix products for one image, from the shapes inferred on
    the graph as ONNX Runtime's basic optimisation leaves it (computed paddings and reshapes folded to constants,
    which shape inference cannot see through)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(folder) / "folded.onnx")
        ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
        folded = onnx.load(options.optimized_model_filepath)
    model = onnx.shape_inference.infer_shapes(folded, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for value in [*model.graph.value_info, *model.graph.output, *model.graph.input]:
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = dims
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    macs = 0.0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if out is None:
            continue
        per_out = float(np.prod(out[1:])) if len(out) > 1 else float(out[0] if out else 1)
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in weights:
            w = weights[node.input[1]]
            macs += per_out * float(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes.get(node.input[0]) or weights.get(node.input[0]) or [1]
            macs += per_out * float(a[-1])
    return macs / 1e6


def _set_metadata(model: onnx.ModelProto, meta: Mapping[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _head_model(head: RidgeHead, ir_version: int) -> onnx.ModelProto:
    module = head.to_module().eval()
    dummy = torch.zeros((2, head.input_dim), dtype=torch.float32)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(module, (dummy,), buffer, input_names=[FEATURES], output_names=[PROBABILITIES, FAMILIARITY],
                          dynamic_axes={name: {0: "batch"} for name in (FEATURES, PROBABILITIES, FAMILIARITY)},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = ir_version
    return model


def join_head(extractor: onnx.ModelProto, head: RidgeHead, metadata: Mapping[str, str]) -> bytes:
    """An extractor graph (``pixels`` -> ``features``) joined to ``head``: pixels -> (probabilities, familiarity,
    features), with ``metadata`` plus the head's classes and threshold."""
    head_model = onnx.compose.add_prefix(_head_model(head, extractor.ir_version), _HEAD)
    merged = onnx.compose.merge_models(extractor, head_model, io_map=[(FEATURES, _HEAD + FEATURES)],
                                       outputs=[_HEAD + PROBABILITIES, _HEAD + FAMILIARITY, FEATURES])
    renamed = {_HEAD + PROBABILITIES: PROBABILITIES, _HEAD + FAMILIARITY: FAMILIARITY}
    for node in merged.graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                names[i] = renamed.get(name, name)
    for output in merged.graph.output:
        output.name = renamed.get(output.name, output.name)
    order = [PROBABILITIES, FAMILIARITY, FEATURES]  # as torch-exported files
    ordered = sorted(merged.graph.output, key=lambda o: order.index(o.name))
    outputs = [onnx.ValueInfoProto.FromString(o.SerializeToString()) for o in ordered]
    del merged.graph.output[:]
    merged.graph.output.extend(outputs)
    meta = dict(metadata)
    meta.update({"pigeonhole.classes": json.dumps(head.classes), "pigeonhole.threshold": repr(float(head.threshold))})
    _set_metadata(merged, meta)
    onnx.checker.check_model(merged)
    return merged.SerializeToString()


def metadata_of(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}

