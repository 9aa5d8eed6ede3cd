"""Which unlabelled images to label first: those the model is least sure about, not twenty near-copies of one.

Uncertainty is the margin between the two most probable classes (1 - (p1 - p2)): an image the head splits
between two classes teaches it most about where they meet. Ordered by that alone, a burst of near-identical
photos would fill the top of the queue, so the order is built greedily: each next image is the most uncertain
one after a penalty for its similarity (cosine, of the centred features) to the images already chosen. The
greedy step runs over a shortlist of the most uncertain images; the rest follow by uncertainty.
"""

from __future__ import annotations

import numpy as np

DIVERSITY = 0.5  # how much uncertainty a near-copy of a chosen image gives up (cosine 1 costs this much)
SHORTLIST = 2000


def uncertainty(probs: np.ndarray) -> np.ndarray:
    """1 - (p1 - p2) per image: 0 when the head is sure, 1 when two classes tie."""
    if probs.shape[1] < 2:
        return np.zeros(len(probs))
    top = np.sort(probs, axis=1)[:, -2:]
    return 1.0 - (top[:, 1] - top[:, 0])


def labelling_order(probs: np.ndarray, features: np.ndarray, *, diversity: float = DIVERSITY,
                    shortlist: int = SHORTLIST) -> tuple[np.ndarray, np.ndarray]:
    """(order, uncertainty): image indices most worth labelling first (module docstring)."""
    doubt = uncertainty(probs)
    by_doubt = np.argsort(-doubt, kind="stable")
    head = by_doubt[:shortlist]
    if len(head) == 0:
        return by_doubt, doubt
    centred = features[head] - features[head].mean(axis=0)
    unit = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    nearest = np.zeros(len(head))  # the highest similarity to a chosen image (none yet: no penalty)
    free = np.ones(len(head), dtype=bool)
    chosen: list[int] = []
    for _ in range(len(head)):
        score = np.where(free, doubt[head] - diversity * np.clip(nearest, 0.0, 1.0), -np.inf)
        pick = int(np.argmax(score))
        chosen.append(int(head[pick]))
        free[pick] = False
        nearest = np.maximum(nearest, unit @ unit[pick])
    return np.concatenate([np.array(chosen, dtype=np.int64), by_doubt[shortlist:]]), doubt
