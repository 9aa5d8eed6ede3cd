"""Files of named arrays, some of which may stay in another file: how a grown version shares what did not change.

Why: at 1,000 classes a version holds its 90,000 training and validation images twice (the head's rows, 460 MB in
float32, and the neighbour index's unit features, 230 MB in float16). A class change touches one class, yet writing
all of it again for the new version and reading it back for the next change cost seconds and most of a gigabyte of
disk per version. So an array that did not change is written as a reference (the file it is in, where, its dtype
and shape) and only new or changed arrays are written. Versions are immutable and deleted only with their model
(backups take every version's files), so a file another version points into lives as long as it does; a reference
always names the file that holds the bytes, never one that points on.

Reading gives read-only views of the files' bytes (a local store passes a memory map, so nothing is read until an
array is used). Arrays are never edited in place, only replaced, so a view is safe to share, and an array that is
still the very object that was read is known to be unchanged (:class:`Origin`).

Layout: a magic string naming the kind of file, the header's length (8 bytes, little-endian), the header (JSON: the
caller's ``meta`` and, per array, its offset, dtype and shape or its reference), then the arrays, each at a 64-byte
boundary.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_ALIGN = 64

Reader = Callable[[str], Any]  # blob key -> a buffer of that file's bytes (bytes, memoryview or mmap)


@dataclass(frozen=True)
class Origin:
    """Where an array was read from. ``array`` is the very object that was read: while a holder still has it, the
    array is unchanged and can be written as a reference."""

    key: str
    offset: int
    dtype: str
    shape: tuple[int, ...]
    array: np.ndarray

    def reference(self) -> dict[str, Any]:
        return {"key": self.key, "offset": self.offset, "dtype": self.dtype, "shape": list(self.shape)}


def kept(origin: Origin | None, array: np.ndarray) -> Origin | np.ndarray:
    """``origin`` when ``array`` is still the one it describes (write a reference), else ``array`` (write it)."""
    return origin if origin is not None and origin.array is array else array


def has_magic(data: Any, magic: bytes) -> bool:
    return bytes(memoryview(data).cast("B")[: len(magic)]) == magic


def dump(magic: bytes, meta: dict[str, Any], arrays: Sequence[tuple[str, np.ndarray | Origin]]) -> bytes:
    """A file of ``meta`` and ``arrays``: each an array to write here, or the :class:`Origin` of one to point at."""
    index: dict[str, dict[str, Any]] = {}
    inline: list[np.ndarray] = []
    offset = 0
    for name, value in arrays:
        if isinstance(value, Origin):
            index[name] = value.reference()
            continue
        array = np.ascontiguousarray(value)
        index[name] = {"offset": offset, "dtype": array.dtype.str, "shape": list(array.shape)}
        inline.append(array)
        offset += _padded(array.nbytes)
    header = json.dumps({**meta, "arrays": index}).encode()
    out = io.BytesIO()
    out.write(magic + struct.pack("<Q", len(header)) + header)
    out.write(b"\0" * (_padded(out.tell()) - out.tell()))
    for array in inline:
        data = memoryview(array).cast("B")
        out.write(data)
        out.write(b"\0" * (_padded(len(data)) - len(data)))
    return out.getvalue()


class ArrayFile:
    """A file written by :func:`dump`, read from ``data``. ``key`` is its own blob key (arrays read from it can be
    pointed at by the next file); ``read`` opens the files its references name."""

    def __init__(self, data: Any, magic: bytes, *, key: str | None = None, read: Reader | None = None) -> None:
        self._view = memoryview(data).cast("B")
        if bytes(self._view[: len(magic)]) != magic:
            raise ValueError("not a file of this kind")
        (length,) = struct.unpack("<Q", self._view[len(magic): len(magic) + 8])
        start = len(magic) + 8
        self.meta: dict[str, Any] = json.loads(bytes(self._view[start: start + length]).decode())
        self._base = _padded(start + length)
        self._key, self._read = key, read
        self._others: dict[str, memoryview] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.meta["arrays"]

    def array(self, name: str) -> np.ndarray:
        """The array, a read-only view (copy it before changing it in place)."""
        return self.read_with_origin(name)[0]

    def read_with_origin(self, name: str) -> tuple[np.ndarray, Origin | None]:
        """The array and where it lies (None when this file has no key and holds the array itself)."""
        spec = self.meta["arrays"][name]
        dtype, shape = np.dtype(spec["dtype"]), tuple(int(n) for n in spec["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if "key" in spec:
            source, offset = self._other(spec["key"]), int(spec["offset"])
            array = np.frombuffer(source, dtype=dtype, count=count, offset=offset).reshape(shape)
            return array, Origin(spec["key"], offset, spec["dtype"], shape, array)
        offset = self._base + int(spec["offset"])
        array = np.frombuffer(self._view, dtype=dtype, count=count, offset=offset).reshape(shape)
        return array, Origin(self._key, offset, spec["dtype"], shape, array) if self._key is not None else None

    def _other(self, key: str) -> memoryview:
        if key not in self._others:
            if self._read is None:
                raise ValueError("this file keeps arrays in another version's file: give a reader for it")
            self._others[key] = memoryview(self._read(key)).cast("B")
        return self._others[key]


def _padded(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN
