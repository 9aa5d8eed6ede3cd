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
from pigeonhole.learn.array_file import ArrayFile, Origin, Reader

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


@dataclass(frozen=True)
class _Block:
    """One class's images: sha256 (ASCII bytes) and unit features (float16), with where each array was read from
    (``array_file``: an unchanged class is written as a reference)."""

    shas: np.ndarray
    features: np.ndarray
    origins: tuple[Origin | None, Origin | None] = (None, None)


class NeighbourIndex:
    """Unit features (float16) of training images, with their sha256 and label, held one block per class: growing
    drops or adds whole classes, and a grown version's file points at the unchanged ones (``array_file``)."""

    def __init__(self, shas: Sequence[str], labels: Sequence[str], features: np.ndarray) -> None:
        if not (len(shas) == len(labels) == len(features)):
            raise ValueError("images, labels and features differ in number")
        self._blocks: dict[str, _Block] = {}
        if not len(shas):
            return
        unit = _unit(features).astype(np.float16)
        names = np.asarray(list(labels), dtype=str)
        codes = np.asarray([s.encode() for s in shas])
        for label in dict.fromkeys(names.tolist()):
            mine = names == label
            self._blocks[label] = _Block(codes[mine], unit[mine])

    def __len__(self) -> int:
        return sum(len(b.shas) for b in self._blocks.values())

    @property
    def shas(self) -> list[str]:
        return [s.decode() for b in self._blocks.values() for s in b.shas]

    def to_bytes(self) -> bytes:
        arrays: list[tuple[str, np.ndarray | Origin]] = []
        for i, block in enumerate(self._blocks.values()):
            arrays += [(f"shas_{i}", array_file.kept(block.origins[0], block.shas)),
                       (f"features_{i}", array_file.kept(block.origins[1], block.features))]
        return array_file.dump(MAGIC, {"format": 1, "labels": list(self._blocks)}, arrays)

    @classmethod
    def from_bytes(cls, data: Any, *, key: str | None = None, read: Reader | None = None) -> NeighbourIndex:
        """An index from its file's bytes; ``key`` and ``read`` as in ``array_file.ArrayFile``. Files saved by
        ``numpy.savez`` (one array for all classes) still load."""
        if not array_file.has_magic(data, MAGIC):
            with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as npz:
                return cls._from_rows(npz["shas"], npz["labels"], npz["features"])
        file = ArrayFile(data, MAGIC, key=key, read=read)
        index = cls([], [], np.zeros((0, 0)))
        for i, label in enumerate(file.meta["labels"]):
            (shas, where_shas), (features, where_features) = (file.read_with_origin(f"shas_{i}"),
                                                              file.read_with_origin(f"features_{i}"))
            index._blocks[label] = _Block(shas, features, (where_shas, where_features))
        return index

    @classmethod
    def read(cls, key: str, reader: Reader) -> NeighbourIndex:
        """The index in the file at ``key``, with the files it points into opened by the same ``reader``."""
        return cls.from_bytes(reader(key), key=key, read=reader)

    @classmethod
    def _from_rows(cls, shas: np.ndarray, labels: np.ndarray, features: np.ndarray) -> NeighbourIndex:
        """Rows already unit and float16 (an older file), grouped by class without normalising again."""
        index = cls([], [], np.zeros((0, 0)))
        codes = np.asarray([str(s).encode() for s in shas])
        for label in dict.fromkeys(labels.tolist()):
            mine = labels == label
            index._blocks[str(label)] = _Block(codes[mine], features[mine])
        return index

    def without(self, classes: Sequence[str]) -> NeighbourIndex:
        gone = set(classes)
        return self._with({k: b for k, b in self._blocks.items() if k not in gone})

    def renamed(self, mapping: dict[str, str]) -> NeighbourIndex:
        return self._with({mapping.get(k, k): b for k, b in self._blocks.items()})

    def plus(self, shas: Sequence[str], labels: Sequence[str], features: np.ndarray) -> NeighbourIndex:
        if not len(shas):
            return self
        extra = NeighbourIndex(shas, labels, features)
        width = next((b.features.shape[1] for b in self._blocks.values() if len(b.shas)), None)
        if width is not None and next(iter(extra._blocks.values())).features.shape[1] != width:
            raise ValueError("the new images' features do not match the index's")
        blocks = dict(self._blocks)
        for label, block in extra._blocks.items():
            old = blocks.get(label)
            blocks[label] = block if old is None else _Block(np.concatenate([old.shas, block.shas]),
                                                             np.vstack([old.features, block.features]))
        return self._with(blocks)

    def _with(self, blocks: dict[str, _Block]) -> NeighbourIndex:
        out = NeighbourIndex([], [], np.zeros((0, 0)))
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
