"""Plain-data description of a training set, and cached decoding of its pixels.

The search never sees the database or the blob store: the job wrapper hands it a
:class:`TrainingSet` (image keys = content sha256, labels, splits) and an
:class:`ImageSource` that turns a key into bytes (or an already decoded PIL image).
Everything that crosses a process boundary is therefore ids and strings.

Decoding goes through :func:`pigeonhole.storage.images.decode_for_model` (JPEG draft
mode, integer box reduction, the same validation as uploads), then the geometry policy
of :mod:`pigeonhole.learn.preprocess`. The resulting uint8 pixels are cached in the
feature cache under the key (sha256, ``pixels-<color>``, size, policy), so a second
candidate at the same resolution, a retried job or a later class addition never
decodes an image twice.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from pigeonhole.learn.features import FeatureCache, FeatureKey
from pigeonhole.learn.preprocess import CROP_FRACTION, Color, CropPolicy, resize_and_crop, to_color
from pigeonhole.machine import memory_bytes
from pigeonhole.storage.images import decode_for_model

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class TrainingImage:
    """One labelled image. ``key`` is the sha256 of the original file's bytes."""

    key: str
    label: str
    split: Split = "train"
    size_bytes: int = 0


@dataclass(frozen=True)
class TrainingSet:
    """Images and the class list (the head's output order)."""

    images: tuple[TrainingImage, ...]
    classes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        images = tuple(self.images)
        object.__setattr__(self, "images", images)
        if not self.classes:
            object.__setattr__(self, "classes", tuple(sorted({i.label for i in images})))
        known = set(self.classes)
        unknown = sorted({i.label for i in images} - known)
        if unknown:
            raise ValueError(f"images carry labels that are not classes: {unknown[:5]}")
        bad = sorted({i.split for i in images} - set(SPLITS))
        if bad:
            raise ValueError(f"unknown split(s) {bad}; expected one of {SPLITS}")

    def split(self, name: Split) -> list[TrainingImage]:
        return [i for i in self.images if i.split == name]

    def fingerprint(self) -> str:
        """Stable id of the exact data (keys, labels, splits): names checkpoints and memory rows."""
        digest = hashlib.sha256()
        for img in sorted(self.images, key=lambda i: (i.key, i.label, i.split)):
            digest.update(f"{img.key}|{img.label}|{img.split}\n".encode())
        digest.update("|".join(self.classes).encode())
        return digest.hexdigest()

    def with_validation(self, fraction: float = 0.2, *, seed: int = 0, min_per_class: int = 1) -> TrainingSet:
        """Carve a stratified, seeded validation split out of train when none was given.

        Classes with a single training image keep it in train (a class must be learnable).
        """
        if self.split("val"):
            return self
        by_class: dict[str, list[TrainingImage]] = {}
        for img in self.images:
            if img.split == "train":
                by_class.setdefault(img.label, []).append(img)
        moved: set[int] = set()
        for label, items in sorted(by_class.items()):
            order = sorted(items, key=lambda i: i.key)
            random.Random(f"{seed}-{label}").shuffle(order)
            n_val = max(min_per_class, round(len(order) * fraction)) if len(order) >= 2 else 0
            n_val = min(n_val, len(order) - 1)
            moved.update(id(i) for i in order[:n_val])
        images = tuple(replace(i, split="val") if id(i) in moved else i for i in self.images)
        return TrainingSet(images, self.classes)


@runtime_checkable
class ImageSource(Protocol):
    """Where image bytes come from (the blob store, a zip, memory). Keys are sha256."""

    def open(self, key: str) -> bytes | Image.Image: ...


class MappingSource:
    """An :class:`ImageSource` over a dict or a callable (tests, benchmarks, wrappers)."""

    def __init__(self, items: Mapping[str, bytes | Image.Image] | Callable[[str], bytes | Image.Image]) -> None:
        self._get = items.__getitem__ if isinstance(items, Mapping) else items

    def open(self, key: str) -> bytes | Image.Image:
        return self._get(key)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_pixels(data: bytes | Image.Image, size: int, color: Color, policy: CropPolicy | str) -> np.ndarray:
    """One image -> uint8 (C, size, size) with the given geometry policy.

    Besides the serving policies, ``square`` (shorter side to ``size``, centre square) is
    what training augmentation crops from: a crop of 0.875 of it is the ``center_crop``
    view at ``round(size * 0.875)``, so training and serving see the same geometry.
    """
    need = round(size / CROP_FRACTION) if policy == "center_crop" else size
    img = data if isinstance(data, Image.Image) else decode_for_model(data, need).image
    img = to_color(img, color)
    if policy == "square":
        w, h = img.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    else:
        img = resize_and_crop(img, size, policy)  # type: ignore[arg-type]
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None, :, :] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def default_memo_bytes() -> int:
    """A quarter of this machine's memory, at most 8 GiB: what decoded pixels may hold in a job's process."""
    return int(min(8 << 30, memory_bytes() // 4))


class PixelStore:
    """Decoded pixels per (image, size, colour, policy), cached on disk and in memory.

    ``threads`` decoders run in parallel (Pillow releases the GIL while decoding).
    An in-process memo keeps each geometry's arrays, so consecutive candidates at one
    resolution do not even touch SQLite, up to ``memo_bytes``: beyond it the geometries
    used least recently are dropped (the disk cache keeps them). A search visits five or six
    geometries; unbounded, 50,000 photos would have held about 20 GB of pixels.
    """

    def __init__(
        self, source: ImageSource, cache: FeatureCache | None = None, *, threads: int = 2,
        memo_bytes: int | None = None,
    ) -> None:
        self.source = source
        self.cache = cache
        self.threads = max(1, threads)
        self.decoded = 0  # images actually decoded (tests check the cache works)
        self.memo_bytes = default_memo_bytes() if memo_bytes is None else memo_bytes
        self._memo: OrderedDict[tuple[int, str, str], dict[str, np.ndarray]] = OrderedDict()
        self._held: dict[tuple[int, str, str], int] = {}  # bytes per geometry

    def _key(self, sha: str, size: int, color: Color, policy: str) -> FeatureKey:
        return FeatureKey(sha, f"pixels-{color}", size, policy)

    def get(
        self,
        keys: Sequence[str],
        size: int,
        *,
        color: Color = "RGB",
        policy: CropPolicy | str = "center_crop",
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """uint8 (N, C, size, size) in the order of ``keys`` (duplicates decoded once)."""
        channels = 1 if color == "L" else 3
        geometry = (size, color, str(policy))
        memo = self._memo.setdefault(geometry, {})
        self._memo.move_to_end(geometry)
        held = len(memo)
        wanted = [k for k in dict.fromkeys(keys) if k not in memo]
        if wanted and self.cache is not None:
            fkeys = [self._key(k, size, color, policy) for k in wanted]
            for fk, vec in self.cache.get_many(fkeys).items():
                memo[fk.image_sha256] = vec.reshape(channels, size, size)
            wanted = [k for k in wanted if k not in memo]
        if wanted:
            chunk = 256
            with ThreadPoolExecutor(self.threads) as pool:
                for start in range(0, len(wanted), chunk):
                    if should_stop is not None and should_stop():
                        raise InterruptedError("stopped while decoding images")
                    part = wanted[start : start + chunk]
                    arrays = list(
                        pool.map(lambda k: decode_pixels(self.source.open(k), size, color, policy), part)
                    )
                    self.decoded += len(part)
                    for k, arr in zip(part, arrays, strict=True):
                        memo[k] = arr
                    if self.cache is not None:
                        fresh = zip(part, arrays, strict=True)
                        self.cache.put_many((self._key(k, size, color, policy), a) for k, a in fresh)
        out = np.empty((len(keys), channels, size, size), dtype=np.uint8)
        for i, k in enumerate(keys):
            out[i] = memo[k]
        self._held[geometry] = self._held.get(geometry, 0) + (len(memo) - held) * channels * size * size
        self._trim()
        return out

    def _trim(self) -> None:
        """Drop the geometries used least recently (the current one last) until the memo fits its budget."""
        while self._memo and sum(self._held.values()) > self.memo_bytes:
            geometry = next(iter(self._memo))
            del self._memo[geometry]
            self._held.pop(geometry, None)

    def in_memory(self, keys: Sequence[str], size: int, *, color: Color = "RGB",
                  policy: CropPolicy | str = "center_crop") -> int:
        """How many of ``keys`` are held decoded in memory at this geometry (fetching them is free)."""
        memo = self._memo.get((size, color, str(policy)), {})
        return sum(1 for k in keys if k in memo)

    def forget(self) -> None:
        """Drop the in-memory copies (the disk cache stays)."""
        self._memo.clear()
        self._held.clear()
