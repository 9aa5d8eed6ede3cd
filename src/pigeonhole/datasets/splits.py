"""Deterministic train/validation/test assignment.

The split of an image comes from its content hash, so the same image always lands in the same
split and adding images never reshuffles existing ones: proportions are stratified per class
by construction (about 80/10/10). Two exceptions keep small classes measurable: when a class
reaches ``MIN_FOR_VALIDATION`` images without any validation image, the image that arrives
then goes to validation; when it reaches ``MIN_FOR_TEST`` images without any test image, the
arriving one goes to test. Without them a class of a few images may by chance have no image to
choose settings on, or none to measure it with (and an upload's arrival order, which decides
which image the first rule takes, would decide whether the class can be measured at all).
The split is stored on the image row and never changes afterwards.
"""

from __future__ import annotations

from typing import Literal

Split = Literal["train", "val", "test"]
TRAIN_FRACTION = 0.8
VAL_FRACTION = 0.1
MIN_FOR_VALIDATION = 5
MIN_FOR_TEST = 6


def hash_split(sha256: str) -> Split:
    position = int(sha256[:8], 16) / 2**32
    if position < TRAIN_FRACTION:
        return "train"
    if position < TRAIN_FRACTION + VAL_FRACTION:
        return "val"
    return "test"


def assign_split(sha256: str, *, class_count_before: int, class_has_val: bool, class_has_test: bool) -> Split:
    split = hash_split(sha256)
    arriving = class_count_before + 1
    if split == "train" and not class_has_val and arriving >= MIN_FOR_VALIDATION:
        return "val"
    if split == "train" and not class_has_test and arriving >= MIN_FOR_TEST:
        return "test"
    return split
