"""What crosses the search's edges: its configuration, what it reports, what it returns, a scored candidate,
and the typed interface its hyper-parameter stage (:mod:`pigeonhole.learn.tune`) works through."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from pigeonhole.learn.backbones import ExtractorSpec
from pigeonhole.learn.candidates import BuiltExtractor, CandidateConfig
from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.selection import TOLERANCE

Preference = Literal["fast", "balanced", "accurate"]


@dataclass(frozen=True)
class SearchConfig:
    target_accuracy: float | None = None
    time_budget_s: float = 600.0
    preference: Preference = "balanced"
    seed: int = 0
    weights_dir: Path | None = None
    builtin_weights: bool = True  # the packaged and fetched extractors (off: only weights_dir's own catalog)
    cache_dir: Path | None = None  # pixel/feature cache and training checkpoints (node-local disk)
    output_dir: Path | None = None  # artifacts, one folder per reported candidate
    threads: int = 2
    val_fraction: float = 0.2  # used only when the set has no validation images
    max_val_per_class: int = 500
    cache_bytes: int = 4 << 30
    plateau_candidates: int = 3  # stop after this many candidates in a row without a gain
    min_gain: float = 0.002
    job_id: str = ""
    tune_min_s: float = 60.0  # the least time left that a hyper-parameter search (``tuner``) is started with

    def __post_init__(self) -> None:
        if self.preference not in TOLERANCE:
            raise ValueError(f"preference must be one of {sorted(TOLERANCE)}, not {self.preference!r}")
        if self.time_budget_s <= 0:
            raise ValueError("time_budget_s must be positive")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise ValueError("target_accuracy is a fraction in (0, 1]")


class Reporter(Protocol):
    def progress(self, fraction: float, stage: str, eta_s: float | None, metrics: dict[str, Any]) -> None: ...

    def candidate_ready(self, candidate: CandidateResult) -> None: ...

    def cancelled(self) -> bool: ...


class NullReporter:
    def progress(self, fraction: float, stage: str, eta_s: float | None, metrics: dict[str, Any]) -> None:
        pass

    def candidate_ready(self, candidate: CandidateResult) -> None:
        pass

    def cancelled(self) -> bool:
        return False


@dataclass
class CandidateResult:
    """A finished, servable candidate (its files are on disk)."""

    name: str
    config: dict[str, Any]
    val_accuracy: float
    test_metrics: dict[str, Any]
    mflops: float
    model_size_bytes: int
    latency_ms: float
    throughput_img_s: float
    train_seconds: float
    ready_at_s: float  # seconds since the search started
    artifacts: dict[str, str]
    card: dict[str, Any]


@dataclass
class SearchResult:
    chosen: CandidateResult | None
    reported: list[CandidateResult]
    leaderboard: list[dict[str, Any]]
    stop_reason: str  # target_met | budget | plateau (incl. perfect validation) | exhausted | cancelled | no_candidate
    elapsed_s: float
    first_candidate_s: float | None
    traits: dict[str, Any]
    tuning: dict[str, Any] | None = None  # the hyper-parameter search's trials, when one ran
    mirror: dict[str, Any] | None = None  # whether mirroring changes the class (learn.mirror), when it was asked
    notes: list[str] = field(default_factory=list)  # plain sentences for the user (e.g. no pretrained extractor)


@dataclass
class Scored:
    """A candidate scored on validation, not yet exported."""

    config: CandidateConfig
    val_accuracy: float
    mflops: float
    seconds: float
    extractor: BuiltExtractor
    head: RidgeHead
    train_info: dict[str, Any] = field(default_factory=dict)
    order: int = 0
    val_features: np.ndarray | None = None
    train_features: np.ndarray | None = None  # of the training images the head holds, ``train_keys``, in order
    train_keys: list[str] | None = None
    members: list[tuple[ExtractorSpec, torch.nn.Module, str]] | None = None  # trained stacks: for their flip view
    evaluated_on: int | None = None  # images behind val_accuracy (validation, or train+val left out one at a time)
    val_in_head: bool = False  # the head already holds the validation images (left-out scoring)


class TuneStage(Protocol):
    """What the hyper-parameter stage may use of the search that calls it."""

    @property
    def config(self) -> SearchConfig: ...

    @property
    def class_count(self) -> int: ...

    def scored(self) -> Sequence[Scored]:
        """Every candidate scored so far, in order."""
        ...

    def remaining(self) -> float: ...

    def spent(self, seconds: float) -> None:
        """Work the stage did that its plan says took ``seconds`` (moves only a virtual clock)."""
        ...

    def finish_s(self, config: CandidateConfig) -> float:
        """Seconds kept back for finishing a candidate (export, test metrics)."""
        ...

    def progress(self, stage: str) -> None: ...

    def cancelled(self) -> bool: ...

    def run_trained(self, config: CandidateConfig, reserve_s: float) -> Scored | None:
        """Train and score a recipe like any candidate of the ladder (None: it did not fit)."""
        ...

    def classifier_start(self, config: CandidateConfig) -> tuple[np.ndarray, np.ndarray] | None:
        """The classifier layer a fine-tune of ``config`` starts from (see runners.probe_classifier)."""
        ...

    def training_pixels(self, config: CandidateConfig) -> np.ndarray: ...

    def validation_pixels(self, config: CandidateConfig) -> np.ndarray: ...

    def targets(self, split: str) -> np.ndarray:
        """Class indices of a split's images."""
        ...


@dataclass
class TuneOutcome:
    scored: Scored | None  # a retrained better candidate, or None
    summary: dict[str, Any] | None  # what was tried, for the card and the job


# Called when the ladder is done and the target unmet.
Tuner = Callable[[TuneStage, Scored | None], TuneOutcome]
