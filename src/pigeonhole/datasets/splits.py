"""Deterministic train/validation/test assignment.

The split of an image comes from its content hash, so the same image always lands in the same
split and adding images never reshuffles existing ones: proportions are stratified per class
by construction (about 80/10/10). One exception keeps small classes measurable: when a class
reaches ``MIN_FOR_VALIDATION`` images without any validation image, the image that arrives
then goes to validation. The split is stored on the image row and never changes afterwards.
"""

from __future__ import annotations

from typing import Literal

Split = Literal["train", "val", "test"]
TRAIN_FRACTION = 0.8
VAL_FRACTION = 0.1
MIN_FOR_VALIDATION = 5


def hash_split(sha256: str) -> Split:
    position = int(sha256[:8], 16) / 2**32
    if position < TRAIN_FRACTION:
        return "train"
    if position < TRAIN_FRACTION + VAL_FRACTION:
        return "val"
    return "test"


def assign_split(sha256: str, *, class_count_before: int, class_has_val: bool) -> Split:
    split = hash_split(sha256)
    if split != "val" and not class_has_val and class_count_before + 1 >= MIN_FOR_VALIDATION:
        return "val"
    return split
