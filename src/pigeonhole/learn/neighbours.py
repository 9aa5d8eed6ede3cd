""""It looks like these": the training images nearest to a prediction, from features kept with each version.

Each version keeps the extractor features of the images its head holds (train and validation), L2-normalised
and stored as float16 (a 1,280-dimension feature takes 2.5 KB, so 10,000 images cost 25 MB), with each image's
sha256 and label. Cosine similarity on these features is what the head itself sees (it normalises them the
same way), so the nearest images of the predicted class are the examples that most drove the answer. Growing
a version edits the index as it edits the head's statistics: a removed class's rows go, a new class's rows
come from the features the expand job computes anyway.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NEIGHBOURS_FILE = "neighbours.npz"
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
    """Unit features (float16) of training images, with their sha256 and label."""

    def __init__(self, shas: Sequence[str], labels: Sequence[str], features: np.ndarray) -> None:
        if not (len(shas) == len(labels) == len(features)):
            raise ValueError("images, labels and features differ in number")
        self.shas = np.asarray(list(shas), dtype=str)
        self.labels = np.asarray(list(labels), dtype=str)
        self.features = _unit(features).astype(np.float16) if len(features) else np.zeros((0, 0), np.float16)
        self._by_label: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.shas)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, shas=self.shas, labels=self.labels, features=self.features)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> NeighbourIndex:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            index = cls([], [], np.zeros((0, 0)))
            index.shas, index.labels, index.features = npz["shas"], npz["labels"], npz["features"]
        return index

    def without(self, classes: Sequence[str]) -> NeighbourIndex:
        keep = ~np.isin(self.labels, list(classes))
        return self._rows(keep)

    def renamed(self, mapping: dict[str, str]) -> NeighbourIndex:
        out = self._rows(np.ones(len(self), dtype=bool))
        out.labels = np.asarray([mapping.get(str(label), str(label)) for label in self.labels], dtype=str)
        return out

    def plus(self, shas: Sequence[str], labels: Sequence[str], features: np.ndarray) -> NeighbourIndex:
        if not len(shas):
            return self
        extra = NeighbourIndex(shas, labels, features)
        if len(self) and extra.features.shape[1] != self.features.shape[1]:
            raise ValueError("the new images' features do not match the index's")
        out = NeighbourIndex([], [], np.zeros((0, 0)))
        out.shas = np.concatenate([self.shas, extra.shas])
        out.labels = np.concatenate([self.labels, extra.labels])
        out.features = np.vstack([self.features, extra.features]) if len(self) else extra.features
        return out

    def _rows(self, mask: np.ndarray) -> NeighbourIndex:
        out = NeighbourIndex([], [], np.zeros((0, 0)))
        out.shas, out.labels, out.features = self.shas[mask], self.labels[mask], self.features[mask]
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
            rows = self._rows_of(str(wanted))
            sims = self.features[rows].astype(np.float32) @ query
            found: list[Neighbour] = []
            seen: set[str] = set()
            for j in np.argsort(-sims, kind="stable"):
                sha = str(self.shas[rows[j]])
                if sha in seen:
                    continue
                seen.add(sha)
                found.append(Neighbour(sha, str(wanted), round(float(sims[j]), 4)))
                if len(found) == k:
                    break
            out.append(found)
        return out

    def _rows_of(self, label: str) -> np.ndarray:
        if self._by_label is None:
            order = np.argsort(self.labels, kind="stable")
            names, starts = np.unique(self.labels[order], return_index=True)
            bounds = [*starts[1:], len(order)]
            self._by_label = {str(n): order[s:e] for n, s, e in zip(names, starts, bounds, strict=True)}
        return self._by_label.get(label, np.zeros(0, dtype=np.int64))
