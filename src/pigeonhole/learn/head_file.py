"""A head's statistics on disk: one file per version, whose rows may stay in the file of the version they came from.

A head holds each class with fewer images than feature dimensions as its rows: at 1,000 classes, the 90,000
training and validation images, 460 MB in float32. A grown version's file points at each unchanged class's rows
where they already are (``array_file``: a training's file or an earlier expand's), so a class change writes only
new or changed rows. Rows are read as float32 views and widened one class at a time when a product needs them
(``ridge.ClassStats``). Files saved by ``numpy.savez`` before this format still load; their rows are written into
the next version's file once.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from typing import Any

import numpy as np

from pigeonhole.learn import array_file, novelty
from pigeonhole.learn.array_file import ArrayFile, Reader
from pigeonhole.learn.head import FeatureMap, HeadConfig, RidgeHead
from pigeonhole.learn.ridge import ClassStats

MAGIC = b"PGHHEAD2"
_FORMAT_VERSION = 1  # of the settings in the header (the same as in the older savez files)


def dump(head: RidgeHead) -> bytes:
    """The head's file: rows unchanged since they were read from a file with a key point there; the rest is here."""
    arrays: list[tuple[str, np.ndarray | array_file.Origin]] = []
    if head.map.projection is not None:
        arrays += [("proj_w", head.map.projection[0]), ("proj_b", head.map.projection[1])]
    if head.weights is not None and head.bias is not None:
        arrays += [("weights", head.weights), ("bias", head.bias)]
    if head._gram is not None:  # loading 100,000 rows need not sum them again
        arrays.append(("gram", head._gram))
    stats = [head._stats[c] for c in head.classes]
    if stats:
        arrays.append(("sums", np.stack([s.sum for s in stats])))
    for i, s in enumerate(stats):
        if s.rows is None:
            arrays.append((f"gram_{i}", s.gram))
        else:
            place = array_file.kept(s.origin, s.rows)
            arrays.append((f"rows_{i}", place if isinstance(place, array_file.Origin) else _compact(s.rows)))
    return array_file.dump(MAGIC, _settings(head), arrays)


def load(data: Any, *, key: str | None = None, read: Reader | None = None) -> RidgeHead:
    """A head from its file's bytes. ``key`` is the file's own blob key (rows read from it can be pointed at by the
    next version's file); ``read`` opens the files other versions' rows are in."""
    if not array_file.has_magic(data, MAGIC):
        return _load_savez(bytes(data))
    file = ArrayFile(data, MAGIC, key=key, read=read)
    meta = file.meta
    projection = (file.array("proj_w").copy(), file.array("proj_b").copy()) if "proj_w" in file else None
    head = _empty(meta, projection)
    sums = file.array("sums") if "sums" in file else np.zeros((0, head.map.dim))
    for i, name in enumerate(meta["classes"]):
        stats = ClassStats(head.map.dim, head.dense_after)
        stats.sum = sums[i].copy()
        stats.count = int(meta["counts"][i])
        if f"gram_{i}" in file:
            stats.rows, stats.gram = None, file.array(f"gram_{i}").copy()
        else:
            stats.rows, stats.origin = file.read_with_origin(f"rows_{i}")
        head._stats[name] = stats
        head.classes.append(name)
    _restore_settings(head, meta)
    if "weights" in file:
        head.weights, head.bias = file.array("weights").copy(), file.array("bias").copy()
    if "gram" in file:
        head._gram = file.array("gram").copy()
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
