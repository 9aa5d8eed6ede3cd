"""A 1,000-class image set that needs no download: CJK characters drawn like photographed signs.

No photo set with a thousand classes is available offline, so the scale benchmark renders one: each class is one
Chinese character from a Debian font package (``apt-get install fonts-wqy-zenhei``), and each image draws it at a
random size, angle and place, in a random colour on a random textured background (noise, stripes or a gradient),
sometimes blurred, as a JPEG of 64-96 px. Characters that render identically (or not at all) are skipped, so every
class is genuinely distinct. Seeded: the same arguments give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_PATHS = (Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
              Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"))
FIRST, LAST = 0x4E00, 0x9FA5  # CJK Unified Ideographs: the common block


def font_path() -> Path:
    for path in FONT_PATHS:
        if path.exists():
            return path
    raise SystemExit("No CJK font found: apt-get install fonts-wqy-zenhei (or fonts-noto-cjk)")


def characters(count: int, path: Path) -> list[str]:
    """``count`` distinct characters spread over the block: each renders to a non-empty, unique bitmap."""
    font = ImageFont.truetype(str(path), 32)
    chosen: list[str] = []
    seen: set[bytes] = set()
    step = max(1, (LAST - FIRST) // (count * 3))
    for code in range(FIRST, LAST, step):
        image = Image.new("L", (40, 40), 0)
        ImageDraw.Draw(image).text((4, 0), chr(code), fill=255, font=font)
        bitmap = image.tobytes()
        if max(bitmap) == 0 or bitmap in seen:
            continue
        seen.add(bitmap)
        chosen.append(chr(code))
        if len(chosen) == count:
            return chosen
    raise SystemExit(f"the font has only {len(chosen)} distinct characters in the block")


def _background(rng: np.random.Generator, side: int) -> Image.Image:
    base = rng.integers(0, 256, 3)
    kind = rng.integers(3)
    if kind == 0:  # noise
        pixels = base + rng.normal(0, rng.uniform(8, 40), (side, side, 3))
    elif kind == 1:  # stripes at an angle
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
        yy, xx = np.mgrid[:side, :side]
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        pixels = base + wave[..., None] * rng.uniform(10, 50, 3)
    else:  # a gradient between two colours
        other = rng.integers(0, 256, 3)
        t = np.linspace(0, 1, side)[:, None, None] * np.ones((side, side, 1))
        pixels = base * (1 - t) + other * t
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def render(char: str, seed: int, path: str) -> bytes:
    """One image of ``char`` as JPEG bytes."""
    rng = np.random.default_rng(seed)
    side = int(rng.integers(64, 97))
    image = _background(rng, side)
    size = int(side * rng.uniform(0.45, 0.8))
    font = ImageFont.truetype(path, size)
    ink = Image.new("L", (side, side), 0)
    offset = rng.uniform(-0.12, 0.12, 2) * side
    ImageDraw.Draw(ink).text((side / 2 + offset[0], side / 2 + offset[1]), char, fill=255, font=font, anchor="mm")
    ink = ink.rotate(float(rng.uniform(-25, 25)), resample=Image.BILINEAR)
    background = np.asarray(image, dtype=np.float64).mean(axis=(0, 1))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    if np.abs(np.array(colour) - background).sum() < 150:  # keep the character visible
        colour = tuple(int(255 - c) for c in background)
    image.paste(Image.new("RGB", (side, side), colour), (0, 0), ink)
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(75, 96)))
    return buffer.getvalue()


def _class_images(job: tuple[int, str, int, int, str]) -> list[tuple[str, bytes]]:
    index, char, per_class, seed, path = job
    return [(f"{i:03d}.jpg", render(char, seed * 1_000_003 + index * 1_009 + i, path)) for i in range(per_class)]


def class_name(char: str) -> str:
    return f"glyph-{ord(char):04x}"


def generate(classes: int, per_class: int, seed: int = 0) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """(class name, [(file name, JPEG bytes)]) per class, rendered on every core."""
    path = font_path()
    chars = characters(classes, path)
    jobs = [(i, c, per_class, seed, str(path)) for i, c in enumerate(chars)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for char, images in zip(chars, pool.map(_class_images, jobs, chunksize=8), strict=True):
            yield class_name(char), images


def write_zip(target: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """The set as a zip with one folder per class (made once; the file name says its size and seed)."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
        for name, images in generate(classes, per_class, seed):
            for file_name, data in images:
                archive.writestr(f"{name}/{file_name}", data)
    partial.rename(target)
    return target


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
