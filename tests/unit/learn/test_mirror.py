"""The mirror check: whether mirroring an image changes its class, measured on real images."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pigeonhole.learn.data import decode_pixels
from pigeonhole.learn.mirror import SIDE, check_mirror


def _digits(mnist, n: int) -> tuple[np.ndarray, list[str]]:
    images, labels = mnist
    pixels = np.stack([np.asarray(Image.fromarray(img).resize((SIDE, SIDE), Image.Resampling.BILINEAR))
                       for img in images[:n]])[:, None]
    return pixels, [str(label) for label in labels[:n]]


def test_mirrored_digits_are_other_glyphs(mnist) -> None:
    pixels, labels = _digits(mnist, 400)
    check = check_mirror(pixels, labels)
    assert check.changes_class, check
    assert check.images == 400 and check.accuracy > 0.7 and check.mirrored_accuracy < check.accuracy - 0.25
    assert check.lost > 5 * check.gained


def test_mirrored_photos_show_the_same_thing(flowers) -> None:
    items = flowers.train + flowers.val
    pixels = np.stack([decode_pixels(raw, SIDE, "RGB", "resize") for raw, _ in items])
    check = check_mirror(pixels, [label for _, label in items])
    assert not check.changes_class, check
    assert check.images == len(items) and abs(check.z) < 3


def test_a_head_that_knows_nothing_changes_nothing(mnist) -> None:
    """Labels unrelated to the images: no margin over guessing, so no verdict against mirroring."""
    pixels, _ = _digits(mnist, 200)
    labels = [str(i % 3) for i in np.random.default_rng(0).permutation(200)]
    assert not check_mirror(pixels, labels).changes_class
