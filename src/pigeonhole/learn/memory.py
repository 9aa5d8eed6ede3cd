"""Model memory: what worked on similar datasets before ("database search first").

Each finished search leaves a :class:`SearchRecord`: the dataset's traits (no pixels,
no labels, no names: only numbers such as image size, colour, class count, images per
class, pixel statistics and the probe accuracy of the cheapest candidate) and every
candidate tried with its configuration, validation score, inference cost and time.

A new search computes the same traits and asks :meth:`ModelMemory.suggest` for the
configurations that won on the most similar past datasets; it tries those first and
then the generic ladder. Similarity is a weighted Euclidean distance between trait
vectors in log / unit scales, so "28 px grey, 10 classes, 6000 per class" is near
MNIST-like data and far from holiday photos.

Storage sits behind :class:`MemoryStore` (two methods); :class:`JsonMemoryStore` keeps
records in one JSON file, written atomically. The platform can back it by its DB.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class DatasetTraits:
    median_side: float  # median of min(width, height) of the originals, px
    grey_fraction: float  # share of images that are greyscale
    classes: int
    images_per_class: float  # median training images per class
    pixel_mean: float  # 0..1, over a sample at the probe resolution
    pixel_std: float
    probe_accuracy: float | None = None  # validation accuracy of the cheapest candidate

    def vector(self) -> np.ndarray:
        probe = self.probe_accuracy if self.probe_accuracy is not None else 0.5
        return np.array(
            [
                math.log2(max(self.median_side, 1.0)),
                2.0 * self.grey_fraction,
                math.log2(max(self.classes, 1)),
                math.log2(max(self.images_per_class, 1.0)),
                2.0 * self.pixel_mean,
                4.0 * self.pixel_std,
                4.0 * probe,
            ]
        )

    def distance(self, other: DatasetTraits) -> float:
        a, b = self.vector(), other.vector()
        if self.probe_accuracy is None or other.probe_accuracy is None:
            a, b = a[:-1], b[:-1]
        return float(np.linalg.norm(a - b))


@dataclass
class CandidateRecord:
    config: dict[str, Any]
    name: str
    val_accuracy: float
    mflops: float
    latency_ms: float | None
    seconds: float
    chosen: bool = False
    met_target: bool = False
    # Trained candidates: validation accuracy after each round and the rounds planned, so that a later
    # search with a target can plan only as many rounds as reached it here (see Suggestion.rounds_for).
    round_val_accuracy: list[float] = field(default_factory=list)
    rounds_planned: int = 0


@dataclass
class SearchRecord:
    traits: DatasetTraits
    candidates: list[CandidateRecord]
    target_accuracy: float | None
    preference: str
    budget_s: float
    seconds: float
    dataset_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SearchRecord:
        return cls(
            traits=DatasetTraits(**raw["traits"]),
            candidates=[CandidateRecord(**c) for c in raw.get("candidates", [])],
            target_accuracy=raw.get("target_accuracy"),
            preference=raw.get("preference", "balanced"),
            budget_s=float(raw.get("budget_s", 0.0)),
            seconds=float(raw.get("seconds", 0.0)),
            dataset_fingerprint=raw.get("dataset_fingerprint", ""),
            extra=dict(raw.get("extra") or {}),
        )

    def winner(self) -> CandidateRecord | None:
        chosen = [c for c in self.candidates if c.chosen]
        if chosen:
            return chosen[0]
        return max(self.candidates, key=lambda c: c.val_accuracy, default=None)


class MemoryStore(Protocol):
    def load(self) -> list[SearchRecord]: ...

    def append(self, record: SearchRecord) -> None: ...


class InMemoryStore:
    def __init__(self) -> None:
        self.records: list[SearchRecord] = []

    def load(self) -> list[SearchRecord]:
        return list(self.records)

    def append(self, record: SearchRecord) -> None:
        self.records.append(record)


class JsonMemoryStore:
    """Records in one JSON file (``{"records": [...]}``), replaced atomically on append.

    A corrupt file is treated as empty memory rather than failing a training job: the
    memory only speeds searches up, it never decides correctness.
    """

    def __init__(self, path: Path, *, max_records: int = 2000) -> None:
        self.path = Path(path)
        self.max_records = max_records
        self._lock = threading.Lock()

    def load(self) -> list[SearchRecord]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return [SearchRecord.from_json(r) for r in raw.get("records", [])]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def append(self, record: SearchRecord) -> None:
        with self._lock:
            records = [r.to_json() for r in self.load()] + [record.to_json()]
            records = records[-self.max_records :]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump({"records": records}, fh)
                os.replace(tmp, self.path)
            finally:
                Path(tmp).unlink(missing_ok=True)


@dataclass(frozen=True)
class Suggestion:
    config: dict[str, Any]
    distance: float
    val_accuracy: float
    seconds: float
    round_val_accuracy: tuple[float, ...] = ()
    rounds_planned: int = 0

    def rounds_for(self, target: float) -> int | None:
        """Rounds of training that reached ``target`` on validation when this configuration won, or None
        when it did not reach it (or was not trained).

        The first round whose validation accuracy met the target; else all the rounds planned when the
        finished candidate met it (its head on the trained features scores above the network's own
        classifier). A plan of that many rounds decays its learning rate by then, so it ends at least
        as well trained as that round was in the longer plan."""
        if self.rounds_planned <= 0 or self.val_accuracy < target:
            return None
        for i, acc in enumerate(self.round_val_accuracy):
            if acc >= target:
                return i + 1
        return self.rounds_planned


class ModelMemory:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def nearest(self, traits: DatasetTraits, k: int = 5) -> list[tuple[float, SearchRecord]]:
        scored = [(traits.distance(r.traits), r) for r in self.store.load()]
        scored.sort(key=lambda pair: pair[0])
        return scored[:k]

    def suggest(self, traits: DatasetTraits, *, k: int = 3, max_distance: float = 3.0) -> list[Suggestion]:
        """Winning configurations of the nearest past searches, nearest first, deduplicated."""
        out: list[Suggestion] = []
        seen: set[str] = set()
        for dist, record in self.nearest(traits, k=max(k * 3, 5)):
            if dist > max_distance:
                break
            win = record.winner()
            if win is None:
                continue
            ident = json.dumps(win.config, sort_keys=True)
            if ident in seen:
                continue
            seen.add(ident)
            out.append(Suggestion(win.config, dist, win.val_accuracy, win.seconds,
                                  tuple(win.round_val_accuracy), win.rounds_planned))
            if len(out) >= k:
                break
        return out

    def record(self, record: SearchRecord) -> None:
        self.store.append(record)


def compute_traits(
    sides: Sequence[int], grey: Sequence[bool], counts: Sequence[int], pixels: np.ndarray | None,
    probe_accuracy: float | None = None,
) -> DatasetTraits:
    px = pixels.astype(np.float32) / 255.0 if pixels is not None and pixels.size else None
    return DatasetTraits(
        median_side=float(np.median(sides)) if len(sides) else 0.0,
        grey_fraction=float(np.mean(grey)) if len(grey) else 0.0,
        classes=len(counts),
        images_per_class=float(np.median(counts)) if len(counts) else 0.0,
        pixel_mean=float(px.mean()) if px is not None else 0.5,
        pixel_std=float(px.std()) if px is not None else 0.25,
        probe_accuracy=probe_accuracy,
    )
