"""The search's time: the clock, the cost of each kind of work, and every estimate made from them.

One object owns them so that each decision of the search ("does this candidate fit?", "how many rounds?",
"what to keep back for the mirrored view?") is one call with one source of time. Costs are either measured on
this machine as the search goes (:class:`MeasuredCosts`, the product) or stated (:class:`FixedCosts`, tests and
replays): with a :class:`pigeonhole.learn.clock.VirtualClock` the latter give the same plan on any machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from torch import nn

from pigeonhole.learn.backbones import ExtractorSpec
from pigeonhole.learn.candidates import CandidateConfig, TrainParams
from pigeonhole.learn.clock import Clock
from pigeonhole.learn.train import choose_precision, measure_step_seconds, native_bf16, quantize_epochs

FINISH_FIXED_S = 5.5  # exporting, timing, opening a session and choosing the unknown detector (1,280 dims, 2 cores)


class Costs(Protocol):
    """What a piece of work costs: a training step, and the speed of a feature pass."""

    mflops_per_s: float | None  # network speed of a feature pass (None until one was measured)
    pixel_s: float  # seconds to fetch one image's pixels (decoding when not cached)
    overhead_s: float  # one-off seconds of a feature pass: exporting and opening a session

    def training_step(self, spec: ExtractorSpec, body: nn.Module, dim: int, classes: int, params: TrainParams,
                      size: int, *, pretrained: bool) -> tuple[TrainParams, float]:
        """The recipe at its fastest precision here, and seconds a step."""
        ...

    def step_at(self, spec: ExtractorSpec, body: nn.Module, dim: int, classes: int, params: TrainParams,
                size: int) -> float:
        """Seconds a fine-tuning step at another resolution."""
        ...

    def observe_pass(self, config: CandidateConfig, timing: dict[str, float], seconds: float) -> None:
        """A timed feature pass of a pretrained extractor (``timing``: images, infer_s, pixels_s)."""
        ...


class MeasuredCosts:
    """Costs measured on this machine as the search goes. The feature-pass speed is kept in three parts so
    that a small first sample does not make every later estimate err 4x long (export and session start spread
    over 650 images read as a slow network); of several passes the slowest of each part is kept: estimates
    must err long."""

    def __init__(self) -> None:
        self.mflops_per_s: float | None = None
        self.pixel_s = 0.0
        self.overhead_s = 0.0

    def training_step(self, spec: ExtractorSpec, body: nn.Module, dim: int, classes: int, params: TrainParams,
                      size: int, *, pretrained: bool) -> tuple[TrainParams, float]:
        return choose_precision(spec, body, dim, classes, params, size, pretrained=pretrained)

    def step_at(self, spec: ExtractorSpec, body: nn.Module, dim: int, classes: int, params: TrainParams,
                size: int) -> float:
        return measure_step_seconds(spec, body, dim, classes, params, size, pretrained=True)

    def observe_pass(self, config: CandidateConfig, timing: dict[str, float], seconds: float) -> None:
        if timing.get("infer_s", 0.0) <= 0.5:
            return  # too short to time
        images = timing["images"]
        rate = images * config.mflops() / timing["infer_s"]
        self.mflops_per_s = rate if self.mflops_per_s is None else min(self.mflops_per_s, rate)
        self.pixel_s = max(self.pixel_s, timing["pixels_s"] / images)
        self.overhead_s = max(self.overhead_s, seconds - timing["pixels_s"] - timing["infer_s"])


@dataclass
class FixedCosts:
    """Stated costs: a training step takes ``step_s`` at ``step_size`` px (scaled by the pixel count at other
    sizes), a feature pass runs at ``mflops_per_s`` plus ``pixel_s`` an image and ``overhead_s``."""

    step_s: float = 0.3
    step_size: int = 128
    mflops_per_s: float | None = 20_000.0
    pixel_s: float = 0.0
    overhead_s: float = 0.5

    def training_step(self, spec: ExtractorSpec, body: nn.Module, dim: int, classes: int, params: TrainParams,
                      size: int, *, pretrained: bool) -> tuple[TrainParams, float]:
        # bf16 only where the CPU has it: emulated, it would make the test itself many times slower
        return replace(params, bf16=params.bf16 and native_bf16()), self.step_s * (size / self.step_size) ** 2

    def step_at(self, spec: ExtractorSpec, body: nn.Module, dim: int, classes: int, params: TrainParams,
                size: int) -> float:
        return self.step_s * (size / self.step_size) ** 2

    def observe_pass(self, config: CandidateConfig, timing: dict[str, float], seconds: float) -> None:
        pass


def members(config: CandidateConfig) -> list[CandidateConfig]:
    """A frozen candidate's members, each as the candidate of that extractor alone (a stack has two)."""
    alone = replace(config, partner=None)
    return [alone, replace(alone, extractor=config.partner)] if config.partner else [alone]


class Budget:
    """The time of one search. ``images``: the number of images in each split; ``decoded(config, n)``: how many
    of the ``n`` images of every split already have their pixels in memory at ``config``'s view."""

    def __init__(self, total_s: float, clock: Clock, costs: Costs, images: dict[str, int], *,
                 flip_views: bool, decoded: Callable[[CandidateConfig], int]) -> None:
        self.total_s = total_s
        self.clock = clock
        self.costs = costs
        self.images = images
        self.flip_views = flip_views  # the preference allows mirrored views (not "fast")
        self.decoded = decoded
        self.t0 = clock.now()
        self.deadline = self.t0 + total_s

    # ------------------------------------------------------------------ the clock
    def now(self) -> float:
        return self.clock.now()

    def elapsed(self) -> float:
        return self.clock.now() - self.t0

    def remaining(self) -> float:
        return self.deadline - self.clock.now()

    def spent(self, seconds: float) -> None:
        """Work just done that the cost model says took ``seconds`` (moves only a virtual clock)."""
        self.clock.spent(seconds)

    def pass_done(self, config: CandidateConfig, timing: dict[str, float], seconds: float) -> None:
        """A feature pass of one member finished: learn its speed, charge its cost."""
        if config.spec.pretrained:
            self.costs.observe_pass(config, timing, seconds)
        images = int(timing.get("images", 0))
        if images:  # all cached: nothing was computed
            self.spent(self.frozen_s(config, images))

    # ------------------------------------------------------------------ frozen candidates
    def frozen_s(self, config: CandidateConfig, n: int, decoded: int = 0) -> float:
        """Seconds for a feature pass of ``n`` images, ``decoded`` of which already have their pixels in
        memory (0 until a frozen pass was timed)."""
        rate = self.costs.mflops_per_s
        if rate is None:
            return 0.0
        return n * max(config.mflops(), 1.0) / rate + max(0, n - decoded) * self.costs.pixel_s + self.costs.overhead_s

    def frozen_need_s(self, config: CandidateConfig, cached: set[tuple[str, int, str]]) -> float:
        """Seconds a frozen candidate will take: its feature passes (none for the members of a stack whose
        features are ``cached``: (extractor, size, crop)) and finishing it."""
        n = self.images["train"] + self.images["val"]
        passes = sum(self.frozen_s(p, n) for p in members(config)
                     if not config.partner or (p.extractor, p.size, p.crop) not in cached)
        return passes + self.finish_s(config)

    def finish_s(self, config: CandidateConfig) -> float:
        """Measuring on test, exporting and timing, and choosing the unknown detector."""
        n = self.images["test"] or self.images["val"]
        return self.frozen_s(config, n) + FINISH_FIXED_S

    # ------------------------------------------------------------------ trained candidates
    def extract_s(self, config: CandidateConfig, n: int, train_img_s: float | None) -> float:
        """Seconds for one feature pass of ``n`` images through a (trained) stack. Uses the speed of
        the frozen passes (pixels a frozen candidate decoded at this size are free); without one,
        inference is taken as 3x the training speed."""
        if self.costs.mflops_per_s is not None and config.spec.pretrained:
            return self.frozen_s(config, n, min(n, self.decoded(config)))
        per_image = 1.0 / (3.0 * train_img_s) if train_img_s else 0.001
        return n * per_image * (2 if config.with_frozen else 1) * (2 if config.flip_tta else 1)

    def after_training_s(self, config: CandidateConfig, train_img_s: float | None) -> float:
        """Seconds to extract features of every split through a trained stack, export and time it.

        Errs long on purpose (x1.3 + 8 s over :meth:`extract_s`): overrunning the budget is worse than
        training one epoch less.
        """
        return 1.3 * self.extract_s(config, sum(self.images.values()), train_img_s) + 8.0

    def flip_view_reserve_s(self, config: CandidateConfig, train_img_s: float | None) -> float:
        """Time kept after fine-tuning a photo extractor for its mirrored view: a feature pass of train+val at
        twice the cost, then finishing. Planned rounds fill the budget, so without it the view (+0.3 and +1.4
        points on flowers5 validation) never ran."""
        if config.kind != "finetune" or config.train.augment != "photo" or not self.flip_views:
            return 0.0
        n = self.images["train"] + self.images["val"]
        # Unpadded (the plain pass's estimate already errs long, and the view is skipped if it would not fit):
        # reserving with the same padding left 75 s of a 600 s budget unused on flowers5.
        return self.extract_s(replace(config, flip_tta=True), n, train_img_s) + self.finish_s(config)

    def kept_after_training_s(self, config: CandidateConfig, train_img_s: float) -> float:
        """All the time a training plan leaves for what follows it: the feature passes, export and
        measuring, and the mirrored view."""
        return self.after_training_s(config, train_img_s) + self.flip_view_reserve_s(config, train_img_s)

    def flip_view_need_s(self, config: CandidateConfig, extract_seconds: float) -> float:
        """A mirrored view of a trained stack: its feature pass (twice the plain one, measured) and finishing."""
        return 2.4 * extract_seconds + 2 * self.finish_s(config)

    def rounds(self, step_s: float, batch: int, budget_s: float, *, up: bool = False) -> int:
        """Rounds that fit in ``budget_s``, down to a step of the plan scale; ``up``: the next step, for the
        plan itself (the rate then decays by the deadline, and estimates err long: rounding down left
        up to a fifth of the budget unused)."""
        epoch_s = math.ceil(self.images["train"] / batch) * step_s * 1.15  # + validation pass and noise
        return quantize_epochs(budget_s / max(epoch_s, 1e-6), up=up)
