"""Reading the shared benchmark datasets (never copied into the project)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATASETS = SHARED / "datasets"
WEIGHTS = SHARED / "weights"


def shrink(data: bytes, side: int) -> bytes:
    """The image as a ``side`` x ``side`` PNG: a stand-in for small colour sets (CIFAR-like) built from photos."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize((side, side), Image.BILINEAR, reducing_gap=2.0).save(buf, "PNG")
    return buf.getvalue()


def zip_images(path: Path, per_class: int | None = None) -> dict[str, list[tuple[str, bytes]]]:
    """class -> [(file name, bytes)] from a zip with one folder per class (a nested top folder is fine)."""
    out: dict[str, list[tuple[str, bytes]]] = {}
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            parts = [p for p in name.split("/") if p]
            if name.endswith("/") or len(parts) < 2 or parts[-1].startswith("."):
                continue
            label = parts[-2]
            if per_class is not None and len(out.get(label, [])) >= per_class:
                continue
            out.setdefault(label, []).append((parts[-1], archive.read(name)))
    return out


def write_folder(images: dict[str, list[tuple[str, bytes]]], root: Path) -> Path:
    for label, files in images.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for name, data in files:
            (root / label / name).write_bytes(data)
    return root


def mnist(split: str, limit: int | None = None) -> dict[str, list[tuple[str, bytes]]]:
    """MNIST digits as PNG files per class ("0" … "9"), from the shared IDX files."""
    import gzip
    import io

    import numpy as np
    from PIL import Image

    prefix = "train" if split == "train" else "t10k"
    with gzip.open(DATASETS / "mnist" / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(DATASETS / "mnist" / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    out: dict[str, list[tuple[str, bytes]]] = {}
    for i, (pixels, label) in enumerate(zip(images[:limit], labels[:limit], strict=True)):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        out.setdefault(str(label), []).append((f"{i:05d}.png", buffer.getvalue()))
    return out
