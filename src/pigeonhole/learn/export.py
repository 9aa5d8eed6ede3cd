"""ONNX export and ONNX Runtime sessions.

Frozen extractors run through ONNX Runtime rather than PyTorch eager because it is
3-5x faster on these CPUs, and the same file is what users download and what serving
loads, so one code path is exercised everywhere. The legacy TorchScript exporter
(``dynamo=False``) is used because it takes ~0.3 s and writes one self-contained file;
the dynamo exporter takes seconds and splits weights into external data.

Exported graphs take ``pixels``: uint8 NCHW with a dynamic batch axis, and normalise
inside (see ``preprocess``). The input spec is also written into the file's metadata
(key ``pigeonhole.input``) so a file carries its own contract.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from torch import nn

from pigeonhole.learn.preprocess import InputSpec

INPUT_NAME = "pixels"
OPSET = 17
INPUT_META_KEY = "pigeonhole.input"


def export_onnx(
    module: nn.Module,
    input_spec: InputSpec,
    *,
    output_name: str | Sequence[str] = "features",
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Serialise ``module`` (pixels -> outputs) to a single-file ONNX model.

    The batch axis is dynamic; height/width are fixed to the spec because the
    extractors were validated at that size and serving resizes to it anyway.
    """
    module = module.eval()
    dtype = torch.uint8 if input_spec.dtype == "uint8" else torch.float32
    dummy = torch.zeros((2, input_spec.channels, input_spec.height, input_spec.width), dtype=dtype)
    outputs = [output_name] if isinstance(output_name, str) else list(output_name)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated upstream but is the fast single-file path.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # Shapes read in Python (TensorFlow-style padding) are constants at the file's fixed size: as intended.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # ONNX Runtime folds them
        torch.onnx.export(
            module,
            (dummy,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    props = {INPUT_META_KEY: json.dumps(input_spec.as_dict()), **(metadata or {})}
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_atomic(data: bytes, path: Path) -> Path:
    """Write next to the target and rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def read_input_spec(model: bytes | Path) -> dict[str, object] | None:
    """The input spec stored in an exported file's metadata, if any."""
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    for prop in proto.metadata_props:
        if prop.key == INPUT_META_KEY:
            return json.loads(prop.value)
    return None


def open_session(
    model: bytes | Path, *, intra_op_threads: int | None = None, allow_spinning: bool = False
) -> ort.InferenceSession:
    """A CPU ONNX Runtime session with options suited to shared machines.

    ``intra_op_threads`` defaults to ORT's choice (all cores); pass 1 when several
    sessions run in parallel processes. Spin-waiting is off by default: it buys a
    little latency but burns whole cores while idle, which starves neighbours on a
    small shared machine. One inter-op thread because these graphs are sequential.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
