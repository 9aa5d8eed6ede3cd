"""Untrusted image bytes -> the uint8 pixels a model version takes, with the same checks as uploads."""

from __future__ import annotations

import numpy as np

from pigeonhole.learn.preprocess import resize_and_crop, to_color
from pigeonhole.serving.model import ModelContract
from pigeonhole.storage.images import ImageLimits, decode_for_model


def pixels_for(model: ModelContract, data: bytes, limits: ImageLimits) -> np.ndarray:
    """(C, H, W) uint8. Raises storage.images.ImageRejected for anything that is not a usable image."""
    decoded = decode_for_model(data, max(model.height, model.width), limits=limits)
    image = resize_and_crop(to_color(decoded.image, model.color), model.height, model.crop)  # type: ignore[arg-type]
    array = np.asarray(image, dtype=np.uint8)
    return array[None, :, :] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def top_k(model: ModelContract, probs: np.ndarray, familiar: np.ndarray, k: int,
          threshold: float | None = None) -> list[dict[str, object]]:
    """Per image: label (None when the familiarity is below the threshold: 'unknown'), confidence,
    familiarity and the top k classes."""
    cut = model.threshold if threshold is None else threshold
    k = max(1, min(k, len(model.classes)))
    answers = []
    for row, fam in zip(probs, familiar, strict=True):
        order = np.argsort(-row)[:k]
        best = float(row[order[0]])
        answers.append({
            "label": model.classes[int(order[0])] if float(fam) >= cut else None,
            "confidence": round(best, 6),
            "familiarity": round(float(fam), 6),
            "top": [{"label": model.classes[int(i)], "confidence": round(float(row[i]), 6)} for i in order],
        })
    return answers
