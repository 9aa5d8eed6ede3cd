"""What every part of one search shares: the labelled set and its splits, the pixel and feature caches, the
weights catalog, the budget, the reporter, and the best candidate so far."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pigeonhole.learn.backbones import register_catalog
from pigeonhole.learn.budget import Budget, Costs
from pigeonhole.learn.candidates import CandidateConfig
from pigeonhole.learn.clock import Clock
from pigeonhole.learn.data import ImageSource, PixelStore, TrainingImage, TrainingSet
from pigeonhole.learn.features import node_feature_cache
from pigeonhole.learn.mirror import SIDE as MIRROR_SIDE
from pigeonhole.learn.mirror import MirrorCheck, check_mirror
from pigeonhole.learn.search_types import Reporter, Scored, SearchConfig
from pigeonhole.learn.weights import WeightsCatalog

MIRROR_CHECK_IMAGES = 1500  # the mirror check (learn.mirror) looks at up to this many training + validation images
MIRROR_CHECK_FOLDS = 4
SPLITS = ("train", "val", "test")


class SearchContext:
    def __init__(self, ts: TrainingSet, source: ImageSource, config: SearchConfig, reporter: Reporter,
                 clock: Clock, costs: Costs) -> None:
        self.config = config
        self.reporter = reporter
        self.ts = carve_validation(ts, config.val_fraction, config.max_val_per_class, config.seed)
        self.classes = list(self.ts.classes)
        self.index = {c: i for i, c in enumerate(self.classes)}
        self.splits = {s: self.ts.split(s) for s in SPLITS}
        if not self.splits["train"] or not self.splits["val"]:
            raise ValueError("need training and validation images (at least two images in some class)")
        missing = [c for c in self.classes if not any(i.label == c for i in self.splits["train"])]
        if missing:
            raise ValueError(f"classes without training images: {missing[:5]}")
        if len(self.classes) < 2:
            raise ValueError("need at least two classes")
        self.catalog = WeightsCatalog(config.weights_dir, builtin=config.builtin_weights)
        register_catalog(self.catalog)
        self.notes: list[str] = []  # plain sentences for the user about how this model was built (card, job)
        self.frozen_done: set[tuple[str, int, str]] = set()  # (extractor, size, crop) whose features are all cached
        self.cache = (
            node_feature_cache(config.cache_dir, config.cache_bytes) if config.cache_dir else None
        )
        self.source = source
        self.pixels = PixelStore(source, self.cache, threads=config.threads)
        self.output_dir = Path(config.output_dir) if config.output_dir else None
        self.job = config.job_id or hashlib.sha256(f"{self.ts.fingerprint()}|{config.seed}".encode()).hexdigest()[:16]
        self.budget = Budget(config.time_budget_s, clock, costs, {s: len(v) for s, v in self.splits.items()},
                             flip_views=config.preference != "fast", decoded=self.decoded)
        self.current: Scored | None = None  # the candidate being served
        self.stage = "Starting"
        self.median_side = 224.0
        self.grey = False
        self.mirror: MirrorCheck | None = None

    # ------------------------------------------------------------------ time and progress
    def cancelled(self) -> bool:
        return self.reporter.cancelled()

    def should_stop(self) -> bool:
        # Until a first model exists only a cancel stops the work: a slow machine may overrun a tiny
        # budget, but the user always gets a model (the anytime promise).
        if self.reporter.cancelled():
            return True
        return self.current is not None and self.budget.remaining() < 0

    def progress(self, stage: str, metrics: dict[str, Any] | None = None, fraction: float | None = None) -> None:
        self.stage = stage
        frac = min(1.0, self.budget.elapsed() / self.config.time_budget_s) if fraction is None else fraction
        best = self.current.val_accuracy if self.current else None
        self.reporter.progress(
            frac, stage, max(0.0, self.budget.remaining()), {"best_val_accuracy": best, **(metrics or {})}
        )

    # ------------------------------------------------------------------ data
    def keys(self, split: str) -> list[str]:
        return [i.key for i in self.splits[split]]

    def labels(self, split: str) -> list[str]:
        return [i.label for i in self.splits[split]]

    def y(self, split: str) -> np.ndarray:
        return np.array([self.index[i.label] for i in self.splits[split]], dtype=np.int64)

    def pixel_fn(self, config: CandidateConfig) -> Callable[[Sequence[str]], np.ndarray]:
        spec = config.spec
        return lambda keys: self.pixels.get(
            keys, config.size, color=spec.color, policy=config.crop, should_stop=self.should_stop
        )

    def decoded(self, config: CandidateConfig) -> int:
        """How many images of every split have their pixels in memory at ``config``'s view."""
        everything = [k for split in SPLITS for k in self.keys(split)]
        return self.pixels.in_memory(everything, config.size, color=config.color, policy=config.crop)

    def mirror_changes_class(self) -> bool:
        """Whether mirroring an image changes what it shows in this set (digits, text, arrows: see
        :mod:`pigeonhole.learn.mirror`). Measured once, when a recipe first wants to mirror images; where it
        does, nothing is mirrored: no flip in training, no mirrored-view candidates."""
        if self.mirror is None:
            self.progress("Checking whether a mirrored image still shows the same thing")
            images = self.splits["train"] + self.splits["val"]
            order = np.random.default_rng(self.config.seed).permutation(len(images))[:MIRROR_CHECK_IMAGES]
            sample = [images[i] for i in np.sort(order)]
            pixels = self.pixels.get([i.key for i in sample], MIRROR_SIDE, color="L" if self.grey else "RGB",
                                     policy="resize", should_stop=self.should_stop)
            self.mirror = check_mirror(pixels, [i.label for i in sample], folds=MIRROR_CHECK_FOLDS,
                                       seed=self.config.seed)
        return self.mirror.changes_class


def carve_validation(ts: TrainingSet, fraction: float, cap: int, seed: int) -> TrainingSet:
    """A set without validation images gets ``fraction`` of each class's training images (at most ``cap``)."""
    if ts.split("val"):
        return ts
    by_class: dict[str, list[TrainingImage]] = {}
    for img in ts.split("train"):
        by_class.setdefault(img.label, []).append(img)
    val_keys: set[tuple[str, str]] = set()
    for label, items in sorted(by_class.items()):
        order = sorted(items, key=lambda i: i.key)
        random.Random(f"{seed}-{label}").shuffle(order)
        n = min(cap, max(1, round(len(order) * fraction))) if len(order) >= 2 else 0
        n = min(n, len(order) - 1)
        val_keys.update((i.key, i.label) for i in order[:n])
    images = tuple(
        replace(i, split="val") if i.split == "train" and (i.key, i.label) in val_keys else i for i in ts.images
    )
    return TrainingSet(images, ts.classes)


_FRIENDLY = {"mobilenet_v2": "MobileNetV2", "squeezenet1_0": "SqueezeNet", "efficientnet_lite0": "EfficientNet-Lite0",
             "efficientnet_lite1": "EfficientNet-Lite1", "efficientnet_lite2": "EfficientNet-Lite2",
             "dinov2_vits14": "DINOv2", "convnext_tiny": "ConvNeXt-Tiny", "efficientnet_v2_s": "EfficientNetV2-S",
             "mobilenet_v3_large": "MobileNetV3-Large", "pixels_l": "raw pixels",
             "pixels_rgb": "raw pixels", "smallcnn_l": "a small network", "smallcnn_rgb": "a small network"}


def plain_name(config: CandidateConfig) -> str:
    """A candidate as the progress line names it for a user."""
    name = _FRIENDLY.get(config.extractor, config.extractor)
    if config.partner:
        name += f" and {_FRIENDLY.get(config.partner, config.partner)} together"
    extra = " with mirrored views" if config.flip_tta else ""
    return f"{name} at {config.size} px{extra}"
