"""How a grown head gets its settings (ridge strength, calibration, the "unknown" detector and caution): kept from
the version it grew from when the change is small against many classes, chosen on every held image left out in
turn for a small set, or chosen on validation images the head does not hold, as training chooses them.

The expand job (``models/expansion.py``) picks the path; each returns the final head and the manifest of the
images it holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pigeonhole.compute.handlers import JobContext, JobFailed
from pigeonhole.learn.evaluate import recall_gap
from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.novelty import DEFAULT_CAUTION
from pigeonhole.learn.unknown import choose_unknown
from pigeonhole.models.job_contracts import ExpandPayload, ImageRow
from pigeonhole.models.manifest import Manifest

FeatureLookup = Callable[[list[ImageRow]], np.ndarray]  # the images' features by the version's extractor (cached)


def drift_estimate(chooser: RidgeHead, val_probs: Any, val_labels: list[str],
                   known: list[str] | None) -> dict[str, Any] | None:
    """The drift guard's estimate, with the head that chose the settings (it never held these images)."""
    if known is None or val_probs is None or not val_labels:
        return None
    predicted = [chooser.classes[i] for i in val_probs.argmax(axis=1)]
    return recall_gap(val_labels, predicted, known=[c for c in chooser.classes if c in known],
                      added=[c for c in chooser.classes if c not in known])


class StageClock:
    """Seconds spent in each stage of the job (kept in the result and the card: where a change's time goes)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.laps[stage] = round(self.laps.get(stage, 0.0) + now - self._last, 3)
        self._last = now


def choose_left_out(ctx: JobContext, head: RidgeHead, manifest: Manifest, images: list[ImageRow],
                    new_classes: set[str], lookup: FeatureLookup,
                    ) -> tuple[RidgeHead, Manifest]:
    """As training chooses for a small set (under ``runners.LEFT_OUT_BELOW_VAL`` validation images, frozen features):
    the head holds the train and validation images of every class, and ridge strength, temperature and threshold
    are chosen on each held image scored by the head refit without it. The same procedure on the same images as
    a refit, so adding a class and removing it again gives back the version the user had."""
    caution = head.threshold if head.detector is not None else DEFAULT_CAUTION  # the user's caution carries over
    new_rows = [r for r in images if r[1] in new_classes and r[2] in ("train", "val")]
    if new_classes:
        ctx.report(progress=0.2, stage=f"Learning {len(new_classes)} class(es) from their images")
        if not any(r[2] == "train" for r in new_rows):
            raise JobFailed("The new classes have no training images.")
    have = set(head.classes) - new_classes  # a set: 90,000 rows against a list of 1,000 classes took 0.7 s
    held = [r for r in manifest.rows() if r[1] in have] + new_rows
    features = lookup(held)
    if new_rows:
        fresh = len(held) - len(new_rows)
        head.add(features[fresh:], [r[1] for r in new_rows])
    ctx.report(progress=0.6, stage="Choosing the settings on every image left out in turn")
    head.fit_left_out(features, [r[1] for r in held])
    choose_unknown(head, features, [r[1] for r in held], left_out=True, caution=caution)
    return head, Manifest.from_rows(held)


def choose_on_validation(ctx: JobContext, head: RidgeHead, manifest: Manifest | None,
                         images: list[ImageRow], new_classes: set[str],
                         validation: list[ImageRow], lookup: FeatureLookup, payload: ExpandPayload,
                         clock: StageClock,
                         ) -> tuple[RidgeHead, Manifest | None, Any, dict[str, Any] | None]:
    """As training chooses for larger sets: ridge strength, calibration and threshold on validation images the
    head does not hold; the final head then holds train + validation images of every class. Returns the head,
    its manifest, the chooser's answers on the validation images (never held) and the drift estimate."""
    val_labels = [r[1] for r in validation]
    chooser = head.copy()
    if manifest is not None:
        have = set(chooser.classes)
        held = [r for r in manifest.rows() if r[2] == "val" and r[1] in have]
        if held:
            chooser.remove_images(lookup(held), [r[1] for r in held])
    clock.lap("held_out")
    if new_classes:
        ctx.report(progress=0.2, stage=f"Learning {len(new_classes)} class(es) from their images")
        new_rows = [r for r in images if r[2] == "train" and r[1] in new_classes]
        if not new_rows:
            raise JobFailed("The new classes have no training images.")
        new_labels = [r[1] for r in new_rows]
        new_features = lookup(new_rows)
        chooser.add(new_features, new_labels)
        head.add(new_features, new_labels)
        clock.lap("new_classes")
    ctx.report(progress=0.6, stage="Checking accuracy on validation images")
    val_features = lookup(validation) if validation else None
    clock.lap("val_features")
    if val_features is not None and len(set(val_labels)) >= 2:
        chooser.fit(val_features, val_labels)
        choose_unknown(chooser, val_features, val_labels, left_out=False,
                       caution=chooser.threshold if chooser.detector is not None else DEFAULT_CAUTION)
    else:
        chooser.solve()
    # The chooser's answers on the validation images it never held: the drift estimate, and the
    # measurement when there are no test images.
    val_probs = chooser.answers(val_features) if val_features is not None else None
    gap = drift_estimate(chooser, val_probs[0] if val_probs is not None else None, val_labels,
                         payload.extractor_classes)
    if manifest is None:
        return chooser, None, val_probs, gap  # older versions hold training images only: keep doing the same
    for attribute in ("alpha", "temperature", "threshold", "threshold_precision", "threshold_coverage", "detector"):
        setattr(head, attribute, getattr(chooser, attribute))
    fresh = [i for i, label in enumerate(val_labels) if label in new_classes]
    if fresh and val_features is not None:
        head.add(val_features[fresh], [val_labels[i] for i in fresh])
    head.solve()
    clock.lap("solve")
    manifest = manifest.only(set(head.classes) - new_classes).plus(
        r for r in images if r[1] in new_classes and r[2] in ("train", "val"))
    return head, manifest, val_probs, gap


KEEP_SETTINGS_FROM = 100  # classes in the version grown from
KEEP_SETTINGS_SHARE = 0.01  # at most this share of them added, removed or refreshed


def keeps_settings(classes_before: int, changed: int, has_tests: bool) -> bool:
    """Whether a change keeps the base's ridge strength, temperature and "unknown" detector instead of choosing
    them again.

    Why: at 1,000 classes choosing them again scores every validation image under seven strengths and simulates
    the detector: 14 of a class change's 28 seconds, to move settings chosen on 10,000 images of every class by
    less than the noise of that choice when one class in a hundred or more changes. Kept, they still make a head
    that equals a refit at those settings, and removing an added class gives back the version before. The new
    version is measured on its test images as always (so this needs some), and the next training chooses afresh.
    """
    return classes_before >= KEEP_SETTINGS_FROM and changed <= KEEP_SETTINGS_SHARE * classes_before and has_tests


def keep_settings(ctx: JobContext, head: RidgeHead, manifest: Manifest | None, images: list[ImageRow],
                  new_classes: set[str], lookup: FeatureLookup,
                  ) -> tuple[RidgeHead, Manifest | None]:
    """Add the new classes' images as the chosen path would leave them in the final head (train and validation
    images when the base records what it holds, train images only for older versions), and solve at the
    base's ridge strength."""
    splits = ("train", "val") if manifest is not None else ("train",)
    new_rows = [r for r in images if r[1] in new_classes and r[2] in splits]
    if new_classes:
        ctx.report(progress=0.2, stage=f"Learning {len(new_classes)} class(es) from their images")
        if not any(r[2] == "train" for r in new_rows):
            raise JobFailed("The new classes have no training images.")
        features = lookup(new_rows)
        head.add(features, [r[1] for r in new_rows])
    head.solve()
    if manifest is not None:
        manifest = manifest.only(set(head.classes) - new_classes).plus(new_rows)
    return head, manifest
