"""The features of the test images a version was measured on, kept beside it so that the next class change
measures the grown version without looking them up again.

Why: a version is always measured on its test images, and a grown one shares its extractor with the version it
grew from, so their test features are the same numbers. At 1,000 classes there are 10,000 of them; fetching them
one row at a time from the node's feature cache was most of what measuring a removed class cost (growing should
take a second or two). Kept as float32, exactly what the extractor gave and what the cache holds, one block per
class (``class_blocks``): a grown version's file points at the unchanged classes' blocks.

A kept block is used only when it holds exactly the images the class has in the test split now (same sha256, same
order); any class whose test images changed is computed again (from the cache, or by the extractor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pigeonhole.learn.array_file import ArrayFile, Reader
from pigeonhole.learn.class_blocks import Block, ClassBlocks

HELD_OUT_FILE = "test-features.bin"
MAGIC = b"PGHTEST1"


class HeldOutFeatures:
    """Test images' features by class: float32, with each image's sha256."""

    def __init__(self, blocks: ClassBlocks | None = None) -> None:
        self.blocks = blocks or ClassBlocks()

    @classmethod
    def from_rows(cls, shas: Sequence[str], labels: Sequence[str], features: np.ndarray) -> HeldOutFeatures:
        return cls(ClassBlocks.from_rows(shas, labels, np.asarray(features, dtype=np.float32)))

    def __len__(self) -> int:
        return len(self.blocks)

    def to_bytes(self) -> bytes:
        return self.blocks.dump(MAGIC, {"format": 1})

    @classmethod
    def from_bytes(cls, data: Any, *, key: str | None = None, read: Reader | None = None) -> HeldOutFeatures:
        return cls(ClassBlocks.load(ArrayFile(data, MAGIC, key=key, read=read)))

    @classmethod
    def read(cls, key: str, reader: Reader) -> HeldOutFeatures:
        """The file at ``key``, with the files it points into opened by the same ``reader``."""
        return cls.from_bytes(reader(key), key=key, read=reader)

    def renamed(self, mapping: dict[str, str]) -> HeldOutFeatures:
        return HeldOutFeatures(self.blocks.renamed(mapping))


def features_for(shas: Sequence[str], labels: Sequence[str], kept: HeldOutFeatures | None,
                 compute: Callable[[list[int]], np.ndarray]) -> tuple[np.ndarray, HeldOutFeatures]:
    """The (N, D) float32 features of these test images, in their order, and the file to keep with the version.

    A class's block comes from ``kept`` when it holds exactly that class's images here; the rows of every other
    class are computed at once by ``compute``, given their positions."""
    if len(shas) != len(labels):
        raise ValueError("images and labels differ in number")
    rows: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        rows.setdefault(label, []).append(i)
    blocks = kept.blocks if kept is not None else ClassBlocks()
    reused: dict[str, Block] = {}
    for label, places in rows.items():
        block = blocks.get(label)
        if block is not None and block.same_images([shas[i] for i in places]):
            reused[label] = block
    todo = [i for label, places in rows.items() if label not in reused for i in places]
    computed = np.asarray(compute(todo), dtype=np.float32) if todo else None
    width = (computed.shape[1] if computed is not None
             else next((b.features.shape[1] for b in reused.values()), 0))
    out = np.empty((len(shas), width), dtype=np.float32)
    for label, block in reused.items():
        out[rows[label]] = block.features
    if computed is not None:
        out[todo] = computed
    made = dict(ClassBlocks.from_rows([shas[i] for i in todo], [labels[i] for i in todo], computed).items()
                ) if computed is not None else {}
    # In the order of the classes' first test image; kept blocks as they were read, so they are written as references.
    return out, HeldOutFeatures(ClassBlocks({label: reused.get(label) or made[label] for label in rows}))
