""""It looks like these": the training images nearest to a prediction, from features kept with each version.

Each version keeps the extractor features of the images its head holds (train and validation), L2-normalised
and stored as float16 (a 1,280-dimension feature takes 2.5 KB, so 10,000 images cost 25 MB), with each image's
sha256 and label. Cosine similarity on these features is what the head itself sees (it normalises them the
same way), so the nearest images of the predicted class are the examples that most drove the answer. Growing
a version edits the index as it edits the head's statistics: a removed class's rows go, a new class's rows
come from the features the expand job computes anyway, and the grown version's file points at the classes that did
not change in the files that hold them (``array_file``: at 1,000 classes the index is 230 MB).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pigeonhole.learn import array_file
from pigeonhole.learn.array_file import ArrayFile, Reader
from pigeonhole.learn.class_blocks import ClassBlocks

NEIGHBOURS_FILE = "neighbours.npz"  # the name stays: older versions' files are savez files under it
MAGIC = b"PGHNBRS2"
MAX_NEIGHBOURS = 20


def _unit(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Neighbour:
    sha256: str
    label: str
    similarity: float


class NeighbourIndex:
    """Unit features (float16) of training images, with their sha256 and label, held one block per class
    (``class_blocks``): growing drops or adds whole classes, and a grown version's file points at the unchanged
    ones."""

    def __init__(self, shas: Sequence[str], labels: Sequence[str], features: np.ndarray) -> None:
        self._blocks = ClassBlocks.from_rows(shas, labels, _unit(features).astype(np.float16) if len(shas)
                                             else np.zeros((0, 0), dtype=np.float16))

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def shas(self) -> list[str]:
        return self._blocks.shas

    def to_bytes(self) -> bytes:
        return self._blocks.dump(MAGIC, {"format": 1})

    @classmethod
    def from_bytes(cls, data: Any, *, key: str | None = None, read: Reader | None = None) -> NeighbourIndex:
        """An index from its file's bytes; ``key`` and ``read`` as in ``array_file.ArrayFile``. Files saved by
        ``numpy.savez`` (one array for all classes) still load: their rows are already unit and float16."""
        if not array_file.has_magic(data, MAGIC):
            with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as npz:
                return cls._with(ClassBlocks.from_rows([str(s) for s in npz["shas"]], npz["labels"].tolist(),
                                                       npz["features"]))
        return cls._with(ClassBlocks.load(ArrayFile(data, MAGIC, key=key, read=read)))

    @classmethod
    def read(cls, key: str, reader: Reader) -> NeighbourIndex:
        """The index in the file at ``key``, with the files it points into opened by the same ``reader``."""
        return cls.from_bytes(reader(key), key=key, read=reader)

    def without(self, classes: Sequence[str]) -> NeighbourIndex:
        return self._with(self._blocks.without(classes))

    def renamed(self, mapping: dict[str, str]) -> NeighbourIndex:
        return self._with(self._blocks.renamed(mapping))

    def plus(self, shas: Sequence[str], labels: Sequence[str], features: np.ndarray) -> NeighbourIndex:
        if not len(shas):
            return self
        return self._with(self._blocks.plus(NeighbourIndex(shas, labels, features)._blocks))

    @classmethod
    def _with(cls, blocks: ClassBlocks) -> NeighbourIndex:
        out = cls([], [], np.zeros((0, 0)))
        out._blocks = blocks
        return out

    def nearest(self, features: np.ndarray, classes: Sequence[str], k: int) -> list[list[Neighbour]]:
        """For each query row, the ``k`` most similar images labelled with that row's class (one per sha256).

        Only the rows of the wanted class are compared (and widened from float16), so a query costs a class's
        images, not the whole index."""
        if not len(self) or k <= 0:
            return [[] for _ in range(len(features))]
        queries = _unit(features)
        out = []
        for query, wanted in zip(queries, classes, strict=True):
            block = self._blocks.get(str(wanted))
            if block is None:
                out.append([])
                continue
            sims = block.features.astype(np.float32) @ query
            found: list[Neighbour] = []
            seen: set[bytes] = set()
            for j in np.argsort(-sims, kind="stable"):
                sha = bytes(block.shas[j])
                if sha in seen:
                    continue
                seen.add(sha)
                found.append(Neighbour(sha.decode(), str(wanted), round(float(sims[j]), 4)))
                if len(found) == k:
                    break
            out.append(found)
        return out
