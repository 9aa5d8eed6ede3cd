"""A loaded model version: an ONNX Runtime session plus the contract its file carries in metadata."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from pigeonhole.learn.export import INPUT_META_KEY, open_session

# A session holds its weights plus ORT's buffers: about twice the file size in practice.
MEMORY_PER_FILE_BYTE = 2


@dataclass
class ModelContract:
    """What a caller needs to prepare a version's input and read its output, without running it.

    In ``ray`` prediction mode the API process holds only this (a few hundred bytes per version), decodes
    and answers with it, and leaves the weights to the Ray Serve replicas.
    """

    height: int
    width: int
    color: str
    crop: str
    classes: list[str]
    threshold: float  # below this familiarity the answer is "unknown"


@dataclass
class ServingModel(ModelContract):
    session: ort.InferenceSession
    input_name: str
    memory_bytes: int
    outputs: list[str]

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) -> (N, K + 1 + D): the probabilities, the familiarity and the features side by side.

        One float32 array, so the micro-batcher and the wire to Ray Serve carry one thing. A file from before
        familiarity existed has its largest probability there instead, which is what its threshold was set on.
        """
        found = dict(zip(self.outputs, self.session.run(self.outputs, {self.input_name: pixels}), strict=True))
        probs = np.asarray(found[self.outputs[0]], dtype=np.float32)
        familiar = found.get("familiarity", probs.max(axis=1) if probs.size else np.zeros(len(probs), np.float32))
        parts = [probs, np.asarray(familiar, dtype=np.float32)[:, None]]
        if "features" in found:
            parts.append(np.asarray(found["features"], dtype=np.float32).reshape(len(probs), -1))
        return np.concatenate(parts, axis=1)


def split_answers(contract: ModelContract, out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, familiarity, features) from :meth:`ServingModel.run`'s array."""
    k = len(contract.classes)
    return out[:, :k], out[:, k], out[:, k + 1:]


def _contract_fields(meta: Mapping[str, str]) -> dict[str, object]:
    try:
        spec = json.loads(meta[INPUT_META_KEY])
        classes = json.loads(meta["pigeonhole.classes"])
        threshold = float(meta.get("pigeonhole.threshold", "0"))
        return dict(height=int(spec["height"]), width=int(spec["width"]), color=str(spec["color"]),
                    crop=str(spec.get("crop", "center_crop")), classes=list(classes), threshold=threshold)
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"this ONNX file lacks Pigeonhole's metadata: {exc}") from exc


def read_contract(onnx_bytes: bytes) -> ModelContract:
    """The contract from the file's metadata, read without building an inference session."""
    proto = onnx.load_from_string(onnx_bytes)
    return ModelContract(**_contract_fields({p.key: p.value for p in proto.metadata_props}))  # type: ignore[arg-type]


def load_model(onnx_bytes: bytes, *, threads: int | None = None) -> ServingModel:
    session = open_session(onnx_bytes, intra_op_threads=threads)
    fields = _contract_fields(session.get_modelmeta().custom_metadata_map)
    names = [o.name for o in session.get_outputs()]
    outputs = ["probabilities"] if "probabilities" in names else names[:1]
    outputs += [name for name in ("familiarity", "features") if name in names]
    return ServingModel(session=session, input_name=session.get_inputs()[0].name, outputs=outputs,
                        memory_bytes=len(onnx_bytes) * MEMORY_PER_FILE_BYTE, **fields)  # type: ignore[arg-type]
