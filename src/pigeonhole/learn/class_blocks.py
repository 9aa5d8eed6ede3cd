"""Image features kept one block per class, with each image's sha256: the shape of every per-image file a version
keeps beside its head (the neighbour index, the test images' features).

Why per class: growing adds, removes or refreshes whole classes, so a grown version's file lists its classes and
writes only the blocks that changed; the others are references into the file that holds them (``array_file``).
At 1,000 classes that is the difference between writing a few hundred kilobytes and a few hundred megabytes for
each class change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pigeonhole.learn import array_file
from pigeonhole.learn.array_file import ArrayFile, Origin

_FIELDS = ("shas", "features")
Field = tuple[np.ndarray, Origin | None]  # an array and where it was read from (None: not read from a file)


@dataclass(frozen=True)
class Block:
    """One class's images: sha256 (ASCII bytes) and features, with where each array was read from (an unchanged
    block is written as a reference)."""

    shas: np.ndarray
    features: np.ndarray
    origins: tuple[Origin | None, Origin | None] = (None, None)

    def same_images(self, shas: Sequence[str]) -> bool:
        """Whether the block holds exactly these images, in this order."""
        return len(self.shas) == len(shas) and all(bytes(a) == b.encode() for a, b in zip(self.shas, shas,
                                                                                         strict=True))


class ClassBlocks:
    """Blocks by class name, in the order the classes were added. Never edited in place: every change returns a new
    one sharing the unchanged blocks, so a block still read from a file is known to be unchanged."""

    def __init__(self, blocks: dict[str, Block] | None = None) -> None:
        self._blocks: dict[str, Block] = dict(blocks or {})

    @classmethod
    def from_rows(cls, shas: Sequence[str], labels: Sequence[str], features: np.ndarray) -> ClassBlocks:
        """Rows grouped by class (first appearance order), each class's rows in their given order."""
        if not (len(shas) == len(labels) == len(features)):
            raise ValueError("images, labels and features differ in number")
        if not len(shas):
            return cls()
        names = np.asarray([str(label) for label in labels], dtype=str)
        codes = np.asarray([str(s).encode() for s in shas])
        masks = {label: names == label for label in dict.fromkeys(names.tolist())}
        return cls({label: Block(codes[mine], features[mine]) for label, mine in masks.items()})

    def __len__(self) -> int:
        return sum(len(b.shas) for b in self._blocks.values())

    @property
    def labels(self) -> list[str]:
        return list(self._blocks)

    @property
    def shas(self) -> list[str]:
        return [s.decode() for b in self._blocks.values() for s in b.shas]

    @property
    def width(self) -> int | None:
        """The features' dimension (None while no block has a row)."""
        return next((b.features.shape[1] for b in self._blocks.values() if len(b.shas)), None)

    def get(self, label: str) -> Block | None:
        return self._blocks.get(label)

    def without(self, classes: Sequence[str]) -> ClassBlocks:
        gone = set(classes)
        return ClassBlocks({k: b for k, b in self._blocks.items() if k not in gone})

    def renamed(self, mapping: dict[str, str]) -> ClassBlocks:
        return ClassBlocks({mapping.get(k, k): b for k, b in self._blocks.items()})

    def with_block(self, label: str, block: Block) -> ClassBlocks:
        """This one with ``label``'s block replaced (or added last)."""
        return ClassBlocks({**self._blocks, label: block})

    def plus(self, extra: ClassBlocks) -> ClassBlocks:
        """Each of ``extra``'s blocks appended to the block of its class (a new class comes last)."""
        if self.width is not None and extra.width is not None and extra.width != self.width:
            raise ValueError("the new images' features do not match the ones kept")
        blocks = dict(self._blocks)
        for label, block in extra._blocks.items():
            old = blocks.get(label)
            blocks[label] = block if old is None else Block(np.concatenate([old.shas, block.shas]),
                                                            np.vstack([old.features, block.features]))
        return ClassBlocks(blocks)

    def items(self) -> list[tuple[str, Block]]:
        return list(self._blocks.items())

    def dump(self, magic: bytes, meta: dict[str, object]) -> bytes:
        """A file of these blocks (``meta`` is kept in its header beside the class names)."""
        return dump_fields(magic, meta, {label: ((b.shas, b.origins[0]), (b.features, b.origins[1]))
                                         for label, b in self._blocks.items()}, _FIELDS)

    @classmethod
    def load(cls, file: ArrayFile) -> ClassBlocks:
        """The blocks of a file written by :meth:`dump`, as views that remember where they lie."""
        return cls({label: Block(arrays[0], arrays[1], (origins[0], origins[1]))
                    for label, (arrays, origins) in load_fields(file, _FIELDS).items()})


def dump_fields(magic: bytes, meta: dict[str, object], blocks: dict[str, tuple[Field, ...]],
                fields: tuple[str, ...]) -> bytes:
    """A file of per-class arrays named ``fields`` (array ``{field}_{i}`` of the i-th class), each array still the
    one read from a file written as a reference to it."""
    arrays: list[tuple[str, np.ndarray | Origin]] = []
    for i, values in enumerate(blocks.values()):
        arrays += [(f"{name}_{i}", array_file.kept(origin, array))
                   for name, (array, origin) in zip(fields, values, strict=True)]
    return array_file.dump(magic, {**meta, "labels": list(blocks)}, arrays)


def load_fields(file: ArrayFile, fields: tuple[str, ...],
                ) -> dict[str, tuple[tuple[np.ndarray, ...], tuple[Origin | None, ...]]]:
    """Per class, the arrays named ``fields`` of a file written by :func:`dump_fields`, and where each lies."""
    out = {}
    for i, label in enumerate(file.meta["labels"]):
        read = [file.read_with_origin(f"{name}_{i}") for name in fields]
        out[label] = (tuple(array for array, _ in read), tuple(origin for _, origin in read))
    return out
