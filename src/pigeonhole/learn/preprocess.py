"""Image -> extractor input, split so that exported models take raw pixels.

The split is deliberate: geometry (decode, orientation, colour mode, resize, crop)
happens in Python with Pillow and yields **uint8 NCHW** pixels; the arithmetic
(``x / 255``, ``(x - mean) / std``) lives inside the network as :class:`Normalize`,
so it is part of the exported ONNX graph. A client of an exported model therefore
sends plain pixels described by :class:`InputSpec`::

    {"height": 224, "width": 224, "layout": "NCHW", "dtype": "uint8",
     "color": "RGB", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

where ``mean``/``std`` are informative (already applied in the graph) when dtype is
uint8, and must be applied by the client (on ``pixel / 255``) when dtype is float32.

Geometry policies (the cache key includes the policy, since they give different pixels):

- ``center_crop``: resize the shorter side to ``round(size / 0.875)`` (256 for 224, the
  ImageNet convention the pretrained weights expect), then crop the centre square.
- ``resize``: resize the whole image to ``size x size``, ignoring aspect ratio; keeps
  the full frame, the right choice for small images such as 28x28 digits.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

CropPolicy = Literal["center_crop", "resize"]
Color = Literal["RGB", "L"]
CROP_FRACTION = 0.875
CROP_POLICIES: tuple[str, ...] = ("center_crop", "resize")


@dataclass(frozen=True)
class InputSpec:
    """What an exported extractor/model takes; ``as_dict`` is the API's ``input`` field."""

    height: int
    width: int
    color: Color
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: Literal["uint8", "float32"] = "uint8"
    layout: Literal["NCHW"] = "NCHW"
    crop: CropPolicy = "center_crop"

    @property
    def channels(self) -> int:
        return 3 if self.color == "RGB" else 1

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        return out


def open_image(data: bytes | Image.Image, *, draft_size: int | None = None) -> Image.Image:
    """Decode and apply EXIF orientation (phone photos are stored rotated).

    ``draft_size`` lets JPEG decode at a reduced DCT scale that is still at least that
    large: decoding a 12 MP photo only to shrink it to 256 px wastes most of the time.
    """
    img = Image.open(io.BytesIO(data)) if isinstance(data, bytes | bytearray | memoryview) else data
    if draft_size is not None and img.format == "JPEG":
        img.draft(None, (draft_size, draft_size))  # keeps the mode; both sides stay >= draft_size
    img.load()
    return ImageOps.exif_transpose(img) or img


def to_color(img: Image.Image, color: Color) -> Image.Image:
    """Convert any mode; transparent pixels become white rather than PIL's black."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode == "I;16" or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() or 1.0
        img = Image.fromarray((arr * (255.0 / peak)).astype(np.uint8), mode="L")
    return img.convert(color) if img.mode != color else img


def resize_and_crop(img: Image.Image, size: int, policy: CropPolicy) -> Image.Image:
    if policy == "resize":
        return img.resize((size, size), Image.Resampling.BILINEAR)
    if policy != "center_crop":
        raise ValueError(f"unknown crop policy {policy!r}; expected one of {CROP_POLICIES}")
    short = round(size / CROP_FRACTION)
    w, h = img.size
    scale = short / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def image_to_pixels(
    data: bytes | Image.Image, size: int, *, color: Color = "RGB", policy: CropPolicy = "center_crop"
) -> np.ndarray:
    """One image -> uint8 array (C, H, W), ready to stack into an NCHW batch."""
    draft = round(size / CROP_FRACTION) if policy == "center_crop" else size
    img = resize_and_crop(to_color(open_image(data, draft_size=draft), color), size, policy)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None, :, :] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def images_to_batch(
    images: Sequence[bytes | Image.Image], size: int, *, color: Color = "RGB", policy: CropPolicy = "center_crop"
) -> np.ndarray:
    """uint8 (N, C, H, W) batch; decoding is per image, everything after is vectorised."""
    channels = 3 if color == "RGB" else 1
    out = np.empty((len(images), channels, size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = image_to_pixels(image, size, color=color, policy=policy)
    return out


def normalize_batch(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NCHW -> float32 NCHW, what :class:`Normalize` computes in-graph (to float rounding).

    For clients that feed a float32 model, and for checking the graph against numpy.
    """
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return (pixels.astype(np.float32) / np.float32(255.0) - m) / s


class Normalize(nn.Module):
    """In-graph ``(x / 255 - mean) / std`` so exported models accept uint8 pixels.

    Written as one multiply-add (``x * scale + shift``) with constants folded at
    construction: the ONNX graph stays two ops after the cast.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        m = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * s))
        self.register_buffer("shift", -m / s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32) * self.scale + self.shift
