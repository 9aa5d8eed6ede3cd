"""Choosing a head's unknown detector and caution on held-out images (the detectors: ``novelty``).

Done once a head is final (the search's finishing step, an expand job), not for every candidate: the
choice solves the ridge once per simulated never-seen class and decomposes two covariances, a second or
two at 1,280 dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pigeonhole.learn import novelty
from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.ridge import left_out_scores

# Known images scored by each head solved without a simulated class (validation images, spread evenly): the AUROC
# against that class's few images is as well measured from 2,000 as from 12,000, at a sixth of the cost.
SIMULATION_KNOWN = 2000


def choose_unknown(head: RidgeHead, features: np.ndarray, labels: Sequence[str], *, left_out: bool,
                   caution: float = novelty.DEFAULT_CAUTION) -> dict[str, Any]:
    """Set ``head``'s detector and caution, and the figures it has at that caution on these images.

    ``features``/``labels``: images the head does not hold (validation), or with ``left_out`` exactly the
    images it holds, each then scored as if left out (ridge scores and distances alike). Images of classes
    the head does not know are ignored. The head must be solved (``fit``/``fit_left_out``)."""
    labels = np.asarray(labels)
    if left_out:
        y = head.held_labels(labels)
        phi = head.map(features)
        scores = next(left_out_scores(phi, y, len(head.classes), [head.alpha]))
    else:
        index = {c: i for i, c in enumerate(head.classes)}
        keep = np.array([lab in index for lab in labels], dtype=bool)
        if not keep.any():
            raise ValueError("no validation images of known classes")
        phi = head.map(np.asarray(features)[keep])
        y = np.array([index[lab] for lab in labels[keep]], dtype=np.int64)
        scores = head.scores(np.asarray(features)[keep])
    logits = scores / head.temperature
    base = phi[:, : head.input_dim]
    counts = np.array([head.counts[c] for c in head.classes])
    scatter = head.scatter()
    head.detector = novelty.choose(logits, head.temperature, base, y, scatter, counts,
                                   lambda c: _without(head, c, phi, y, left_out), left_out=left_out)
    moments = (scatter.moments(head.detector.shrinkage) if head.detector.kind == "relative_mahalanobis" else None)
    raw = novelty.raw_scores(head.detector.kind, logits, head.temperature, base, moments,
                             y if left_out else None, counts if left_out else None)
    head.set_caution(caution)
    point = novelty.answers_curve(novelty.familiarity(raw, head.detector.knots), logits.argmax(axis=1) == y,
                                  [head.threshold])[0]
    head.threshold_precision, head.threshold_coverage = point["right_when_answered"], point["answered"]
    return {"detector": novelty.name_of(head.detector.kind, head.detector.shrinkage), "caution": head.threshold,
            "answered": head.threshold_coverage, "right_when_answered": head.threshold_precision,
            "simulated_auroc": head.detector.simulated_auroc}


def _without(head: RidgeHead, c: int, phi: np.ndarray, y: np.ndarray, left_out: bool,
             ) -> tuple[np.ndarray, np.ndarray]:
    """Held-out logits from the head solved without class c: of the other classes' images (left out in turn
    when ``left_out``: the head holds exactly ``phi``; else at most ``SIMULATION_KNOWN`` of them) and of class
    c's images."""
    sub = head.without_class(head.classes[c])
    known = y != c
    if left_out:
        remap = np.cumsum(np.arange(len(head.classes)) != c) - 1
        seen = next(left_out_scores(phi[known], remap[y[known]], len(sub.classes), [head.alpha]))
    else:
        rows = np.flatnonzero(known)
        rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), SIMULATION_KNOWN)).round().astype(int)]
        seen = phi[rows] @ sub.weights + sub.bias
    return seen / head.temperature, (phi[~known] @ sub.weights + sub.bias) / head.temperature
