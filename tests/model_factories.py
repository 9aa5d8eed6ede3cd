"""A tiny real classifier (SmallCNN extractor + ridge head, exported like real versions), for serving tests.

It tells dark from bright 28 px grey images, so predictions are checkable without a training run.
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import torch
from PIL import Image

from pigeonhole.learn.artifacts import export_model
from pigeonhole.learn.backbones import PixelExtractor, build_architecture, get_spec
from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.unknown import choose_unknown


def grey(level: int, seed: int, size: int = 28) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(level, 20, (size, size)), 0, 255).astype(np.uint8)


def grey_png(level: int, seed: int, size: int = 28) -> bytes:
    out = io.BytesIO()
    Image.fromarray(grey(level, seed, size)).save(out, "PNG")
    return out.getvalue()


@cache
def dark_bright_onnx(dark: str = "dark", bright: str = "bright") -> bytes:
    torch.manual_seed(0)
    spec = get_spec("smallcnn_l")
    extractor = PixelExtractor(spec, build_architecture(spec)).eval()

    def features(arrays: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return extractor(torch.from_numpy(np.stack(arrays)[:, None])).numpy()

    train = [grey(40, i) for i in range(20)] + [grey(210, 100 + i) for i in range(20)]
    val = [grey(40, 200 + i) for i in range(10)] + [grey(210, 300 + i) for i in range(10)]
    head = RidgeHead(features(train[:1]).shape[1])
    head.add(features(train), [dark] * 20 + [bright] * 20)
    head.fit(features(val), [dark] * 10 + [bright] * 10)
    choose_unknown(head, features(val), [dark] * 10 + [bright] * 10, left_out=False)
    head.set_caution(0.0)  # answer every image: tests check labels, and 20 validation images make a coarse caution
    return export_model(extractor, spec.input_spec(), head)


@cache
def dark_bright_version() -> tuple[bytes, bytes]:
    """A growable version: the model file (probabilities, familiarity and features outputs) and its head
    statistics."""
    torch.manual_seed(0)
    spec = get_spec("smallcnn_l")
    extractor = PixelExtractor(spec, build_architecture(spec)).eval()
    with torch.no_grad():
        train = extractor(torch.from_numpy(np.stack([grey(40, i) for i in range(10)]
                                                    + [grey(210, 100 + i) for i in range(10)])[:, None])).numpy()
    head = RidgeHead(train.shape[1])
    head.add(train, ["dark"] * 10 + ["bright"] * 10)
    head.solve()
    return export_model(extractor, spec.input_spec(), head), head.to_bytes()
