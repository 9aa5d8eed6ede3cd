"""Automatic model building: an anytime search from a labelled set to a served model.

Entry point: :func:`run_search` (plain data in, files and plain data out; no database).

Order of work (cheapest first, so a usable model exists within seconds):

1. **Probe**: the cheapest candidate for the data (MobileNetV2 features at 160 px + a
   ridge head for photos; a ridge head on raw pixels with random features for tiny
   images). It is reported through ``reporter.candidate_ready`` at once.
2. **Remembered winners**: configurations that won on the most similar past datasets
   (see :mod:`pigeonhole.learn.memory`).
3. **Generic ladder**: larger resolution, another extractor family, flip test-time
   augmentation; then fine-tuning the best pretrained extractor from a linear probe (its features are
   concatenated with the frozen ones: a cheap ensemble in one graph), or a small CNN
   from scratch for small/grey images.
4. **Hyper-parameter search** (optional ``tuner``, e.g. Ray Tune + ASHA) over what is
   left of the budget, only when a target was given and is still not met.

Every candidate is scored on the validation split. A candidate that becomes the
selection (see :func:`pigeonhole.learn.selection.select`) is finished: head refit on train+val, one ONNX file,
test metrics measured *on that ONNX file*, a card; then reported. Stops when the target
is met (unless ``preference="accurate"``), the budget is spent (checked within one
training batch or one inference batch; final work is reserved up front), the ladder
is exhausted or has plateaued, or ``reporter.cancelled()``.

The parts, Ray Tune's way: :mod:`~pigeonhole.learn.planner` proposes the next candidate,
:mod:`~pigeonhole.learn.budget` owns the clock and every time estimate, :mod:`~pigeonhole.learn.runners` runs
one candidate of each kind, :mod:`~pigeonhole.learn.finish` makes a selected one servable, and the loop here
ties them together. The clock and the cost model are injected (:func:`run_search`), so a test can state "a step
costs 0.3 s, the budget is 60 s" and get the same plan on any machine.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from pigeonhole.learn.budget import Costs, MeasuredCosts
from pigeonhole.learn.candidates import CandidateConfig
from pigeonhole.learn.clock import SYSTEM_CLOCK, Clock
from pigeonhole.learn.context import SearchContext, plain_name
from pigeonhole.learn.data import ImageSource, TrainingSet
from pigeonhole.learn.finish import finish
from pigeonhole.learn.memory import CandidateRecord, DatasetTraits, ModelMemory, SearchRecord, compute_traits
from pigeonhole.learn.planner import NO_PRETRAINED, SMALL_SIDE, Planner
from pigeonhole.learn.runners import probe_classifier, run_flip_view, run_frozen, run_trained, training_pixels
from pigeonhole.learn.search_types import (
    CandidateResult,
    NullReporter,
    Reporter,
    Scored,
    SearchConfig,
    SearchResult,
    Tuner,
)
from pigeonhole.learn.selection import probe, select

OPTIONAL_SHARE = 0.08  # optional frozen candidates may take at most this share of the budget


class Search:
    """One search: the loop over the planner's candidates. It is also the :class:`TuneStage` the hyper-parameter
    stage works through."""

    def __init__(self, ts: TrainingSet, source: ImageSource, config: SearchConfig, reporter: Reporter, *,
                 memory: ModelMemory | None = None, tuner: Tuner | None = None, clock: Clock = SYSTEM_CLOCK,
                 costs: Costs | None = None) -> None:
        self.ctx = SearchContext(ts, source, config, reporter, clock, costs or MeasuredCosts())
        self.planner = Planner(self.ctx)
        self.memory = memory
        self.tuner = tuner
        self.candidates: list[Scored] = []
        self.leaderboard: list[dict[str, Any]] = []
        self.reported: list[CandidateResult] = []
        self.first_s: float | None = None
        self.tuning: dict[str, Any] | None = None
        self.short_of_time = False  # a candidate was left out because it would not fit
        self.best_acc = -1.0
        self.since_gain = 0
        self.probe_acc: float | None = None
        self.traits: DatasetTraits | None = None

    # ------------------------------------------------------------------ TuneStage
    @property
    def config(self) -> SearchConfig:
        return self.ctx.config

    @property
    def class_count(self) -> int:
        return len(self.ctx.classes)

    def scored(self) -> Sequence[Scored]:
        return list(self.candidates)

    def remaining(self) -> float:
        return self.ctx.budget.remaining()

    def spent(self, seconds: float) -> None:
        self.ctx.budget.spent(seconds)

    def finish_s(self, config: CandidateConfig) -> float:
        return self.ctx.budget.finish_s(config)

    def progress(self, stage: str) -> None:
        self.ctx.progress(stage)

    def cancelled(self) -> bool:
        return self.ctx.cancelled()

    def run_trained(self, config: CandidateConfig, reserve_s: float) -> Scored | None:
        return run_trained(self.ctx, config, reserve_s)

    def classifier_start(self, config: CandidateConfig) -> tuple[np.ndarray, np.ndarray] | None:
        return probe_classifier(self.ctx, config, announce=False)

    def training_pixels(self, config: CandidateConfig) -> np.ndarray:
        return training_pixels(self.ctx, config)

    def validation_pixels(self, config: CandidateConfig) -> np.ndarray:
        return self.ctx.pixel_fn(config)(self.ctx.keys("val"))

    def targets(self, split: str) -> np.ndarray:
        return self.ctx.y(split)

    # ------------------------------------------------------------------ the loop
    def run(self) -> SearchResult:
        ctx, cfg = self.ctx, self.ctx.config
        torch.set_num_threads(max(1, cfg.threads))
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        ctx.progress("Looking at your images", fraction=0.0)
        sides, grey_flags = self.sample_traits()
        ctx.median_side = float(np.median(sides)) if sides else 224.0
        ctx.grey = bool(grey_flags) and float(np.mean(grey_flags)) > 0.9
        small = ctx.median_side <= SMALL_SIDE
        self.planner.start(small, ctx.grey, ctx.median_side)
        if NO_PRETRAINED in ctx.notes:
            ctx.progress("No pretrained image extractor is installed: training from scratch, which is much less "
                         "accurate on photos (an administrator can add one: `pigeonhole weights list`)")
        counts = [sum(1 for i in ctx.splits["train"] if i.label == c) for c in ctx.classes]
        try:
            stop_reason = self.climb(small, sides, grey_flags, counts) or self.tune_stage()
        finally:
            if ctx.cache is not None:
                ctx.cache.close()
        if stop_reason == "exhausted" and self.short_of_time:
            stop_reason = "budget"  # candidates were left out because they would not fit
        if ctx.cancelled():
            stop_reason = "cancelled"
        chosen = self.reported[-1] if self.reported else None
        traits = self.traits or compute_traits(sides, grey_flags, counts, None, self.probe_acc)
        if self.memory is not None and self.candidates and stop_reason != "cancelled":
            self.save_memory(self.memory, traits)
        ctx.progress("Done" if chosen else "Stopped before any model was ready", fraction=1.0)
        return SearchResult(
            chosen=chosen, reported=self.reported, leaderboard=self.leaderboard,
            stop_reason=stop_reason if chosen else "no_candidate", elapsed_s=ctx.budget.elapsed(),
            first_candidate_s=self.first_s, traits=traits.__dict__, tuning=self.tuning,
            mirror=ctx.mirror.as_dict() if ctx.mirror is not None else None, notes=list(ctx.notes),
        )

    def climb(self, small: bool, sides: list[int], grey_flags: list[bool], counts: list[int]) -> str | None:
        """Run the planner's candidates; why it stopped, or None when they ran out."""
        ctx = self.ctx
        while True:
            if ctx.cancelled():
                return "cancelled"
            if ctx.budget.remaining() <= 0:
                return "budget"
            config = self.planner.next()
            if config is None:
                return None
            if not self.fits(config):
                continue
            try:
                scored = self.run_candidate(config)
            except InterruptedError:
                return "cancelled" if ctx.cancelled() else "budget"
            if scored is None:
                continue
            if self.traits is None:  # the first candidate measured the data: remembered recipes go next
                self.probe_acc = scored.val_accuracy
                sample = ctx.pixels.get(ctx.keys("train")[:64], 32, color="L" if ctx.grey else "RGB",
                                        policy="resize")
                self.traits = compute_traits(sides, grey_flags, counts, sample, self.probe_acc)
                if self.memory is not None:
                    self.planner.remember(self.memory, self.traits, small)
            reason = self.after(config, scored, small)
            if reason is not None:
                return reason

    def fits(self, config: CandidateConfig) -> bool:
        """The first candidate always runs (it is the anytime model); later frozen ones only if they fit, and side
        dishes (another family, flip views) only when cheap next to the training still to come."""
        ctx = self.ctx
        if ctx.current is None or config.kind != "frozen":
            return True
        need = ctx.budget.frozen_need_s(config, ctx.frozen_done)
        if need > ctx.budget.remaining():
            self.short_of_time = True
            return False
        if config.optional and self.planner.trained_next() and need > OPTIONAL_SHARE * ctx.config.time_budget_s:
            self.planner.defer(config)
            return False
        return True

    def run_candidate(self, config: CandidateConfig) -> Scored | None:
        ctx = self.ctx
        if config.flip_tta and ctx.mirror_changes_class():
            return None  # a mirrored image shows something else here
        if config.kind == "frozen":
            return run_frozen(ctx, config)
        scored = run_trained(ctx, config, ctx.budget.finish_s(config))
        if scored is None:  # no time to train: the deferred side candidates get their turn
            self.short_of_time = True
            self.planner.no_time_to_train()
        return scored

    def after(self, config: CandidateConfig, scored: Scored, small: bool) -> str | None:
        """Take a scored candidate in; why the search ends now, if it does."""
        ctx, cfg = self.ctx, self.ctx.config
        gain = scored.val_accuracy - self.best_acc
        self.best_acc = max(self.best_acc, scored.val_accuracy)
        self.since_gain = 0 if gain > cfg.min_gain else self.since_gain + 1
        self.consider(scored)
        if small and config.kind == "frozen" and config.spec.pretrained and self.probe_acc is not None \
                and scored.val_accuracy <= self.probe_acc:
            self.planner.scratch_first()
        if not self.target_met():
            flipped = run_flip_view(ctx, scored)
            if flipped is not None:
                self.best_acc = max(self.best_acc, flipped.val_accuracy)
                self.consider(flipped)
        if self.target_met() and cfg.preference != "accurate":
            return "target_met"
        if config.train.max_epochs:
            self.planner.retry(config)  # the remembered rounds were not enough here: the ladder may train it fully
        if ctx.current is not None and ctx.current.val_accuracy >= 1.0 and cfg.preference != "fast" \
                and not probe(ctx.current):
            return "plateau"  # nothing can beat a perfect validation score (a probe's: see selection.probe)
        if self.since_gain >= cfg.plateau_candidates:
            if not self.planner.plateaued():
                return "plateau"
            self.since_gain = 0
        return None

    def tune_stage(self) -> str:
        """When the ladder is done and a target is unmet: the hyper-parameter search, if one was given."""
        ctx, cfg = self.ctx, self.ctx.config
        if self.tuner is None or self.target_met() or cfg.target_accuracy is None \
                or ctx.budget.remaining() <= cfg.tune_min_s or ctx.cancelled():
            return "exhausted"
        ctx.progress("Searching training settings (hyper-parameter search)")
        outcome = self.tuner(self, ctx.current)
        self.tuning = outcome.summary
        if outcome.scored is not None:
            self.consider(outcome.scored)
        return "target_met" if self.target_met() else "exhausted"

    def consider(self, scored: Scored) -> bool:
        """Add to the leaderboard; finish and report it when it becomes the selection."""
        ctx = self.ctx
        scored.order = len(self.candidates)
        self.candidates.append(scored)
        self.leaderboard.append({"name": scored.config.name, "val_accuracy": scored.val_accuracy,
                                 "mflops": scored.mflops, "seconds": round(scored.seconds, 2),
                                 "config": scored.config.to_dict(),
                                 **({"tuning": scored.train_info["tuning"]} if "tuning" in scored.train_info else {})})
        if select(self.candidates, ctx.config.target_accuracy, ctx.config.preference) is not scored:
            return False
        ctx.progress(f"Preparing the better model ({plain_name(scored.config)}) for use")
        result = finish(ctx, scored, self.leaderboard, len(self.reported))
        ctx.current = scored
        self.reported.append(result)
        if self.first_s is None:
            self.first_s = result.ready_at_s
        ctx.reporter.candidate_ready(result)
        return True

    def target_met(self) -> bool:
        t, current = self.ctx.config.target_accuracy, self.ctx.current
        return t is not None and current is not None and current.val_accuracy >= t

    # ------------------------------------------------------------------ the data and the memory
    def sample_traits(self) -> tuple[list[int], list[bool]]:
        """Shorter sides and greyness of up to 200 training images (hints: a bad header is skipped)."""
        ctx = self.ctx
        train = sorted(ctx.splits["train"], key=lambda i: i.key)
        random.Random(ctx.config.seed).shuffle(train)
        sides, grey = [], []
        for img in train[:200]:
            data = ctx.source.open(img.key)
            try:
                pil = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
                sides.append(min(pil.size))
                grey.append(pil.mode in ("L", "LA", "1", "I", "I;16"))
            except Exception:  # traits are hints; a bad header must not fail the job
                continue
        return sides, grey

    def save_memory(self, memory: ModelMemory, traits: DatasetTraits) -> None:
        ctx = self.ctx
        chosen = ctx.current
        target = ctx.config.target_accuracy
        memory.record(SearchRecord(
            traits=traits,
            candidates=[
                CandidateRecord(config=s.config.to_dict(), name=s.config.name, val_accuracy=s.val_accuracy,
                                mflops=s.mflops, latency_ms=None, seconds=s.seconds, chosen=s is chosen,
                                met_target=target is not None and s.val_accuracy >= target,
                                round_val_accuracy=[round(float(h["val_accuracy"]), 5)
                                                    for h in s.train_info.get("history", [])],
                                rounds_planned=int(s.train_info.get("epochs_planned", 0)))
                for s in self.candidates
            ],
            target_accuracy=target, preference=ctx.config.preference, budget_s=ctx.config.time_budget_s,
            seconds=ctx.budget.elapsed(), dataset_fingerprint=ctx.ts.fingerprint(),
        ))


def run_search(
    training_set: TrainingSet,
    source: ImageSource,
    config: SearchConfig,
    reporter: Reporter | None = None,
    *,
    memory: ModelMemory | None = None,
    tuner: Tuner | None = None,
    clock: Clock = SYSTEM_CLOCK,
    costs: Costs | None = None,
) -> SearchResult:
    """Build the best model the budget allows; see the module docstring for the order of work.

    ``reporter.candidate_ready`` receives each candidate that becomes the selection, with
    its files already written under ``config.output_dir``: serve it at once. The return
    value's ``chosen`` is the last one reported. ``clock`` and ``costs``: the real clock and costs measured
    here (the product), or a :class:`~pigeonhole.learn.clock.VirtualClock` and
    :class:`~pigeonhole.learn.budget.FixedCosts` for a plan that does not depend on the machine.
    """
    search = Search(training_set, source, config, reporter or NullReporter(), memory=memory, tuner=tuner,
                    clock=clock, costs=costs)
    return search.run()
