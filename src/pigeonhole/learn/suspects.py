"""Suspected mislabels: labelled images whose label a head that never saw them finds unlikely.

Why the closed form. The standard recipe (cleanlab's confident learning) needs out-of-sample probabilities for
every image, which means K cross-validated fits of a classifier. The ridge head gives each image's scores
from the head refit without that image exactly, for every image at once, from one eigendecomposition
(:func:`pigeonhole.learn.ridge.left_out_scores`), so the whole ranking costs about one head fit.

How many to flag. An image is suspect when the head that never saw it prefers another class, but a model
that is right three times in four also "prefers another class" for a quarter of the correctly labelled
images. So the number flagged is estimated as confident learning does (Northcutt et al. 2021, cleanlab's
method), from these left-out probabilities: each class's threshold is the mean probability its own images
give it, and an image counts as mislabelled when the most probable class above its threshold is not its
label. That many images, the least likely under their label first (by the left-out scores' margin between the
label and the best other class), are flagged. (A second pass, refitting
without the first pass's suspects, was measured and found no more: benchmarks/label_errors.py.)

The ranking puts first the same content under two labels (an image uploaded into two classes: one of them
is wrong whatever the model thinks), then the flagged images by how much more likely the suggestion is than
the given label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pigeonhole.learn.ridge import calibrated_nll, fit_temperature, left_out_scores, left_out_scores_at, softmax

ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


@dataclass(frozen=True)
class Suspect:
    """One image whose label looks wrong. ``index``: its row in the input; ``given``/``suggested``: class
    indices; ``confidence``: the calibrated probability of the suggestion from a head that never saw the image;
    ``given_probability``: the same for the given label; ``conflict``: its content also carries another label."""

    index: int
    given: int
    suggested: int
    confidence: float
    given_probability: float
    conflict: bool = False
    margin: float = 0.0  # the left-out ridge score of the label minus the suggestion's: the ranking key


@dataclass(frozen=True)
class SuspectReport:
    """Every image's left-out class probabilities, and the suspects, most likely wrong first."""

    probabilities: np.ndarray  # (N, K)
    suspects: list[Suspect]
    alpha: float
    temperature: float
    ranking: np.ndarray  # every image, the least likely label first (conflicts aside)


def _choose(phi: np.ndarray, y: np.ndarray, classes: int, alphas: Sequence[float]) -> tuple[float, np.ndarray]:
    """The alpha whose left-out scores are most accurate (ties: lower calibrated NLL), as training chooses. One
    alpha (the version's, chosen when it was trained) takes the faster path."""
    if len(alphas) == 1:
        return alphas[0], left_out_scores_at(phi, y, classes, alphas[0])
    scored = [(alpha, scores, float((scores.argmax(1) == y).mean()))
              for alpha, scores in zip(alphas, left_out_scores(phi, y, classes, alphas), strict=True)]
    best = max(acc for _, _, acc in scored)
    tied = [(alpha, scores) for alpha, scores, acc in scored if acc >= best - 1e-12]
    if len(tied) == 1:
        return tied[0]
    return min(tied, key=lambda t: calibrated_nll(t[1], y, 1.0 / fit_temperature(t[1], y)))


def estimated_errors(probs: np.ndarray, y: np.ndarray) -> int:
    """How many labels look wrong, by confident learning's count (module docstring): images whose most probable
    class among those at or above their class threshold is not their label."""
    classes = probs.shape[1]
    thresholds = np.array([probs[y == k, k].mean() if (y == k).any() else np.inf for k in range(classes)])
    above = np.where(probs >= thresholds, probs, -np.inf)
    confident = above.max(1) > -np.inf
    return int((confident & (above.argmax(1) != y)).sum())


def find_suspects(phi: np.ndarray, y: np.ndarray, classes: int, *, content: Sequence[str] | None = None,
                  alphas: Sequence[float] = ALPHAS) -> SuspectReport:
    """Rank the images ``phi`` (head features, N x D) labelled ``y`` (class indices) by how unlikely their label
    is, and flag as many as look mislabelled (module docstring). ``content``: each image's content hash, to put
    the same bytes under two labels first (always flagged). ``alphas``: the ridge strengths to choose from; a
    version's own (one) is what the suspects job passes."""
    y = np.asarray(y, dtype=np.int64)
    if len(np.unique(y)) < 2:
        raise ValueError("finding mislabels needs images of at least two classes")
    alpha, scores = _choose(phi, y, classes, alphas)
    temperature = fit_temperature(scores, y)
    probs = softmax(scores / temperature)

    conflicted = np.zeros(len(y), dtype=bool)
    if content is not None:
        labels_of: dict[str, set[int]] = {}
        for sha, label in zip(content, y.tolist(), strict=True):
            labels_of.setdefault(sha, set()).add(label)
        conflicted = np.array([len(labels_of[sha]) > 1 for sha in content], dtype=bool)

    rows = np.arange(len(y))
    others = scores.copy()
    others[rows, y] = -np.inf
    suggested = others.argmax(1)
    given_p = probs[rows, y]
    best_other = probs[rows, suggested]
    # Ranked by the ridge scores' own margin: calibrating first (a softmax) ranked worse, since the temperature
    # squeezes the margins of the images the head is least sure of (benchmarks/label_errors.py).
    gap = scores[rows, y] - scores[rows, suggested]
    ranked = np.argsort(gap, kind="stable")
    flagged = conflicted.copy()
    worst = ranked[: estimated_errors(probs, y)]
    flagged[worst[gap[worst] < 0]] = True
    order = np.lexsort((gap, ~conflicted))  # conflicts first, then the least likely label
    suspects = [Suspect(int(i), int(y[i]), int(suggested[i]), float(best_other[i]), float(given_p[i]),
                        bool(conflicted[i]), float(gap[i])) for i in order if flagged[i]]
    return SuspectReport(probs, suspects, float(alpha), float(temperature), ranked)
