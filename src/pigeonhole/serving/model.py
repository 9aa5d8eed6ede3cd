"""A loaded model version: an ONNX Runtime session plus the contract its file carries in metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from pigeonhole.learn.export import INPUT_META_KEY, open_session

# A session holds its weights plus ORT's buffers: about twice the file size in practice.
MEMORY_PER_FILE_BYTE = 2


@dataclass
class ServingModel:
    session: ort.InferenceSession
    input_name: str
    height: int
    width: int
    color: str
    crop: str
    classes: list[str]
    threshold: float
    memory_bytes: int
    outputs: list[str]

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) -> probabilities (N, K)."""
        return self.session.run(self.outputs, {self.input_name: pixels})[0]


def load_model(onnx_bytes: bytes, *, threads: int | None = None) -> ServingModel:
    session = open_session(onnx_bytes, intra_op_threads=threads)
    meta = session.get_modelmeta().custom_metadata_map
    try:
        spec = json.loads(meta[INPUT_META_KEY])
        classes = json.loads(meta["pigeonhole.classes"])
        threshold = float(meta.get("pigeonhole.threshold", "0"))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"this ONNX file lacks Pigeonhole's metadata: {exc}") from exc
    names = [o.name for o in session.get_outputs()]
    # Version files also output the extractor's features (for growing the model later): not needed here.
    outputs = ["probabilities"] if "probabilities" in names else names[:1]
    return ServingModel(session=session, input_name=session.get_inputs()[0].name, outputs=outputs,
                        height=int(spec["height"]),
                        width=int(spec["width"]), color=str(spec["color"]), crop=str(spec.get("crop", "center_crop")),
                        classes=list(classes), threshold=threshold,
                        memory_bytes=len(onnx_bytes) * MEMORY_PER_FILE_BYTE)
