"""The images a version's head holds (sha256, class, split, size), one block per class, as ``learn/array_file``.

An expand job checks it against the head's per-class counts, takes the validation images out of it to choose
settings, and writes the new version's. At 1,000 classes it lists 90,000 images: as JSON, reading and writing it
cost half a second of every class change. Held per class, a grown version's manifest points at the unchanged
classes' blocks in the files that hold them, so a change writes only its new classes. Manifests written as JSON
before this format still load.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pigeonhole.learn import array_file
from pigeonhole.learn.array_file import ArrayFile, Origin, Reader
from pigeonhole.learn.class_blocks import dump_fields, load_fields
from pigeonhole.models.job_contracts import ImageRow

MANIFEST_FILE = "images.manifest"
MAGIC = b"PGHIMGS2"
_FIELDS = ("shas", "splits", "sizes", "order")


@dataclass(frozen=True)
class _Block:
    shas: np.ndarray  # ASCII bytes
    splits: np.ndarray  # ASCII bytes
    sizes: np.ndarray  # int64
    order: np.ndarray  # int64: each row's place in the list, so the rows come back in the order they were given
    origins: tuple[Origin | None, ...] = (None, None, None, None)


class Manifest:
    def __init__(self, blocks: dict[str, _Block] | None = None) -> None:
        self._blocks = blocks or {}

    @classmethod
    def from_rows(cls, rows: Iterable[ImageRow], start: int = 0) -> Manifest:
        grouped: dict[str, list[tuple[int, ImageRow]]] = {}
        for place, row in enumerate(rows, start):
            grouped.setdefault(row[1], []).append((place, row))
        return cls({label: _Block(np.asarray([r[0].encode() for _, r in mine], dtype="S64"),
                                  np.asarray([r[2].encode() for _, r in mine], dtype="S5"),
                                  np.asarray([r[3] for _, r in mine], dtype=np.int64),
                                  np.asarray([place for place, _ in mine], dtype=np.int64))
                    for label, mine in grouped.items()})

    def rows(self) -> list[ImageRow]:
        """The rows in the order they were listed (the order the head's images were added in)."""
        placed = [(int(place), (sha.decode(), label, split.decode(), int(size))) for label, b in self._blocks.items()
                  for sha, split, size, place in zip(b.shas, b.splits, b.sizes, b.order, strict=True)]
        return [row for _, row in sorted(placed, key=lambda p: p[0])]

    def counts(self) -> dict[str, int]:
        return {label: len(b.shas) for label, b in self._blocks.items()}

    def renamed(self, mapping: dict[str, str]) -> Manifest:
        return Manifest({mapping.get(k, k): b for k, b in self._blocks.items()})

    def only(self, classes: set[str]) -> Manifest:
        return Manifest({k: b for k, b in self._blocks.items() if k in classes})

    def plus(self, rows: Iterable[ImageRow]) -> Manifest:
        """New classes' images (a class already listed is replaced: a refresh lists all its images)."""
        after = 1 + max((int(b.order.max()) for b in self._blocks.values() if len(b.order)), default=-1)
        return Manifest({**self._blocks, **Manifest.from_rows(rows, after)._blocks})

    def to_bytes(self) -> bytes:
        return dump_fields(MAGIC, {"format": 1}, {label: tuple((getattr(b, name), origin) for name, origin
                                                               in zip(_FIELDS, b.origins, strict=True))
                                                  for label, b in self._blocks.items()}, _FIELDS)

    @classmethod
    def read(cls, key: str, reader: Reader) -> Manifest:
        """The manifest at ``key`` (JSON rows, as written before this format, or blocks pointing into other
        files, opened by ``reader``)."""
        data: Any = reader(key)
        if not array_file.has_magic(data, MAGIC):
            return cls.from_rows((sha, label, split, int(size)) for sha, label, split, size in json.loads(bytes(data)))
        return cls({label: _Block(*arrays, origins=origins)
                    for label, (arrays, origins) in load_fields(ArrayFile(data, MAGIC, key=key, read=reader),
                                                                _FIELDS).items()})
