"""Preprocessing: geometry policies, colour handling, in-graph normalisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pigeonhole.learn.preprocess import (
    InputSpec,
    Normalize,
    image_to_pixels,
    images_to_batch,
    normalize_batch,
)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_center_crop_keeps_the_middle() -> None:
    # 300x100 image: left third red, middle green, right blue -> centre crop is green
    arr = np.zeros((100, 300, 3), dtype=np.uint8)
    arr[:, :100, 0] = arr[:, 100:200, 1] = arr[:, 200:, 2] = 255
    px = image_to_pixels(_png(Image.fromarray(arr)), 64, policy="center_crop")
    assert px.shape == (3, 64, 64) and px.dtype == np.uint8
    assert px[1].mean() > 250 and px[0].mean() < 5 and px[2].mean() < 5
    full = image_to_pixels(_png(Image.fromarray(arr)), 63, policy="resize")
    assert full[0, :, :15].mean() > 250 and full[2, :, -15:].mean() > 250


def test_grey_and_transparency() -> None:
    rgba = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    px = image_to_pixels(_png(rgba), 28, color="L", policy="resize")
    assert px.shape == (1, 28, 28) and px.min() == 255  # transparent -> white, not black


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (60, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    from pigeonhole.learn.preprocess import open_image

    assert open_image(buf.getvalue()).size == (20, 60)


def test_real_jpegs_batch(flowers) -> None:
    batch = images_to_batch([b for b, _ in flowers.train[:5]], 160)
    assert batch.shape == (5, 3, 160, 160) and batch.dtype == np.uint8
    assert batch.std() > 10


def test_normalize_module_matches_numpy() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    expected = normalize_batch(pixels, mean, std)
    got = Normalize(mean, std)(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_input_spec_dict_is_the_api_shape() -> None:
    spec = InputSpec(height=224, width=224, color="RGB", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    d = spec.as_dict()
    assert d["layout"] == "NCHW" and d["dtype"] == "uint8" and d["mean"] == [0.5, 0.5, 0.5]
    assert {"height", "width", "layout", "dtype", "color", "mean", "std"} <= set(d)


def test_unknown_policy_rejected() -> None:
    with pytest.raises(ValueError, match="crop policy"):
        image_to_pixels(_png(Image.new("RGB", (10, 10))), 8, policy="squash")  # type: ignore[arg-type]
