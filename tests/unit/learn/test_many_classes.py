"""A head with hundreds of classes: what the 1,000-class benchmark (``benchmarks/scale.py``) found slow or
too large, at a size that runs in seconds."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.planner import probe_per_class
from pigeonhole.learn.ridge import calibrated_nll, fit_temperature
from pigeonhole.learn.unknown import choose_unknown

CLASSES, PER_CLASS, DIM = 300, 5, 1280  # more images than dimensions: the summed-Gram (primal) form


def _features(rng: np.random.Generator, centres: np.ndarray, per_class: int) -> tuple[np.ndarray, list[str]]:
    x = np.abs(centres[:, None, :] + 0.8 * rng.standard_normal((len(centres), per_class, centres.shape[1])))
    labels = [f"class {k}" for k in range(len(centres)) for _ in range(per_class)]
    return x.reshape(-1, centres.shape[1]).astype(np.float32), labels


def test_growing_a_300_class_head_never_holds_a_gram_per_class() -> None:
    """At 300 classes one 1,280 x 1,280 Gram per class took 3.9 GB (13 GB at 1,000): the detector's scatter and
    every solve now use one summed Gram, kept up to date as classes come and go."""
    rng = np.random.default_rng(0)
    centres = np.abs(rng.standard_normal((CLASSES + 1, DIM)))
    x, labels = _features(rng, centres[:CLASSES], PER_CLASS)
    val, val_labels = _features(rng, centres, 1)
    head = RidgeHead(DIM)
    head.add(x, labels)
    head.fit(val[:CLASSES], val_labels[:CLASSES])
    new, new_labels = _features(rng, centres[CLASSES:], PER_CLASS)
    new_labels = ["new"] * PER_CLASS
    val_labels[-1] = "new"

    tracemalloc.start()
    try:
        grown = head.copy()
        grown.add(new, new_labels)
        info = grown.fit(val, val_labels)
        choose_unknown(grown, val, val_labels, left_out=False)
        grown.remove_class("class 0")
        grown.solve()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 400 * 2**20, f"{peak / 2**20:.0f} MiB"
    assert info["val_accuracy"] > 0.9 and grown.detector is not None
    assert len(grown.classes) == CLASSES and "new" in grown.classes and head.classes[0] == "class 0"

    refit = RidgeHead(DIM)  # the grown head's statistics are those of a refit
    keep = [i for i, label in enumerate(labels) if label != "class 0"]
    refit.add(np.vstack([x[keep], new]), [labels[i] for i in keep] + new_labels)
    refit.solve(grown.alpha)
    np.testing.assert_allclose(grown.scores(val), refit.scores(val), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("separation", [0.3, 2.0, 8.0])
def test_the_temperature_is_the_nll_minimum(separation: float) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 20, 1000)
    scores = rng.standard_normal((1000, 20))
    scores[np.arange(1000), y] += separation
    temperature = fit_temperature(scores, y)
    grid = np.exp(np.linspace(np.log(1e-4), np.log(1e2), 601))
    best = min(calibrated_nll(scores, y, 1.0 / t) for t in grid)
    assert calibrated_nll(scores, y, 1.0 / temperature) <= best + 1e-9


def test_scores_that_separate_the_classes_take_the_least_confident_perfect_temperature() -> None:
    y = np.arange(100) % 10
    scores = np.zeros((100, 10))
    scores[np.arange(100), y] = 1.0  # every image's own class ahead by 1
    temperature = fit_temperature(scores, y)
    assert calibrated_nll(scores, y, 1.0 / temperature) < 1e-11
    assert temperature > 0.01  # not pushed to the bound (1e-4): nothing lowers the NLL any further


def test_the_anytime_probe_of_many_classes_stays_small() -> None:
    """The first served version of 1,000 classes must not wait for 80,000 images to pass through the network."""
    assert probe_per_class(5) == 60 and probe_per_class(100) == 30
    assert probe_per_class(1000) == 5 and probe_per_class(5000) == 5
