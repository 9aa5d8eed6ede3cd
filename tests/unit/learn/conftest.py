"""Shared fixtures for the ML core tests: real weights and real images, kept small.

Data comes from the shared read-only folders (never copied into the repo):
``PIGEONHOLE_WEIGHTS_DIR`` (default ``<repo>/../shared/weights``) and
``PIGEONHOLE_DATASETS_DIR`` (default ``<repo>/../shared/datasets``). Tests that need
them skip with the path they looked at when they are absent.
"""

from __future__ import annotations

import gzip
import os
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
FLOWERS = ("daisy", "dandelion", "rose", "sunflower", "tulip")


def digit_set(images: np.ndarray, labels: np.ndarray, split_of: Callable[[int], str]):
    """MNIST digits as PNG files of a training set (split of the i-th digit: ``split_of(i)``), as uploaded."""
    import io

    from PIL import Image

    from pigeonhole.learn.data import MappingSource, TrainingImage, TrainingSet, sha256_bytes

    blobs: dict[str, bytes] = {}
    items: list[TrainingImage] = []
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, "PNG")
        key = sha256_bytes(buf.getvalue())
        blobs[key] = buf.getvalue()
        items.append(TrainingImage(key, str(label), split_of(i), len(buf.getvalue())))
    return TrainingSet(tuple(items)), MappingSource(blobs)


def weights_dir() -> Path:
    return Path(os.environ.get("PIGEONHOLE_WEIGHTS_DIR") or REPO_ROOT.parent / "shared" / "weights")


def datasets_dir() -> Path:
    return Path(os.environ.get("PIGEONHOLE_DATASETS_DIR") or REPO_ROOT.parent / "shared" / "datasets")


def read_class_zip(path: Path, per_class: int, *, skip: int = 0, seed: int = 0) -> list[tuple[bytes, str]]:
    """``per_class`` images per class folder of a zip, a seeded sample; ``skip`` offsets
    into the same shuffled order so train and validation samples never overlap."""
    with zipfile.ZipFile(path) as zf:
        by_class: dict[str, list[str]] = {}
        for name in sorted(zf.namelist()):
            if not name.endswith("/") and "/" in name:
                by_class.setdefault(name.split("/")[0], []).append(name)
        out: list[tuple[bytes, str]] = []
        for label, names in sorted(by_class.items()):
            random.Random(f"{seed}-{label}").shuffle(names)
            out += [(zf.read(n), label) for n in names[skip : skip + per_class]]
    return out


def read_mnist(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """First ``n`` digits of an MNIST split as uint8 (n, 28, 28) images and int labels."""
    prefix = "train" if split == "train" else "t10k"
    root = datasets_dir() / "mnist"
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "rb") as fh:
        header = np.frombuffer(fh.read(16), dtype=">u4")
        assert header[0] == 2051, "not an IDX image file"
        rows, cols = int(header[2]), int(header[3])
        images = np.frombuffer(fh.read(n * rows * cols), dtype=np.uint8).reshape(n, rows, cols).copy()
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "rb") as fh:
        assert np.frombuffer(fh.read(8), dtype=">u4")[0] == 2049, "not an IDX label file"
        labels = np.frombuffer(fh.read(n), dtype=np.uint8).astype(np.int64)
    return images, labels


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    path = weights_dir()
    if not (path / "weights.json").is_file():
        pytest.skip(f"shared weights not found at {path} (set PIGEONHOLE_WEIGHTS_DIR)")
    return path


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    path = datasets_dir()
    if not (path / "flowers5" / "train.zip").is_file():
        pytest.skip(f"shared datasets not found at {path} (set PIGEONHOLE_DATASETS_DIR)")
    return path


@dataclass(frozen=True)
class FlowerSplits:
    train: list[tuple[bytes, str]]
    val: list[tuple[bytes, str]]
    test: list[tuple[bytes, str]]


@pytest.fixture(scope="session")
def flowers(shared_datasets: Path) -> FlowerSplits:
    """30 train + 20 validation (from train.zip) and 20 test images per class."""
    root = shared_datasets / "flowers5"
    return FlowerSplits(
        train=read_class_zip(root / "train.zip", 30),
        val=read_class_zip(root / "train.zip", 20, skip=30),
        test=read_class_zip(root / "test.zip", 20),
    )


@pytest.fixture(scope="session")
def mnist(shared_datasets: Path) -> tuple[np.ndarray, np.ndarray]:
    return read_mnist("train", 600)


@pytest.fixture(scope="session")
def catalog(shared_weights: Path):
    from pigeonhole.learn.weights import WeightsCatalog

    return WeightsCatalog(shared_weights)


@pytest.fixture(scope="session")
def mobilenet_onnx(catalog):
    from pigeonhole.learn.backbones import get_spec
    from pigeonhole.learn.features import pretrained_onnx_extractor

    return pretrained_onnx_extractor(get_spec("mobilenet_v2"), catalog)


@pytest.fixture(scope="session")
def flower_features(flowers: FlowerSplits, mobilenet_onnx) -> dict[str, tuple[np.ndarray, list[str]]]:
    """mobilenet_v2 features of every flowers split, extracted once per test session."""
    from pigeonhole.learn.features import ImageItem, compute_features

    out = {}
    for split in ("train", "val", "test"):
        data = getattr(flowers, split)
        items = [ImageItem.from_bytes(b) for b, _ in data]
        out[split] = (compute_features(items, mobilenet_onnx), [label for _, label in data])
    return out
