"""A head's statistics on disk: one file per version, whose rows may stay in the file of the version they came from.

Why: at 1,000 classes a head holds its 90,000 training and validation images as rows (460 MB in float32). A class
change touches one class, yet writing every row again for the new version, and reading them all back (converted to
float64) for the next change, cost three seconds and half a gigabyte of disk per version. So a grown version's file
names, for each class whose rows did not change, the file they are in and where; only new or changed rows are
written. Versions are immutable and deleted only with their model, so a file another version points into lives as
long as it does.

Reading maps the rows where they lie (read-only, zero-copy views of the file's bytes; a local store passes a memory
map, so nothing is read until a class is used), and a product converts one class to float64 when it needs it. Rows
are never edited in place, only replaced, so a view is safe to share, and a class whose ``rows`` are still the very
array that was read is known to be unchanged.

Layout: ``MAGIC``, the header's length (8 bytes, little-endian), the header (JSON: the head's settings, and per array
its offset, dtype and shape), then the arrays, each at a 64-byte boundary. Files written before this format
(``numpy.savez``) are still read; their rows are copied into the next version's file once.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pigeonhole.learn import novelty
from pigeonhole.learn.head import FeatureMap, HeadConfig, RidgeHead
from pigeonhole.learn.ridge import ClassStats

MAGIC = b"PGHHEAD2"
_FORMAT_VERSION = 1  # of the settings in the header (the same as in the older savez files)
_ALIGN = 64

Reader = Callable[[str], Any]  # blob key -> a buffer of that file's bytes (bytes, memoryview or mmap)


@dataclass(frozen=True)
class RowOrigin:
    """Where a class's rows were read from: the file's key and the byte offset of the rows in it."""

    key: str
    offset: int
    dtype: str
    rows: np.ndarray  # the very array that was read: still ``stats.rows`` means the class is unchanged


def dump(head: RidgeHead) -> bytes:
    """The head's file. Classes whose rows are unchanged since they were read from a file with a key are written
    as a reference to that file; everything else is written here."""
    arrays: list[tuple[str, np.ndarray]] = []
    if head.map.projection is not None:
        arrays += [("proj_w", head.map.projection[0]), ("proj_b", head.map.projection[1])]
    if head.weights is not None and head.bias is not None:
        arrays += [("weights", head.weights), ("bias", head.bias)]
    if head._gram is not None:  # loading 100,000 rows need not sum them again
        arrays.append(("gram", head._gram))
    stats = [head._stats[c] for c in head.classes]
    if stats:
        arrays.append(("sums", np.stack([s.sum for s in stats])))
    classes: list[dict[str, Any]] = []
    for i, s in enumerate(stats):
        origin = s.origin
        if s.rows is None:
            arrays.append((f"gram_{i}", s.gram))
            classes.append({"gram": f"gram_{i}"})
        elif origin is not None and origin.rows is s.rows:
            classes.append({"rows": {"key": origin.key, "offset": origin.offset, "dtype": origin.dtype,
                                     "count": len(s.rows)}})
        else:
            arrays.append((f"rows_{i}", _compact(s.rows)))
            classes.append({"rows": {"array": f"rows_{i}"}})
    meta = _settings(head)
    meta["classes_stats"] = classes
    offset = 0
    index: dict[str, dict[str, Any]] = {}
    for name, array in arrays:
        array = np.ascontiguousarray(array)
        index[name] = {"offset": offset, "dtype": array.dtype.str, "shape": list(array.shape)}
        offset += _padded(array.nbytes)
    meta["arrays"] = index
    header = json.dumps(meta).encode()
    out = io.BytesIO()
    out.write(MAGIC + struct.pack("<Q", len(header)) + header)
    out.write(b"\0" * (_padded(out.tell()) - out.tell()))
    for _, array in arrays:
        data = memoryview(np.ascontiguousarray(array)).cast("B")
        out.write(data)
        out.write(b"\0" * (_padded(len(data)) - len(data)))
    return out.getvalue()


def load(data: Any, *, key: str | None = None, read: Reader | None = None) -> RidgeHead:
    """A head from its file's bytes. ``key`` is the file's own blob key (rows read from it can be referenced by the
    next version's file); ``read`` opens the files other versions' rows are in."""
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    if bytes(view[: len(MAGIC)]) != MAGIC:
        return _load_savez(bytes(view))
    (length,) = struct.unpack("<Q", view[len(MAGIC): len(MAGIC) + 8])
    start = len(MAGIC) + 8
    meta = json.loads(bytes(view[start: start + length]).decode())
    base = _padded(start + length)

    def array(name: str) -> np.ndarray:
        spec = meta["arrays"][name]
        dtype = np.dtype(spec["dtype"])
        count = int(np.prod(spec["shape"], dtype=np.int64))
        return np.frombuffer(view, dtype=dtype, count=count, offset=base + spec["offset"]).reshape(spec["shape"])

    projection = (array("proj_w").copy(), array("proj_b").copy()) if "proj_w" in meta["arrays"] else None
    head = _empty(meta, projection)
    sums = array("sums") if "sums" in meta["arrays"] else np.zeros((0, head.map.dim))
    others: dict[str, memoryview] = {}
    for i, (name, entry) in enumerate(zip(meta["classes"], meta["classes_stats"], strict=True)):
        stats = ClassStats(head.map.dim, head.dense_after)
        stats.sum = sums[i].copy()
        stats.count = int(meta["counts"][i])
        if "gram" in entry:
            stats.rows, stats.gram = None, array(entry["gram"]).copy()
        elif "array" in entry["rows"]:
            stats.rows = array(entry["rows"]["array"])
            if key is not None:
                spec = meta["arrays"][entry["rows"]["array"]]
                stats.origin = RowOrigin(key, base + spec["offset"], spec["dtype"], stats.rows)
        else:
            ref = entry["rows"]
            if ref["key"] not in others:
                if read is None:
                    raise ValueError("this head keeps rows in another version's file: give a reader for it")
                others[ref["key"]] = memoryview(read(ref["key"])).cast("B")
            dtype = np.dtype(ref["dtype"])
            stats.rows = np.frombuffer(others[ref["key"]], dtype=dtype, count=ref["count"] * head.map.dim,
                                       offset=ref["offset"]).reshape(ref["count"], head.map.dim)
            stats.origin = RowOrigin(ref["key"], ref["offset"], ref["dtype"], stats.rows)
        head._stats[name] = stats
        head.classes.append(name)
    _restore_settings(head, meta)
    if "weights" in meta["arrays"]:
        head.weights, head.bias = array("weights").copy(), array("bias").copy()
    if "gram" in meta["arrays"]:
        head._gram = array("gram").copy()
    return head


def read(key: str, reader: Reader) -> RidgeHead:
    """The head in the file at ``key``, with the files its rows point into opened by the same ``reader``."""
    return load(reader(key), key=key, read=reader)


def _settings(head: RidgeHead) -> dict[str, Any]:
    return {
        "format": _FORMAT_VERSION,
        "input_dim": head.input_dim,
        "config": asdict(head.config),
        "dense_after": head.dense_after,
        "classes": head.classes,
        "counts": [head._stats[c].count for c in head.classes],
        "alpha": head.alpha,
        "temperature": head.temperature,
        "threshold": head.threshold,
        "threshold_precision": head.threshold_precision,
        "threshold_coverage": head.threshold_coverage,
        "detector": head.detector.to_meta() if head.detector is not None else None,
    }


def _empty(meta: dict[str, Any], projection: tuple[np.ndarray, np.ndarray] | None) -> RidgeHead:
    if meta.get("format") != _FORMAT_VERSION:
        raise ValueError(f"unsupported head format {meta.get('format')!r}")
    config = HeadConfig(**meta["config"])
    return RidgeHead(meta["input_dim"], config, dense_after=meta["dense_after"],
                     feature_map=FeatureMap(meta["input_dim"], config, projection))


def _restore_settings(head: RidgeHead, meta: dict[str, Any]) -> None:
    for name in ("alpha", "temperature", "threshold", "threshold_precision", "threshold_coverage"):
        setattr(head, name, meta[name])
    if meta.get("detector"):
        head.detector = novelty.Detector.from_meta(meta["detector"])


def _load_savez(data: bytes) -> RidgeHead:
    """A head saved by ``numpy.savez`` (before this format): every row in the file, one member per class."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes().decode())
        head = _empty(meta, (npz["proj_w"], npz["proj_b"]) if "proj_w" in npz else None)
        for i, name in enumerate(meta["classes"]):
            stats = ClassStats(head.map.dim, head.dense_after)
            stats.sum = npz[f"sum_{i}"].copy()
            stats.count = int(meta["counts"][i])
            if f"rows_{i}" in npz:
                stats.rows = npz[f"rows_{i}"]
            else:
                stats.rows, stats.gram = None, npz[f"gram_{i}"].copy()
            head._stats[name] = stats
            head.classes.append(name)
        _restore_settings(head, meta)
        if "weights" in npz:
            head.weights, head.bias = npz["weights"].copy(), npz["bias"].copy()
        if "gram" in npz:
            head._gram = npz["gram"].copy()
    return head


def _compact(rows: np.ndarray) -> np.ndarray:
    """The rows as float32 when that loses nothing (rows made by the map always; a head saved before the map
    rounded keeps float64)."""
    if rows.dtype == np.float32:
        return rows
    small = rows.astype(np.float32)
    return small if np.array_equal(small, rows) else rows


def _padded(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN
