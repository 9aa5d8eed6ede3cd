"""What a finished candidate leaves behind: ONNX model, head statistics, model card.

- ``model.onnx``: uint8 NCHW ``pixels`` -> ``probabilities`` (N, K, calibrated), ``familiarity`` (N, in [0, 1]:
  below the metadata's ``pigeonhole.threshold`` the answer is "unknown", see ``novelty``) and
  ``features`` (N, D, the extractor output). Normalisation is inside the graph. The
  second output lets the service add images or classes to the head later without any
  other file: features of new images + ``head.npz`` -> a new exact head.
- ``head.npz``: the ridge head's per-class sufficient statistics (see ``head``).
- ``neighbours.npz``: the features of the images the head holds, for "it looks like these" (``neighbours``).
- ``card.json``: classes, input spec, test metrics, serving cost, training facts,
  leaderboard and lineage. Everything is plain JSON for the API and the UI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pigeonhole.learn.evaluate import evaluate
from pigeonhole.learn.export import INPUT_NAME, export_onnx, open_session, write_atomic
from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.held_out import HELD_OUT_FILE
from pigeonhole.learn.neighbours import NEIGHBOURS_FILE
from pigeonhole.learn.preprocess import InputSpec

MODEL_FILE, HEAD_FILE, CARD_FILE = "model.onnx", "head.npz", "card.json"
OUTPUTS = ("probabilities", "familiarity", "features")
CARD_FORMAT = 1


class ClassifierModule(nn.Module):
    """Extractor + solved head as one torch module: pixels -> (probabilities, familiarity, features)."""

    def __init__(self, extractor: nn.Module, head: RidgeHead) -> None:
        super().__init__()
        self.extractor = extractor
        self.head = head.to_module()

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.extractor(pixels)
        probs, familiar = self.head(feats)
        return probs, familiar, feats


def export_model(
    extractor: nn.Module, input_spec: InputSpec, head: RidgeHead, *, metadata: Mapping[str, str] | None = None
) -> bytes:
    meta = {
        "pigeonhole.classes": json.dumps(head.classes),
        "pigeonhole.threshold": repr(float(head.threshold)),
        **(metadata or {}),
    }
    module = ClassifierModule(extractor, head).eval()
    return export_onnx(module, input_spec, output_name=OUTPUTS, metadata=meta)


def measure_speed(model: bytes, input_spec: InputSpec, *, threads: int | None = None, repeats: int = 20) -> dict:
    """Single-image latency (median ms) and batch-32 throughput with ONNX Runtime."""
    session = open_session(model, intra_op_threads=threads)
    rng = np.random.default_rng(0)
    shape = (input_spec.channels, input_spec.height, input_spec.width)
    one = rng.integers(0, 256, (1, *shape), dtype=np.uint8)
    batch = rng.integers(0, 256, (32, *shape), dtype=np.uint8)
    session.run(None, {INPUT_NAME: one})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, {INPUT_NAME: one})
        times.append(time.perf_counter() - t)
    session.run(None, {INPUT_NAME: batch})
    t, runs = time.perf_counter(), 0
    while runs < 3 or (time.perf_counter() - t < 0.5 and runs < 20):
        session.run(None, {INPUT_NAME: batch})
        runs += 1
    elapsed = time.perf_counter() - t
    return {
        "latency_ms": float(np.median(times) * 1000),
        "latency_p90_ms": float(np.percentile(times, 90) * 1000),
        "throughput_img_s": float(32 * runs / elapsed),
        "batch_size": 32,
        "threads": threads,
        "runtime": "onnxruntime",
    }


def run_model(model: bytes | Any, pixels: np.ndarray, *, threads: int | None = None,
              batch: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, familiarity, features) of an exported model (bytes or an open session) on uint8 pixels."""
    session = open_session(model, intra_op_threads=threads) if isinstance(model, bytes) else model
    names = ["probabilities", "familiarity", "features"]
    outs = [session.run(names, {INPUT_NAME: pixels[s : s + batch]}) for s in range(0, len(pixels), batch)]
    if not outs:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.float32), np.zeros((0, 0), dtype=np.float32)
    return tuple(np.concatenate([o[i] for o in outs]) for i in range(3))  # type: ignore[return-value]


def split_metrics(
    probs: np.ndarray, familiar: np.ndarray, labels: Sequence[str], keys: Sequence[str], classes: Sequence[str],
    threshold: float, *, mistakes: int = 12,
) -> dict[str, Any]:
    """Full metrics plus balanced accuracy and the most confident mistakes (by image key)."""
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[lab] for lab in labels], dtype=np.int64)
    metrics = evaluate(y, probs, list(classes), threshold=threshold, familiarity=familiar)
    recalls = [v["recall"] for v in metrics["per_class"]["classes"].values() if v["support"]]
    metrics["balanced_accuracy"] = float(np.mean(recalls)) if recalls else 0.0
    if len(y):
        pred = probs.argmax(1)
        conf = probs.max(1)
        wrong = np.flatnonzero(pred != y)
        wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:mistakes]
        metrics["confident_mistakes"] = [
            {"image": keys[i], "true": classes[y[i]], "predicted": classes[pred[i]], "confidence": float(conf[i])}
            for i in wrong
        ]
    else:
        metrics["confident_mistakes"] = []
    return metrics


def unknown_facts(head: RidgeHead) -> dict[str, Any]:
    """What the card says of "unknown": the detector, the caution, and what was measured when choosing them."""
    detector = head.detector
    return {
        "rule": "familiarity below the caution is answered 'unknown'",
        "caution": float(head.threshold),
        "detector": None if detector is None else detector.kind,
        "shrinkage": None if detector is None else detector.shrinkage,
        "simulated_auroc": {} if detector is None else detector.simulated_auroc,
        "held_out_answered": head.threshold_coverage,
        "held_out_right_when_answered": head.threshold_precision,
    }


@dataclass
class ArtifactPaths:
    directory: Path
    model: Path
    head: Path
    card: Path
    neighbours: Path | None = None
    held_out: Path | None = None

    def as_dict(self) -> dict[str, str]:
        out = {"directory": str(self.directory), "model": str(self.model), "head": str(self.head),
               "card": str(self.card)}
        for name, path in (("neighbours", self.neighbours), ("held_out", self.held_out)):
            if path is not None:
                out[name] = str(path)
        return out


def write_artifacts(directory: Path, model: bytes, head: RidgeHead, card: dict[str, Any], *,
                    neighbours: bytes | None = None, held_out: bytes | None = None) -> ArtifactPaths:
    """Write the files atomically (the card last, so a card means a complete set)."""
    directory = Path(directory)
    paths = ArtifactPaths(directory, directory / MODEL_FILE, directory / HEAD_FILE, directory / CARD_FILE,
                          directory / NEIGHBOURS_FILE if neighbours is not None else None,
                          directory / HELD_OUT_FILE if held_out is not None else None)
    write_atomic(model, paths.model)
    write_atomic(head.to_bytes(), paths.head)
    for data, path in ((neighbours, paths.neighbours), (held_out, paths.held_out)):
        if data is not None and path is not None:
            write_atomic(data, path)
    write_atomic(json.dumps(card, indent=1, sort_keys=True).encode(), paths.card)
    return paths


def make_card(
    *,
    candidate: dict[str, Any],
    classes: Sequence[str],
    input_spec: InputSpec,
    head: RidgeHead,
    metrics: dict[str, Any],
    speed: dict[str, Any],
    model_bytes: int,
    training: dict[str, Any],
    leaderboard: list[dict[str, Any]],
    lineage: dict[str, Any],
    extractor: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    return {
        "format": CARD_FORMAT,
        "classes": list(classes),
        "input": {**input_spec.as_dict(),
                  "note": "uint8 pixels after the crop policy; normalisation is inside the model"},
        "outputs": {"probabilities": "calibrated, columns in 'classes' order", "features": "extractor output"},
        "unknown_threshold": float(head.threshold),
        "unknown": unknown_facts(head),
        "head": {"alpha": head.alpha, "temperature": head.temperature, "feature_dim": head.input_dim,
                 "random_features": head.config.random_features, "counts": head.counts},
        "candidate": candidate,
        "metrics": metrics,
        "model_size_bytes": int(model_bytes),
        "speed": speed,
        "training": training,
        "leaderboard": leaderboard,
        "lineage": lineage,
        "extractor": extractor,  # id, pretrained, and the weights' name, title, hash, licence and origin
        "notes": list(notes),  # plain sentences for the user, e.g. that no pretrained extractor was available
    }
