"""Automatic model building: an anytime search from a labelled set to a served model.

Entry point: :func:`run_search` (plain data in, files and plain data out; no database).

Order of work (cheapest first, so a usable model exists within seconds):

1. **Probe**: the cheapest candidate for the data (MobileNetV2 features at 160 px + a
   ridge head for photos; a ridge head on raw pixels with random features for tiny
   images). It is reported through ``reporter.candidate_ready`` at once.
2. **Remembered winners**: configurations that won on the most similar past datasets
   (see :mod:`pigeonhole.learn.memory`).
3. **Generic ladder**: larger resolution, another extractor family, flip test-time
   augmentation; then fine-tuning the best pretrained extractor from a linear probe (its features are
   concatenated with the frozen ones: a cheap ensemble in one graph), or a small CNN
   from scratch for small/grey images.
4. **Hyper-parameter search** (optional ``tuner``, e.g. Ray Tune + ASHA) over what is
   left of the budget, only when a target was given and is still not met.

Every candidate is scored on the validation split. A candidate that becomes the
selection (see :func:`select`) is finished: head refit on train+val, one ONNX file,
test metrics measured *on that ONNX file*, a card; then reported. Stops when the target
is met (unless ``preference="accurate"``), the budget is spent (checked within one
training batch or one inference batch; final work is reserved up front), the ladder
is exhausted or has plateaued, or ``reporter.cancelled()``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from PIL import Image

from pigeonhole.learn.artifacts import make_card, measure_speed, run_model, split_metrics, write_artifacts
from pigeonhole.learn.backbones import (
    ExtractorSpec,
    available_specs,
    build_architecture,
    build_extractor,
    get_spec,
    register_catalog,
    resolve_weights,
    unavailable_reason,
)
from pigeonhole.learn.candidates import (
    BuiltExtractor,
    CandidateConfig,
    TrainParams,
    build_stack,
    extract_features,
    extractor_classes,
    member_key,
)
from pigeonhole.learn.data import ImageSource, PixelStore, TrainingImage, TrainingSet
from pigeonhole.learn.features import FeatureCache
from pigeonhole.learn.head import HeadConfig, RidgeHead
from pigeonhole.learn.memory import CandidateRecord, DatasetTraits, ModelMemory, SearchRecord, compute_traits
from pigeonhole.learn.mirror import SIDE as MIRROR_SIDE
from pigeonhole.learn.mirror import MirrorCheck, check_mirror
from pigeonhole.learn.neighbours import NeighbourIndex
from pigeonhole.learn.preprocess import CROP_FRACTION
from pigeonhole.learn.train import choose_precision, measure_step_seconds, quantize_epochs, train_extractor
from pigeonhole.learn.unknown import choose_unknown
from pigeonhole.learn.weights import WeightsCatalog

Preference = Literal["fast", "balanced", "accurate"]
# Accuracy a candidate may give up for being cheaper, per preference (validation accuracy).
TOLERANCE: dict[str, float] = {"fast": 0.02, "balanced": 0.005, "accurate": 0.0}
FINETUNE_SIZES = (224, 192, 160, 128, 112, 96)  # tried largest first for fine-tuning
FINETUNE_MIN_ROUNDS = 8  # rounds of fine-tuning a resolution must leave time for
SMALL_SIDE = 48  # images at most this small (median shorter side) take the small-image route
PROBE_PER_CLASS = 60  # the anytime probe of a large set trains its head on this many images per class
PIXEL_PROBE_PER_CLASS = 300  # raw-pixel probes of large sets: the random-feature head grows with rows
OPTIONAL_SHARE = 0.08  # optional frozen candidates may take at most this share of the budget
# Below this many validation images, frozen candidates are scored by leaving each training and validation
# image out in turn (exact for a ridge head, one eigendecomposition): a few dozen images cannot tell alphas
# or candidates apart, a few hundred left-out scores can.
LEFT_OUT_BELOW_VAL = 300
LEFT_OUT = "left-out train+val images"  # metrics.val_measured_on of such a candidate (growing chooses the same way)
MIRROR_CHECK_IMAGES = 1500  # the mirror check (learn.mirror) looks at up to this many training + validation images
MIRROR_CHECK_FOLDS = 4
# Pretrained photo extractors in the order the ladder takes them when their files are here: the first present is
# the anytime probe and the one fine-tuned. MobileNetV2 (an operator's, or torchvision's fetched) has the recipe
# measured longest here; EfficientNet-Lite0 ships with every install; the rest are frozen side candidates.
PHOTO_EXTRACTORS = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite2", "efficientnet_lite1",
                    "dinov2_vits14", "mobilenet_v3_large", "convnext_tiny", "efficientnet_v2_s", "squeezenet1_0")
NO_PRETRAINED = ("No pretrained image extractor is installed, so this model was trained from scratch and will be "
                 "much less accurate on photos. An administrator can run `pigeonhole weights list` to see what "
                 "is missing and `pigeonhole weights fetch` or `pigeonhole weights import` to add one.")
# A preference's tolerance is granted only when it spans at least this many evaluation images: below
# that, "within tolerance" is a difference the evaluation cannot measure, so the more accurate one is kept.
TOLERANCE_MIN_IMAGES = 2
# A candidate measured on at most half the images of one it outscores is preferred only when its lead would come up
# by chance less often than this under the other's accuracy (see _unproven).
UNPROVEN_P = 0.05


# ---------------------------------------------------------------------------------- API types
@dataclass(frozen=True)
class SearchConfig:
    target_accuracy: float | None = None
    time_budget_s: float = 600.0
    preference: Preference = "balanced"
    seed: int = 0
    weights_dir: Path | None = None
    builtin_weights: bool = True  # the packaged and fetched extractors (off: only weights_dir's own catalog)
    cache_dir: Path | None = None  # pixel/feature cache and training checkpoints (node-local disk)
    output_dir: Path | None = None  # artifacts, one folder per reported candidate
    threads: int = 2
    val_fraction: float = 0.2  # used only when the set has no validation images
    max_val_per_class: int = 500
    cache_bytes: int = 4 << 30
    plateau_candidates: int = 3  # stop after this many candidates in a row without a gain
    min_gain: float = 0.002
    job_id: str = ""
    tune_min_s: float = 60.0  # the least time left that a hyper-parameter search (``tuner``) is started with

    def __post_init__(self) -> None:
        if self.preference not in TOLERANCE:
            raise ValueError(f"preference must be one of {sorted(TOLERANCE)}, not {self.preference!r}")
        if self.time_budget_s <= 0:
            raise ValueError("time_budget_s must be positive")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise ValueError("target_accuracy is a fraction in (0, 1]")


class Reporter(Protocol):
    def progress(self, fraction: float, stage: str, eta_s: float | None, metrics: dict[str, Any]) -> None: ...

    def candidate_ready(self, candidate: CandidateResult) -> None: ...

    def cancelled(self) -> bool: ...


class NullReporter:
    def progress(self, fraction: float, stage: str, eta_s: float | None, metrics: dict[str, Any]) -> None:
        pass

    def candidate_ready(self, candidate: CandidateResult) -> None:
        pass

    def cancelled(self) -> bool:
        return False


@dataclass
class CandidateResult:
    """A finished, servable candidate (its files are on disk)."""

    name: str
    config: dict[str, Any]
    val_accuracy: float
    test_metrics: dict[str, Any]
    mflops: float
    model_size_bytes: int
    latency_ms: float
    throughput_img_s: float
    train_seconds: float
    ready_at_s: float  # seconds since the search started
    artifacts: dict[str, str]
    card: dict[str, Any]


@dataclass
class SearchResult:
    chosen: CandidateResult | None
    reported: list[CandidateResult]
    leaderboard: list[dict[str, Any]]
    stop_reason: str  # target_met | budget | plateau (incl. perfect validation) | exhausted | cancelled | no_candidate
    elapsed_s: float
    first_candidate_s: float | None
    traits: dict[str, Any]
    tuning: dict[str, Any] | None = None  # the hyper-parameter search's trials, when one ran
    mirror: dict[str, Any] | None = None  # whether mirroring changes the class (learn.mirror), when it was asked
    notes: list[str] = field(default_factory=list)  # plain sentences for the user (e.g. no pretrained extractor)


# Called as tuner(search=..., best=...) when the ladder is done and the target unmet: a better candidate or None.
# It may leave a summary of what it tried in ``search.tuning``.
Tuner = Callable[..., "Scored | None"]


# ------------------------------------------------------------------------------ internals
@dataclass
class Scored:
    """A candidate scored on validation, not yet exported."""

    config: CandidateConfig
    val_accuracy: float
    mflops: float
    seconds: float
    extractor: BuiltExtractor
    head: RidgeHead
    train_info: dict[str, Any] = field(default_factory=dict)
    order: int = 0
    val_features: np.ndarray | None = None
    train_features: np.ndarray | None = None  # of the training images the head holds, ``train_keys``, in order
    train_keys: list[str] | None = None
    members: list[tuple[ExtractorSpec, torch.nn.Module, str]] | None = None  # trained stacks: for their flip view
    evaluated_on: int | None = None  # images behind val_accuracy (validation, or train+val left out one at a time)
    val_in_head: bool = False  # the head already holds the validation images (left-out scoring)


def select(scored: Sequence[Scored], target: float | None, preference: str) -> Scored | None:
    """The cheapest candidate meeting the target, else the cheapest within the preference's
    tolerance of the most accurate (when the most accurate was measured on enough images for that
    tolerance to mean something). ``accurate`` takes the most accurate meeting the target.
    Cost is the extractor's multiply-adds (deterministic, so a rerun chooses the same)."""
    if not scored:
        return None
    full_data = {s.config for s in scored if isinstance(getattr(s, "config", None), CandidateConfig) and not _probe(s)}
    scored = [s for s in scored if not (_probe(s) and replace(s.config, max_train_per_class=0) in full_data)]
    scored = [s for s in scored if not _unproven(s, scored)] or scored
    meets = [s for s in scored if target is not None and s.val_accuracy >= target]
    if meets:
        if preference == "accurate":
            return max(meets, key=lambda s: (s.val_accuracy, -s.mflops, not _probe(s), -s.order))
        return min(meets, key=lambda s: (s.mflops, _probe(s), -s.val_accuracy, s.order))
    leader = max(scored, key=lambda s: s.val_accuracy)
    top, tolerance = leader.val_accuracy, TOLERANCE[preference]
    measured_on = getattr(leader, "evaluated_on", None)
    if measured_on is not None and tolerance * measured_on < TOLERANCE_MIN_IMAGES:
        tolerance = 0.0  # too few images to see a difference that small: keep the more accurate
    near = [s for s in scored if s.val_accuracy >= top - tolerance - 1e-12]
    return min(near, key=lambda s: (s.mflops, _probe(s), -s.val_accuracy, s.order))


def _unproven(candidate: Any, others: Sequence[Any]) -> bool:
    """Whether ``candidate`` outscores a candidate measured on at least twice as many images only by what chance
    allows: were its true accuracy the other's, a score at least this high would come up more than
    ``UNPROVEN_P`` of the time (binomial tail). Such a lead is not evidence. On a small set a frozen candidate is
    scored on every train+val image left out (hymenoptera: 281) and a fine-tuned one on the validation split (28):
    a fine-tune at 96 px scored 28 of 28 against the frozen 97.2 % (P = 0.45 under the frozen accuracy), was
    chosen, and scored 88.9 % on the test folder against the frozen 94.1 %."""
    n = getattr(candidate, "evaluated_on", None)
    if not n:
        return False
    correct = round(candidate.val_accuracy * n)
    for other in others:
        m = getattr(other, "evaluated_on", None)
        if m and m >= 2 * n and other.val_accuracy < candidate.val_accuracy \
                and _binomial_tail(correct, n, other.val_accuracy) > UNPROVEN_P:
            return True
    return False


def _binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if p >= 1.0:
        return 1.0
    if n > 1000:  # normal approximation with continuity correction
        sd = math.sqrt(n * p * (1 - p)) or 1e-12
        return 0.5 * math.erfc((k - 0.5 - n * p) / (sd * math.sqrt(2)))
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def _probe(scored: Any) -> bool:
    """A quick probe whose head saw only part of the training images: a preview for the anytime model.
    Once the same candidate on all the images is scored, the probe leaves the selection (on a small
    validation set its lucky score is noise, while more training images are not: hymenoptera's probe
    scored 100 % on 28 validation images and 91.5 % on the test folder); before that, at equal cost and
    within the tolerance, any candidate on all the images is preferred."""
    config = getattr(scored, "config", None)
    return bool(getattr(config, "max_train_per_class", 0))


def _carve_validation(ts: TrainingSet, fraction: float, cap: int, seed: int) -> TrainingSet:
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


class _Search:
    def __init__(
        self,
        ts: TrainingSet,
        source: ImageSource,
        config: SearchConfig,
        reporter: Reporter,
        memory: ModelMemory | None,
        tuner: Tuner | None,
    ) -> None:
        self.t0 = time.monotonic()
        self.config = config
        self.reporter = reporter
        self.memory = memory
        self.tuner = tuner
        self.deadline = self.t0 + config.time_budget_s
        self.ts = _carve_validation(ts, config.val_fraction, config.max_val_per_class, config.seed)
        self.classes = list(self.ts.classes)
        self.index = {c: i for i, c in enumerate(self.classes)}
        self.splits = {s: self.ts.split(s) for s in ("train", "val", "test")}
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
            FeatureCache(Path(config.cache_dir) / "features", config.cache_bytes) if config.cache_dir else None
        )
        self.pixels = PixelStore(source, self.cache, threads=config.threads)
        self.source = source
        self.output_dir = Path(config.output_dir) if config.output_dir else None
        self.scored: list[Scored] = []
        self.leaderboard: list[dict[str, Any]] = []
        self.reported: list[CandidateResult] = []
        self.current: Scored | None = None
        self.first_s: float | None = None
        self.tuning: dict[str, Any] | None = None
        # Speed of a feature pass, measured on the frozen candidates in three parts so that a small first
        # sample does not make every later estimate err 4x long (export and session start spread over 650
        # images read as a slow network): the network's MFLOP/s, seconds to fetch one image's pixels
        # (decoding when not cached), and the one-off seconds of exporting and opening a session.
        self.rate: float | None = None
        self.pixel_s = 0.0
        self.overhead_s = 0.0
        self.job = config.job_id or hashlib.sha256(
            f"{self.ts.fingerprint()}|{config.seed}".encode()
        ).hexdigest()[:16]
        self.stage = "Starting"
        self.median_side = 224.0
        self.grey = False
        self.mirror: MirrorCheck | None = None

    # ------------------------------------------------------------------ time and progress
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def should_stop(self) -> bool:
        # Until a first model exists only a cancel stops the work: a slow machine may overrun a tiny
        # budget, but the user always gets a model (the anytime promise).
        if self.reporter.cancelled():
            return True
        return self.current is not None and time.monotonic() > self.deadline

    def progress(self, stage: str, metrics: dict[str, Any] | None = None, fraction: float | None = None) -> None:
        self.stage = stage
        frac = min(1.0, self.elapsed() / self.config.time_budget_s) if fraction is None else fraction
        best = self.current.val_accuracy if self.current else None
        self.reporter.progress(
            frac, stage, max(0.0, self.remaining()), {"best_val_accuracy": best, **(metrics or {})}
        )

    # ------------------------------------------------------------------ data helpers
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

    # ------------------------------------------------------------------ traits and ladder
    def sample_traits(self) -> tuple[list[int], list[bool]]:
        train = sorted(self.splits["train"], key=lambda i: i.key)
        random.Random(self.config.seed).shuffle(train)
        sides, grey = [], []
        for img in train[:200]:
            data = self.source.open(img.key)
            try:
                pil = data if isinstance(data, Image.Image) else Image.open(__import__("io").BytesIO(data))
                sides.append(min(pil.size))
                grey.append(pil.mode in ("L", "LA", "1", "I", "I;16"))
            except Exception:  # traits are hints; a bad header must not fail the job
                continue
        return sides, grey

    def frozen_ok(self, extractor: str) -> bool:
        return unavailable_reason(get_spec(extractor), self.catalog) is None

    def photo_extractors(self) -> list[str]:
        """Pretrained photo extractors whose files are here, in the order the ladder uses them: the first is the
        anytime probe and the network fine-tuned, the others are tried frozen as time allows."""
        return [e for e in PHOTO_EXTRACTORS if self.frozen_ok(e)]

    def imported_extractors(self) -> list[str]:
        """The operator's own ONNX extractors (``pigeonhole weights import``) whose files are here."""
        return sorted(s.id for s in available_specs(self.catalog) if s.architecture == "onnx")

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

    def ladder(self, small: bool, grey: bool, median_side: float) -> list[CandidateConfig]:
        out: list[CandidateConfig] = []
        if small:
            pix = "pixels_l" if grey else "pixels_rgb"
            side = int(min(max(median_side, 8), 32))
            cap = PIXEL_PROBE_PER_CLASS if len(self.splits["train"]) > PIXEL_PROBE_PER_CLASS * len(self.classes) else 0
            out.append(CandidateConfig("frozen", pix, side, "resize", random_features=1024, max_train_per_class=cap))
            cnn = "smallcnn_l" if grey else "smallcnn_rgb"
            scratch = CandidateConfig(
                "scratch", cnn, side, "resize", train=TrainParams(
                    lr=3e-3, weight_decay=0.05, batch_size=128, label_smoothing=0.05,
                    augment="digits" if grey else "photo", patience=4, bf16=True,
                )
            )
            photo = self.photo_extractors()
            if not grey and not photo:
                self.notes.append(NO_PRETRAINED)
            if grey or not photo:
                return [*out, scratch]
            # Small colour photos (CIFAR-like): a pretrained network fine-tuned on them, upscaled, beats a small
            # CNN from scratch (flowers5 shrunk to 32 px, 300 s: 82.8 % vs 72.6 %), and each fills the budget,
            # so the fine-tune goes first; `run` moves the CNN ahead where pretrained features do not transfer.
            out.append(CandidateConfig("frozen", photo[0], 128, "resize"))
            return [*out, self.finetune_config(photo[0]), scratch]
        photo = self.photo_extractors()
        for imported in self.imported_extractors():
            out.append(CandidateConfig("frozen", imported, get_spec(imported).input_size))
        if not photo:  # no pretrained photo network: the operator's own extractors, else a CNN from scratch
            if not out:
                self.notes.append(NO_PRETRAINED)
            return [*out, CandidateConfig("scratch", "smallcnn_rgb", 64, "resize", train=TrainParams(
                lr=3e-3, batch_size=64, augment="photo", patience=4, bf16=True))]
        first = photo[0]
        n_train = len(self.splits["train"])
        probe_cap = PROBE_PER_CLASS if n_train > PROBE_PER_CLASS * len(self.classes) * 1.5 else 0
        first_at = [CandidateConfig("frozen", first, 160, max_train_per_class=probe_cap)]
        if probe_cap:
            first_at.append(CandidateConfig("frozen", first, 160))
        out = first_at + out  # the anytime model first; the operator's own extractors right after it
        out.append(CandidateConfig("frozen", first, 224))
        for other in photo[1:]:
            spec = get_spec(other)
            out.append(CandidateConfig("frozen", other, 224 if 224 in spec.sizes else spec.sizes[-1], optional=True))
        if len(photo) > 1:  # the two best-placed extractors into one head: chosen only if validation says better
            out.append(CandidateConfig("frozen", first, 224, partner=photo[1], optional=True))
        out.append(CandidateConfig("frozen", first, 224, flip_tta=True, random_features=1024, optional=True))
        out.append(self.finetune_config(first))
        return out

    @staticmethod
    def finetune_config(extractor: str) -> CandidateConfig:
        """Fine-tuning a pretrained photo extractor (the size is a starting point: ``run_trained`` picks the
        largest that leaves enough rounds), concatenated with its frozen features."""
        return CandidateConfig(
            "finetune", extractor, 128, with_frozen=True,
            train=TrainParams(lr=5e-4, weight_decay=0.05, batch_size=32, label_smoothing=0.1,
                              augment="photo", patience=3, bf16=True),
        )

    # ------------------------------------------------------------------ heads
    def train_rows(self, per_class: int) -> np.ndarray:
        """Indices of training images to use: all, or the first ``per_class`` of each class in a seeded order."""
        y = self.y("train")
        if per_class <= 0:
            return np.arange(len(y))
        order = np.random.default_rng(self.config.seed).permutation(len(y))
        taken: dict[int, int] = {}
        rows = []
        for i in order:
            if taken.get(int(y[i]), 0) < per_class:
                taken[int(y[i])] = taken.get(int(y[i]), 0) + 1
                rows.append(i)
        return np.sort(np.array(rows, dtype=np.int64))

    def fit_head(
        self, train_f: np.ndarray, val_f: np.ndarray, rff: int, rows: np.ndarray | None = None,
        *, left_out: bool = False, l2_normalize: bool = True,
    ) -> tuple[RidgeHead, float, int]:
        """The best head of plain and random-feature maps: (head, accuracy, images it was measured on).

        ``left_out``: the head holds train+val and is measured leaving each image out in turn (only for
        features that were not trained on these images); otherwise it holds train, measured on val."""
        best: tuple[float, int, RidgeHead] | None = None
        y = self.y("train") if rows is None else self.y("train")[rows]
        order = np.argsort(y, kind="stable")  # the head's class order = the training set's class order
        labels = [self.classes[i] for i in y[order]]
        for m in sorted({0, rff}):
            head = RidgeHead(train_f.shape[1], HeadConfig(l2_normalize=l2_normalize, random_features=m,
                                                          seed=self.config.seed))
            head.add(train_f[order], labels)
            if left_out:
                head.add(val_f, self.labels("val"))
                acc = head.fit_left_out(np.vstack([train_f[order], val_f]), labels + self.labels("val"))["val_accuracy"]
            else:
                acc = head.fit(val_f, self.labels("val"))["val_accuracy"]
            if best is None or acc > best[0] + 1e-12:
                best = (acc, m, head)
        assert best is not None
        return best[2], best[0], len(labels) + len(val_f) if left_out else len(val_f)

    # ------------------------------------------------------------------ candidates
    def estimate_frozen_s(self, config: CandidateConfig, n: int, decoded: int = 0) -> float:
        """Seconds for a feature pass of ``n`` images, ``decoded`` of which already have their pixels in
        memory (0 until a frozen pass was timed)."""
        if self.rate is None:
            return 0.0
        return n * max(config.mflops(), 1.0) / self.rate + max(0, n - decoded) * self.pixel_s + self.overhead_s

    def run_frozen(self, config: CandidateConfig) -> Scored:
        """A frozen extractor (or a stack of two, ``partner``) and a ridge head. A stack's features are its
        members' side by side, each extracted (and cached) as when the member ran alone, so a stack of two
        extractors already tried costs a head solve."""
        t = time.monotonic()
        parts = _parts(config)
        members = []
        for part in parts:
            spec = part.spec
            body = build_extractor(spec, self.catalog) if spec.pretrained else build_architecture(spec)
            members.append((spec, body, member_key(spec, self.catalog)))
        built = build_stack(config, members)
        self.progress(f"Trying a quick model: {_plain(config)}")
        rows = self.train_rows(config.max_train_per_class)
        all_train = self.keys("train")
        train_keys = [all_train[i] for i in rows]
        pieces: dict[str, list[np.ndarray]] = {"train": [], "val": []}
        for part, member in zip(parts, members, strict=True):
            single = built if len(parts) == 1 else build_stack(part, [member])
            timing: dict[str, float] = {}
            started = time.monotonic()
            for split, keys in (("train", train_keys), ("val", self.keys("val"))):
                pieces[split].append(extract_features(single, keys, self.pixel_fn(part), self.cache,
                                                      threads=self.config.threads, should_stop=self.should_stop,
                                                      timing=timing))
            if part.spec.pretrained and timing.get("infer_s", 0.0) > 0.5:
                self.measured_pass(part, timing, time.monotonic() - started)
            if not part.max_train_per_class and not part.flip_tta:
                self.frozen_done.add((part.extractor, part.size, part.crop))
        feats = {split: np.hstack(p) if len(p) > 1 else p[0] for split, p in pieces.items()}
        left_out = len(feats["val"]) < LEFT_OUT_BELOW_VAL  # frozen features: left-out scores are honest
        head, acc, measured = self.fit_head(feats["train"], feats["val"], config.random_features, rows,
                                            left_out=left_out)
        config = replace(config, random_features=head.config.random_features)
        return Scored(config, acc, config.mflops(), time.monotonic() - t, built, head, val_features=feats["val"],
                      train_features=feats["train"], train_keys=train_keys, evaluated_on=measured,
                      val_in_head=left_out)

    def frozen_need_s(self, config: CandidateConfig) -> float:
        """Seconds a frozen candidate will take: its feature passes (none for the members of a stack already tried
        alone, whose features are cached) and finishing it."""
        n = len(self.splits["train"]) + len(self.splits["val"])
        parts = _parts(config)
        passes = sum(self.estimate_frozen_s(p, n) for p in parts
                     if not config.partner or (p.extractor, p.size, p.crop) not in self.frozen_done)
        return passes + self.estimate_finish_s(config)

    def measured_pass(self, config: CandidateConfig, timing: dict[str, float], seconds: float) -> None:
        """Fold a timed feature pass into the speed estimates, keeping the slowest of each part: they
        must err long."""
        images = timing["images"]
        rate = images * config.mflops() / timing["infer_s"]
        self.rate = rate if self.rate is None else min(self.rate, rate)
        self.pixel_s = max(self.pixel_s, timing["pixels_s"] / images)
        self.overhead_s = max(self.overhead_s, seconds - timing["pixels_s"] - timing["infer_s"])

    def training_pixels(self, config: CandidateConfig) -> np.ndarray:
        """Training images for augmentation: ``square`` views at size/0.875 for photos (a 0.875
        crop of them is the serving view), the serving geometry itself otherwise."""
        spec = config.spec
        if config.train.augment == "photo" and config.kind == "finetune":
            return self.pixels.get(self.keys("train"), round(config.size / CROP_FRACTION), color=spec.color,
                                   policy="square", should_stop=self.should_stop)
        return self.pixels.get(self.keys("train"), config.size, color=spec.color, policy=config.crop,
                               should_stop=self.should_stop)

    def estimate_after_training_s(self, config: CandidateConfig, n: int, train_img_s: float | None) -> float:
        """Seconds to extract features of every split through a trained stack, export and time it.

        Errs long on purpose (x1.3 + 8 s over :meth:`estimate_extract_s`): overrunning the budget is
        worse than training one epoch less.
        """
        return 1.3 * self.estimate_extract_s(config, n, train_img_s) + 8.0

    def estimate_extract_s(self, config: CandidateConfig, n: int, train_img_s: float | None) -> float:
        """Seconds for one feature pass of ``n`` images through a (trained) stack. Uses the speed of
        the frozen passes (pixels a frozen candidate decoded at this size are free); without one,
        inference is taken as 3x the training speed."""
        if self.rate is not None and config.spec.pretrained:
            everything = [k for keys in (self.keys("train"), self.keys("val"), self.keys("test")) for k in keys]
            decoded = self.pixels.in_memory(everything, config.size, color=config.color, policy=config.crop)
            return self.estimate_frozen_s(config, n, min(n, decoded))
        per_image = 1.0 / (3.0 * train_img_s) if train_img_s else 0.001
        return n * per_image * (2 if config.with_frozen else 1) * (2 if config.flip_tta else 1)

    def flip_view_reserve_s(self, config: CandidateConfig, train_img_s: float | None) -> float:
        """Time kept after fine-tuning a photo extractor for its mirrored view (:meth:`run_flip_view`):
        a feature pass of train+val at twice the cost, then finishing. Planned rounds now fill the
        budget, so without it the view (+0.3 and +1.4 points on flowers5 validation) never ran."""
        if config.kind != "finetune" or config.train.augment != "photo" or self.config.preference == "fast":
            return 0.0
        n = len(self.splits["train"]) + len(self.splits["val"])
        # Unpadded (the plain pass's estimate already errs long, and the view is skipped if it would not fit):
        # reserving with the same padding left 75 s of a 600 s budget unused on flowers5.
        return self.estimate_extract_s(replace(config, flip_tta=True), n, train_img_s) + self.estimate_finish_s(config)

    def kept_after_training_s(self, config: CandidateConfig, n: int, train_img_s: float) -> float:
        """All the time a training plan leaves for what follows it: the feature passes, export and
        measuring, and the mirrored view."""
        return self.estimate_after_training_s(config, n, train_img_s) + self.flip_view_reserve_s(config, train_img_s)

    def plan_epochs(self, step_s: float, n_train: int, batch: int, budget_s: float, *, up: bool = False) -> int:
        """Rounds that fit in ``budget_s``, down to a step of the plan scale; ``up``: the next step, for the
        plan itself (the rate then decays by the deadline, and estimates err long: rounding down left
        up to a fifth of the budget unused)."""
        epoch_s = math.ceil(n_train / batch) * step_s * 1.15  # + validation pass and noise
        return quantize_epochs(budget_s / max(epoch_s, 1e-6), up=up)

    def run_trained(self, config: CandidateConfig, reserve_s: float) -> Scored | None:
        """Fine-tune a pretrained extractor or train a small CNN, then refit the ridge head."""
        t = time.monotonic()
        spec = config.spec
        pretrained = config.kind == "finetune"
        params = config.train
        classes = len(self.classes)
        if pretrained:
            body = build_extractor(spec, self.catalog)
        else:
            torch.manual_seed(self.config.seed)
            body = build_architecture(spec)
        with torch.no_grad():
            dim = int(body(torch.zeros(1, spec.input_spec().channels, config.size, config.size)).shape[1])
        n_train = len(self.splits["train"])
        n_all = sum(len(v) for v in self.splits.values())
        after_s = self.estimate_after_training_s(config, n_all, None)
        if self.remaining() - reserve_s - after_s < (20.0 if pretrained else 3.0):
            return None  # not even worth measuring the training speed
        if params.augment == "photo" and params.flip and self.mirror_changes_class():
            params = replace(params, flip=False)
        self.progress(f"Measuring training speed for {_plain(config)}")
        params, step_s = choose_precision(spec, body, dim, classes, params, config.size, pretrained=pretrained)
        config = replace(config, train=params)
        timed: dict[int, tuple[float, int]] = {}  # size -> (step seconds, rounds that fit), for the card
        if pretrained:
            # The largest resolution that still allows enough rounds. A size that scaling this timing by
            # pixel count puts near the line is timed at its own size: the scaling errs up to 30 % long
            # (fixed costs, oneDNN's layouts), which chose 160 px where 192 px fitted.
            base_size, base_step = config.size, step_s
            sizes = [s for s in FINETUNE_SIZES if s <= max(config.size, 96) or s <= 1.5 * self.median_side]

            def fits(trial: CandidateConfig, step: float) -> int:
                after = self.kept_after_training_s(trial, n_all, params.batch_size / step)
                return self.plan_epochs(step, n_train, params.batch_size, self.remaining() - reserve_s - after)

            for size in sizes:
                trial = replace(config, size=size)
                step = base_step * (size / base_size) ** 2
                if size != base_size and fits(trial, step) >= 0.6 * FINETUNE_MIN_ROUNDS:
                    step = measure_step_seconds(spec, body, dim, classes, params, size, pretrained=True)
                timed[size] = (round(step, 3), fits(trial, step))
                if fits(trial, step) >= FINETUNE_MIN_ROUNDS or size == sizes[-1]:  # else the smallest, with what fits
                    config, step_s, spec = trial, step, trial.spec
                    break
        start = self.probe_classifier(config)
        after_s = self.kept_after_training_s(config, n_all, params.batch_size / step_s)
        train_budget = self.remaining() - reserve_s - after_s
        if self.plan_epochs(step_s, n_train, params.batch_size, train_budget) < 2:
            return None
        epochs = self.plan_epochs(step_s, n_train, params.batch_size, train_budget, up=True)
        if params.max_epochs:  # the model memory knows how many rounds were enough
            epochs = min(epochs, params.max_epochs)
        params = replace(params, epochs=epochs)
        config = replace(config, train=params)
        train_pixels = self.training_pixels(config)
        val_pixels = self.pixel_fn(config)(self.keys("val"))
        ckpt_id = hashlib.sha256(
            f"{self.job}|{json.dumps(replace(config, train=replace(params, epochs=0)).to_dict(), sort_keys=True)}"
            .encode()
        ).hexdigest()[:16]
        checkpoint = Path(self.config.cache_dir) / "checkpoints" / f"{ckpt_id}.pt" if self.config.cache_dir else None
        verb = "Fine-tuning" if pretrained else "Training a compact network for"
        train_deadline = time.monotonic() + max(0.0, train_budget)

        def on_epoch(epoch: int, record: dict[str, float]) -> None:
            self.progress(f"{verb} your images ({_plain(config)}): round {epoch} of {int(record['planned'])}",
                          {"epoch": epoch, "epoch_val_accuracy": record["val_accuracy"]})

        self.progress(f"{verb} your images ({_plain(config)}): starting, {params.epochs} rounds planned")
        outcome = train_extractor(
            spec, body, dim, classes, params, train_pixels, self.y("train"), val_pixels, self.y("val"),
            input_size=config.size, seed=self.config.seed, deadline=train_deadline, pretrained=pretrained,
            checkpoint=checkpoint, should_stop=self.reporter.cancelled, on_epoch=on_epoch, classifier_start=start,
        )
        del train_pixels
        if outcome.epochs_done == 0 or self.reporter.cancelled():
            return None
        params = replace(params, epochs=outcome.epochs_planned)  # the first round may have planned more
        config = replace(config, train=params)
        tuned = outcome.body.eval()
        members_list = [(spec, tuned, member_key(spec, self.catalog, tuned))]
        if config.with_frozen:
            members_list.append((spec, build_extractor(spec, self.catalog), member_key(spec, self.catalog)))
        built = build_stack(config, members_list)
        self.progress(f"Measuring the new model ({_plain(config)})")
        extracting = time.monotonic()
        feats = self.train_val_features(built, config)
        extract_s = time.monotonic() - extracting
        head, acc, measured = self.fit_head(feats["train"], feats["val"], 1024 if not pretrained else 0)
        info = {"epochs_planned": params.epochs, "epochs_done": outcome.epochs_done, "best_epoch": outcome.best_epoch,
                "stopped": outcome.stopped, "softmax_val_accuracy": outcome.best_val_accuracy,
                "history": outcome.history, "step_s": step_s, "train_seconds": outcome.seconds,
                "sizes_timed": {str(k): list(v) for k, v in timed.items()}, "reserved_after_s": round(after_s, 1),
                "extract_seconds": round(extract_s, 2)}
        config = replace(config, random_features=head.config.random_features)
        return Scored(config, acc, config.mflops(), time.monotonic() - t, built, head, info, val_features=feats["val"],
                      train_features=feats["train"], train_keys=self.keys("train"), members=members_list,
                      evaluated_on=measured)

    def probe_classifier(
        self, config: CandidateConfig, *, announce: bool = True
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The classifier layer fine-tuning starts from (None: a random one, as for networks trained from
        scratch or with ``start_from_probe`` off): a linear probe of the frozen extractor, i.e. a ridge
        head on its features of the serving view, with scores divided by the temperature fitted on
        validation so they are logits of a sensible scale (weights (classes, features), bias).

        Linear probe, then fine-tune (Kumar et al., 2022): from a random layer the first, largest
        gradients reshape the pretrained features to fit noise. flowers5, one training run each way
        (MobileNetV2 160 px, 13 rounds): rounds 9-13 scored 81.1 % on average on the test folder from a
        random start and 82.2 % from the probe, each of the five above the other's mean. The frozen
        candidates have usually cached these features; the head solve takes about a second. ``announce``:
        say so in the progress (not when the Tune stage only hands the start to its trials).
        """
        if config.kind != "finetune" or not config.train.start_from_probe:
            return None
        frozen = CandidateConfig("frozen", config.extractor, config.size, config.crop)
        spec = frozen.spec
        built = build_stack(frozen, [(spec, build_extractor(spec, self.catalog), member_key(spec, self.catalog))])
        if announce:
            self.progress(f"Preparing to fine-tune ({_plain(config)})")
        feats = self.train_val_features(built, frozen)
        # Raw features (no L2 normalisation, no random features): the layer it seeds sees raw features.
        head = self.fit_head(feats["train"], feats["val"], 0, l2_normalize=False)[0]
        weights, bias = head.weights, head.bias
        assert weights is not None and bias is not None
        columns = [head.classes.index(c) for c in self.classes]  # the network's outputs follow self.classes
        return ((weights[:, columns].T / head.temperature).astype(np.float32),
                (bias[columns] / head.temperature).astype(np.float32))

    def train_val_features(self, built: BuiltExtractor, config: CandidateConfig) -> dict[str, np.ndarray]:
        """Features of every training and validation image through a trained stack (only a cancel stops it)."""
        return {s: extract_features(built, self.keys(s), self.pixel_fn(config), self.cache,
                                    threads=self.config.threads, should_stop=self.reporter.cancelled)
                for s in ("train", "val")}

    def run_flip_view(self, trained: Scored) -> Scored | None:
        """A fine-tuned photo candidate again, each image also seen mirrored and the features averaged
        (inside the graph): no training, one more feature pass at twice the extractor's cost. Flip
        views are a reliable point of accuracy on photos; ``select`` takes it only if it beats the plain
        view by more than the preference's tolerance, since it doubles prediction cost. Runs only when
        that pass and exporting fit in the time left."""
        config = trained.config
        if trained.members is None or config.flip_tta or config.train.augment != "photo" or \
                self.config.preference == "fast" or not config.train.flip:
            return None
        flipped = replace(config, flip_tta=True)
        need = 2.4 * float(trained.train_info.get("extract_seconds", 0.0)) + 2 * self.estimate_finish_s(config)
        if need > self.remaining():
            return None
        t = time.monotonic()
        built = build_stack(flipped, trained.members)
        self.progress(f"Measuring the new model with mirrored views ({_plain(config)})")
        try:
            feats = self.train_val_features(built, flipped)
        except InterruptedError:
            return None
        head, acc, measured = self.fit_head(feats["train"], feats["val"], config.random_features)
        info = {**trained.train_info, "flip_view_of": config.name}
        return Scored(flipped, acc, flipped.mflops(), trained.seconds + time.monotonic() - t, built, head, info,
                      val_features=feats["val"], train_features=feats["train"], train_keys=self.keys("train"),
                      evaluated_on=measured)

    # ------------------------------------------------------------------ finishing a candidate
    def finish(self, scored: Scored) -> CandidateResult:
        """Refit the head on train+val, export, evaluate the ONNX file on test, write files."""
        config = scored.config
        head = scored.head
        train_keys = scored.train_keys if scored.train_keys is not None else self.keys("train")
        by_key = dict(zip(self.keys("train"), self.labels("train"), strict=True))
        train_labels = [by_key[k] for k in train_keys]
        train_f, val_f = scored.train_features, scored.val_features
        if train_f is None or val_f is None:
            train_f, val_f = (extract_features(scored.extractor, keys, self.pixel_fn(config), self.cache,
                                               threads=self.config.threads) for keys in (train_keys, self.keys("val")))
        if scored.val_in_head:  # "unknown" chosen on every held image as if left out, as the rest was
            choose_unknown(head, np.vstack([train_f, val_f]), train_labels + self.labels("val"), left_out=True)
        else:
            choose_unknown(head, val_f, self.labels("val"), left_out=False)
            head.add(val_f, self.labels("val"))
            head.solve()
        if head.classes != self.classes:
            raise RuntimeError(f"head classes {head.classes} differ from the training set's {self.classes}")
        lineage = {"job": self.job, "dataset": self.ts.fingerprint(), "seed": self.config.seed,
                   "extractor_key": scored.extractor.key, "parent": self.current.config.name if self.current else None,
                   "extractor_classes": extractor_classes(config, self.classes)}
        model = scored.extractor.export(head, metadata={"pigeonhole.candidate": config.name})
        eval_split = "test" if self.splits["test"] else "val"
        keys = self.keys(eval_split)
        answers = run_model(model, self.pixel_fn(config)(keys), threads=self.config.threads) if keys else None
        metrics = (
            split_metrics(*answers, self.labels(eval_split), keys, self.classes, head.threshold)
            if answers is not None else {}
        )
        metrics["split"] = eval_split
        metrics["val_accuracy"] = scored.val_accuracy
        metrics["val_measured_on"] = LEFT_OUT if scored.val_in_head else "validation images"
        metrics["val_images"] = scored.evaluated_on
        speed = measure_speed(model, scored.extractor.input_spec, threads=self.config.threads)
        ready_at = self.elapsed()
        candidate = {"name": config.name, "config": config.to_dict(), "val_accuracy": scored.val_accuracy,
                     "mflops": scored.mflops}
        training = {"seconds": scored.seconds, "search_seconds_so_far": ready_at,
                    "train_images": len(self.splits["train"]), "val_images": len(self.splits["val"]),
                    "head_trained_on": "train+val", **{k: v for k, v in scored.train_info.items()}}
        card = make_card(candidate=candidate, classes=self.classes, input_spec=scored.extractor.input_spec,
                         head=head, metrics=metrics, speed=speed, model_bytes=len(model), training=training,
                         leaderboard=list(self.leaderboard), lineage=lineage,
                         extractor=self.extractor_facts(config), notes=self.notes)
        paths: dict[str, str] = {}
        if self.output_dir is not None:
            folder = self.output_dir / f"{len(self.reported):02d}-{_slug(config.name)}"
            index = NeighbourIndex(train_keys + self.keys("val"), train_labels + self.labels("val"),
                                   np.vstack([train_f, val_f]))  # the images the head holds
            paths = write_artifacts(folder, model, head, card, neighbours=index.to_bytes()).as_dict()
        return CandidateResult(
            name=config.name, config=config.to_dict(), val_accuracy=scored.val_accuracy, test_metrics=metrics,
            mflops=scored.mflops, model_size_bytes=len(model), latency_ms=speed["latency_ms"],
            throughput_img_s=speed["throughput_img_s"], train_seconds=scored.seconds, ready_at_s=ready_at,
            artifacts=paths, card=card,
        )

    def extractor_facts(self, config: CandidateConfig) -> dict[str, Any]:
        """What the card says of the candidate's extractor: pretrained or not, and on which weights."""
        def facts(spec: ExtractorSpec) -> dict[str, Any] | None:
            entry = resolve_weights(spec, self.catalog) if spec.pretrained else None
            return None if entry is None else {"name": entry.name, "title": entry.title or entry.name,
                                               "sha256": entry.sha256, "license": entry.license,
                                               "origin": entry.origin}

        partner = config.partner_spec
        return {"id": config.spec.id, "pretrained": config.spec.pretrained, "weights": facts(config.spec),
                **({"partner": partner.id, "partner_weights": facts(partner)} if partner is not None else {})}

    def estimate_finish_s(self, config: CandidateConfig) -> float:
        """Measuring on test, exporting and timing (about 4 s), and choosing the unknown detector (about 1.5 s at
        1,280 dimensions on 2 cores)."""
        n = len(self.splits["test"]) or len(self.splits["val"])
        return self.estimate_frozen_s(config, n) + 5.5

    # ------------------------------------------------------------------ main loop
    def consider(self, scored: Scored) -> bool:
        """Add to the leaderboard; finish and report it when it becomes the selection."""
        scored.order = len(self.scored)
        self.scored.append(scored)
        self.leaderboard.append({"name": scored.config.name, "val_accuracy": scored.val_accuracy,
                                 "mflops": scored.mflops, "seconds": round(scored.seconds, 2),
                                 "config": scored.config.to_dict(),
                                 **({"tuning": scored.train_info["tuning"]} if "tuning" in scored.train_info else {})})
        best = select(self.scored, self.config.target_accuracy, self.config.preference)
        if best is not scored:
            return False
        self.progress(f"Preparing the better model ({_plain(scored.config)}) for use")
        result = self.finish(scored)
        self.current = scored
        self.reported.append(result)
        if self.first_s is None:
            self.first_s = result.ready_at_s
        self.reporter.candidate_ready(result)
        return True

    def target_met(self) -> bool:
        t = self.config.target_accuracy
        return t is not None and self.current is not None and self.current.val_accuracy >= t

    def run(self, memory: ModelMemory | None) -> SearchResult:
        cfg = self.config
        torch.set_num_threads(max(1, cfg.threads))
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        self.progress("Looking at your images", fraction=0.0)
        sides, grey_flags = self.sample_traits()
        median_side = float(np.median(sides)) if sides else 224.0
        grey = bool(grey_flags) and float(np.mean(grey_flags)) > 0.9
        small = median_side <= SMALL_SIDE
        self.median_side = median_side
        self.grey = grey
        ladder = self.ladder(small, grey, median_side)
        if NO_PRETRAINED in self.notes:
            self.progress("No pretrained image extractor is installed: training from scratch, which is much less "
                          "accurate on photos (an administrator can add one: `pigeonhole weights list`)")
        counts = [sum(1 for i in self.splits["train"] if i.label == c) for c in self.classes]
        stop_reason = "exhausted"
        probe_acc: float | None = None
        traits: DatasetTraits | None = None
        queue = list(ladder)
        tried: set[str] = set()
        skipped: list[CandidateConfig] = []
        short_of_time = False
        since_gain = 0
        best_acc = -1.0
        try:
            while queue:
                if self.reporter.cancelled():
                    stop_reason = "cancelled"
                    break
                if self.remaining() <= 0:
                    stop_reason = "budget"
                    break
                config = queue.pop(0)
                ident = _identity(config)
                if ident in tried:
                    continue
                tried.add(ident)
                # the first candidate always runs (it is the anytime model); later ones only if they fit
                reserve = 0.0
                if self.current is not None and config.kind == "frozen":
                    need = self.frozen_need_s(config)
                    if need > self.remaining():
                        short_of_time = True
                        continue
                    # side dishes (another family, flip views) only when cheap next to what follows
                    trained_next = any(c.kind != "frozen" for c in queue)
                    if config.optional and trained_next and need > OPTIONAL_SHARE * cfg.time_budget_s:
                        skipped.append(config)
                        tried.discard(ident)
                        continue
                try:
                    if config.flip_tta and self.mirror_changes_class():
                        continue  # a mirrored image shows something else here
                    if config.kind == "frozen":
                        scored = self.run_frozen(config)
                    else:
                        reserve = self.estimate_finish_s(config)
                        got = self.run_trained(config, reserve)
                        if got is None:  # no time to train: the skipped side candidates get their turn
                            short_of_time = True
                            queue = [c for c in queue if c.kind == "frozen"] + skipped
                            skipped = []
                            queue += [c for c in ladder if c.kind != "frozen" and _identity(c) not in tried]
                            queue = [replace(c, optional=False) if c.kind == "frozen" else c for c in queue]
                            continue
                        scored = got
                except InterruptedError:
                    stop_reason = "cancelled" if self.reporter.cancelled() else "budget"
                    break
                if traits is None:
                    probe_acc = scored.val_accuracy
                    sample = self.pixels.get(self.keys("train")[:64], 32, color="L" if grey else "RGB",
                                             policy="resize")
                    traits = compute_traits(sides, grey_flags, counts, sample, probe_acc)
                    if memory is not None:
                        queue = self.remembered(memory, traits, small) + queue
                gain = scored.val_accuracy - best_acc
                best_acc = max(best_acc, scored.val_accuracy)
                since_gain = 0 if gain > cfg.min_gain else since_gain + 1
                self.consider(scored)
                if small and config.kind == "frozen" and config.spec.pretrained and probe_acc is not None \
                        and scored.val_accuracy <= probe_acc:
                    # pretrained features do no better than raw pixels here (icons, symbols, sprites...): the
                    # network trained from scratch gets the budget first
                    queue.sort(key=lambda c: c.kind != "scratch")
                if not self.target_met():
                    flipped = self.run_flip_view(scored)
                    if flipped is not None:
                        best_acc = max(best_acc, flipped.val_accuracy)
                        self.consider(flipped)
                if self.target_met() and cfg.preference != "accurate":
                    stop_reason = "target_met"
                    break
                if config.train.max_epochs:
                    tried.discard(ident)  # the remembered rounds were not enough here: the ladder may train it fully
                if self.current is not None and self.current.val_accuracy >= 1.0 and cfg.preference != "fast" \
                        and not _probe(self.current):
                    stop_reason = "plateau"  # nothing can beat a perfect validation score (a probe's: see _probe)
                    break
                if since_gain >= cfg.plateau_candidates:
                    trained = [c for c in queue if c.kind != "frozen"]
                    if not trained:
                        stop_reason = "plateau"
                        break
                    queue, since_gain = trained, 0  # this tier has plateaued: on to training extractors
            else:
                if (
                    self.tuner is not None and not self.target_met() and cfg.target_accuracy is not None
                    and self.remaining() > cfg.tune_min_s and not self.reporter.cancelled()
                ):
                    self.progress("Searching training settings (hyper-parameter search)")
                    tuned = self.tuner(search=self, best=self.current)
                    if tuned is not None:
                        self.consider(tuned)
                    stop_reason = "target_met" if self.target_met() else "exhausted"
        finally:
            if self.cache is not None:
                self.cache.close()
        if stop_reason == "exhausted" and short_of_time:
            stop_reason = "budget"  # candidates were left out because they would not fit
        if self.reporter.cancelled():
            stop_reason = "cancelled"
        chosen = self.reported[-1] if self.reported else None
        if traits is None:
            traits = compute_traits(sides, grey_flags, counts, None, probe_acc)
        if memory is not None and self.scored and stop_reason != "cancelled":
            self.save_memory(memory, traits)
        self.progress("Done" if chosen else "Stopped before any model was ready", fraction=1.0)
        return SearchResult(
            chosen=chosen, reported=self.reported, leaderboard=self.leaderboard,
            stop_reason=stop_reason if chosen else "no_candidate", elapsed_s=self.elapsed(),
            first_candidate_s=self.first_s, traits=traits.__dict__, tuning=self.tuning,
            mirror=self.mirror.as_dict() if self.mirror is not None else None, notes=list(self.notes),
        )

    def remembered(self, memory: ModelMemory, traits: DatasetTraits, small: bool) -> list[CandidateConfig]:
        out = []
        for suggestion in memory.suggest(traits):
            try:
                config = CandidateConfig.from_dict(suggestion.config)
                spec = config.spec
            except (KeyError, TypeError, ValueError):
                continue
            if spec.pretrained and unavailable_reason(spec, self.catalog) is not None:
                continue
            if config.partner_spec is not None and unavailable_reason(config.partner_spec, self.catalog) is not None:
                continue
            if spec.architecture == "onnx" and (config.kind != "frozen" or config.flip_tta):
                continue  # an imported graph is only ever used frozen, alone
            if (spec.architecture in ("pixels", "smallcnn")) != small and config.kind != "scratch":
                continue
            # The rounds remembered as enough for this target, when one is given and reaching it ends the search.
            target = self.config.target_accuracy
            rounds = suggestion.rounds_for(target) if target is not None and self.config.preference != "accurate" \
                else None
            # Whether to mirror is this set's question (mirror_changes_class), not the remembered set's; whether
            # bf16 is faster is this machine's (choose_precision).
            train = replace(config.train, epochs=0, max_epochs=max(2, rounds) if rounds else 0, flip=True,
                            bf16=config.train.bf16 or config.kind != "frozen")
            out.append(replace(config, optional=False, train=train))
        return out

    def save_memory(self, memory: ModelMemory, traits: DatasetTraits) -> None:
        chosen = self.current
        target = self.config.target_accuracy
        memory.record(SearchRecord(
            traits=traits,
            candidates=[
                CandidateRecord(config=s.config.to_dict(), name=s.config.name, val_accuracy=s.val_accuracy,
                                mflops=s.mflops, latency_ms=None, seconds=s.seconds, chosen=s is chosen,
                                met_target=target is not None and s.val_accuracy >= target,
                                round_val_accuracy=[round(float(h["val_accuracy"]), 5)
                                                    for h in s.train_info.get("history", [])],
                                rounds_planned=int(s.train_info.get("epochs_planned", 0)))
                for s in self.scored
            ],
            target_accuracy=target, preference=self.config.preference, budget_s=self.config.time_budget_s,
            seconds=self.elapsed(), dataset_fingerprint=self.ts.fingerprint(),
        ))


def _parts(config: CandidateConfig) -> list[CandidateConfig]:
    """A frozen candidate's members, each as the candidate of that extractor alone (a stack has two)."""
    alone = replace(config, partner=None)
    return [alone, replace(alone, extractor=config.partner)] if config.partner else [alone]


def _identity(config: CandidateConfig) -> str:
    """Configs differing only in the epoch plan are the same candidate."""
    return json.dumps(replace(config, train=replace(config.train, epochs=0, max_epochs=0)).to_dict(), sort_keys=True)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80]


_FRIENDLY = {"mobilenet_v2": "MobileNetV2", "squeezenet1_0": "SqueezeNet", "efficientnet_lite0": "EfficientNet-Lite0",
             "efficientnet_lite1": "EfficientNet-Lite1", "efficientnet_lite2": "EfficientNet-Lite2",
             "dinov2_vits14": "DINOv2", "convnext_tiny": "ConvNeXt-Tiny", "efficientnet_v2_s": "EfficientNetV2-S",
             "mobilenet_v3_large": "MobileNetV3-Large", "pixels_l": "raw pixels",
             "pixels_rgb": "raw pixels", "smallcnn_l": "a small network", "smallcnn_rgb": "a small network"}


def _plain(config: CandidateConfig) -> str:
    name = _FRIENDLY.get(config.extractor, config.extractor)
    if config.partner:
        name += f" and {_FRIENDLY.get(config.partner, config.partner)} together"
    extra = " with mirrored views" if config.flip_tta else ""
    return f"{name} at {config.size} px{extra}"


def run_search(
    training_set: TrainingSet,
    source: ImageSource,
    config: SearchConfig,
    reporter: Reporter | None = None,
    *,
    memory: ModelMemory | None = None,
    tuner: Tuner | None = None,
) -> SearchResult:
    """Build the best model the budget allows; see the module docstring for the order of work.

    ``reporter.candidate_ready`` receives each candidate that becomes the selection, with
    its files already written under ``config.output_dir``: serve it at once. The return
    value's ``chosen`` is the last one reported.
    """
    search = _Search(training_set, source, config, reporter or NullReporter(), memory, tuner)
    return search.run(memory)
