"""When a model says "unknown": a familiarity score per image, the detector behind it, and the user's caution.

Why not only the confidence. A model that has never seen a cat still puts all its probability on one of its
own classes, often confidently: the largest probability (max-softmax) is the weakest known detector of
things outside the training classes. Distance-based detectors do better, and the head already holds what
they need: per-class sums and the summed Gram give the class means, the shared within-class covariance and the
total covariance exactly, so a detector built from them follows adding and removing classes exactly too.

Candidates (higher raw score = more familiar):

- ``softmax``: the largest calibrated probability;
- ``energy``: ``T * logsumexp(scores / T)`` (Liu et al. 2020);
- ``relative_mahalanobis``: ``-(min_c d_c(x) - d_0(x))`` with ``d_c`` the Mahalanobis distance to class c's
  mean under the shared within-class covariance and ``d_0`` the distance to the mean of all images under
  the total covariance (Ren et al. 2021). Subtracting ``d_0`` removes what is merely unusual about an image
  in every direction (lighting, framing), which plain Mahalanobis confuses with novelty. Covariances are
  shrunk towards ``shrinkage * mean eigenvalue * I``: there are often fewer images than feature dimensions.

Measured on frozen MobileNetV2 features (benchmarks/open_set.py), relative Mahalanobis wins on unknowns
from the same domain (a flower kind never taught) and catches other domains almost perfectly, where
max-softmax and energy do not; on some models max-softmax is as good. So the detector is chosen per model:
each of up to ``SIMULATED_CLASSES`` classes in turn plays the never-seen class (its column and mean are
dropped), and the candidate whose held-out scores best separate it from the other classes' held-out
images (AUROC, averaged) is kept. The held-out class's images still shape the covariances and the ridge's
feature scaling there, an approximation that favours no candidate in particular.

Familiarity: the raw score mapped through the piecewise-linear distribution of held-out known-class scores
(``knots``, up to ``KNOTS`` quantiles), so it reads as "the share of images of the taught classes that look
less familiar than this one". The caution ``c`` refuses images with familiarity below ``c``: about a
share ``c`` of ordinary images of the known classes, and as many never-seen things as the detector can
tell apart. The default refuses 5 %.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_CAUTION = 0.05
CAUTION_LEVELS: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(51))  # what the slider offers
KNOTS = 201
SIMULATED_CLASSES = 5
# Shrinkage of relative Mahalanobis, towards this many times the mean eigenvalue. Fixed, from the measurements:
# on near unknowns (flowers5 with each class unseen, MNIST 8-9 unseen; MobileNetV2 and EfficientNet-Lite0
# features) 3 was best on average (0.3: 0.657, 1: 0.669, 3: 0.675, 10: 0.666, 30: 0.646 mean AUROC over the five
# flowers cases), and far unknowns are caught at any of them. Choosing it per model by the simulation below was
# tried: it always took the largest, because the simulated class stays inside the covariances there.
SHRINKAGES: tuple[float, ...] = (3.0,)
KINDS = ("softmax", "energy", "relative_mahalanobis")
_EPS = 1e-12


@dataclass
class Detector:
    """The chosen detector of one head, and the held-out known-class scores its familiarity is read against."""

    kind: str
    knots: np.ndarray  # sorted raw scores of held-out known-class images
    shrinkage: float = 0.0
    simulated_auroc: dict[str, float] = field(default_factory=dict)  # candidate -> mean AUROC

    def to_meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "knots": [float(k) for k in self.knots], "shrinkage": self.shrinkage,
                "simulated_auroc": self.simulated_auroc}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Detector:
        return cls(meta["kind"], np.asarray(meta["knots"], dtype=np.float64), float(meta["shrinkage"]),
                   dict(meta.get("simulated_auroc") or {}))


RANK = 256  # covariance directions kept exactly; the rest count as the shrinkage alone


@dataclass
class Metric:
    """A shrunk covariance's inverse, ``M^-1 = I / floor - basis diag(weight) basis^T``.

    Keeping only the covariance's top ``RANK`` directions (the rest of its variance treated as zero, the shrinkage
    ``floor`` still added everywhere) makes this exact for that truncated covariance, and keeps the exported file
    small: two 1,280 x 1,280 maps would add 13 MB to it, two 2,560 x 2,560 ones (a stack of two extractors) 52 MB.
    """

    floor: float
    basis: np.ndarray  # (d, r) orthonormal
    weight: np.ndarray  # (r,) = lambda / (floor (lambda + floor))

    def inner(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(len(a), len(b)) products ``a M^-1 b^T``."""
        pa, pb = a @ self.basis, b @ self.basis
        return a @ b.T / self.floor - (pa * self.weight) @ pb.T

    def norms(self, a: np.ndarray) -> np.ndarray:
        pa = a @ self.basis
        return (a * a).sum(1) / self.floor - (pa * pa * self.weight).sum(1)


@dataclass
class Moments:
    """Class means, the overall mean and the two metrics of relative Mahalanobis, in the head's base features."""

    means: np.ndarray  # (K, d)
    centre: np.ndarray  # (d,)
    within: Metric  # the shared within-class covariance
    total: Metric  # the covariance of all images


class Scatter:
    """Means and covariances from per-class counts and sums and the summed Gram; metrics for any shrinkage from one
    eigendecomposition of each covariance.

    Given the rows themselves (``rows``, one array per class), and fewer rows than dimensions, each covariance is
    held as a factor ``F`` (the centred rows over sqrt(N), ``C = F^T F``) and decomposed through the N x N matrix
    ``F F^T``: the same non-zero eigenvalues, and eigenvectors ``F^T u / sqrt(lambda)``. The directions left out
    have eigenvalue zero, where a metric's weight is zero too, so the metrics are the same. A small set of
    pixel features (3,072 dimensions at 32 px) then costs milliseconds instead of seconds.
    """

    def __init__(self, counts: np.ndarray, sums: np.ndarray, gram: np.ndarray | None = None,
                 rows: Sequence[np.ndarray] | None = None) -> None:
        counts = np.asarray(counts, dtype=np.float64)
        total = float(counts.sum())
        self.dim = sums.shape[1]
        self.means = sums / np.maximum(counts, 1.0)[:, None]
        self.centre = sums.sum(axis=0) / total
        self._covariance: dict[str, np.ndarray] = {}
        self._factor: dict[str, np.ndarray] = {}
        if rows is not None:
            scale = 1.0 / np.sqrt(total)
            self._factor["within"] = np.vstack([r - m for r, m in zip(rows, self.means, strict=True)]) * scale
            self._factor["total"] = (np.vstack(rows) - self.centre) * scale
        else:
            assert gram is not None, "a scatter needs the summed Gram or the rows"
            self._covariance["within"] = (gram - (self.means.T * counts) @ self.means) / total
            self._covariance["total"] = (gram - total * np.outer(self.centre, self.centre)) / total
        self._eig: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _eigen(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """The covariance's eigenvalues and eigenvectors (columns); from a factor, only the non-zero ones."""
        if which not in self._eig:
            if which in self._factor:
                f = self._factor[which]
                k = f @ f.T
                values, u = np.linalg.eigh((k + k.T) / 2)
                keep = values > max(float(values.max(initial=0.0)), _EPS) * 1e-10
                values = values[keep]
                self._eig[which] = (values, f.T @ (u[:, keep] / np.sqrt(values)))
            else:
                m = self._covariance[which]
                values, vectors = np.linalg.eigh((m + m.T) / 2)
                self._eig[which] = (np.clip(values, 0.0, None), vectors)
        return self._eig[which]

    def moments(self, shrinkage: float, classes: np.ndarray | None = None) -> Moments:
        metrics = []
        for which in ("within", "total"):
            values, vectors = self._eigen(which)
            floor = shrinkage * max(float(values.sum()) / self.dim, _EPS)  # the mean over all dimensions
            top = np.argsort(-values, kind="stable")[: min(RANK, len(values))]
            lam = values[top]
            metrics.append(Metric(floor, vectors[:, top], lam / (floor * (lam + floor))))
        means = self.means if classes is None else self.means[classes]
        return Moments(means, self.centre, metrics[0], metrics[1])


def class_distances(base: np.ndarray, moments: Moments) -> np.ndarray:
    """(N, K) squared Mahalanobis distances to each class mean under the shared covariance (offsets from the
    overall mean first: the features share a large common part)."""
    x, m = base - moments.centre, moments.means - moments.centre
    w = moments.within
    return np.clip(w.norms(x)[:, None] - 2.0 * w.inner(x, m) + w.norms(m)[None, :], 0.0, None)


def background_distance(base: np.ndarray, moments: Moments) -> np.ndarray:
    return moments.total.norms(base - moments.centre)


def left_out_distances(base: np.ndarray, moments: Moments, own: np.ndarray, counts: np.ndarray,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Class and background distances of images the statistics hold, each as if it had been left out.

    With fewer images than dimensions an image held in the covariance looks far more typical than a new
    one. Leaving image i out of a group of n (its class; for the total covariance, all N images) moves the
    group's mean so that the image's offset r grows by ``k = n / (n - 1)``, and takes ``k r r^T`` off the scatter,
    which is then divided by N - 1 instead of N. The inverse of the shrunk covariance gains a rank-one term
    (Sherman-Morrison): with ``q = r^T M^-1 r``, a distance ``v^T M^-1 v`` becomes
    ``(N - 1) / N * (v^T M^-1 v + k (v^T M^-1 r)^2 / (N - k q))``. The shrinkage level and the directions kept
    are the full statistics': they move by O(1/N). Checked against refits without each image (tests)."""
    total = float(counts.sum())
    rows = np.arange(len(own))
    x, m = base - moments.centre, moments.means - moments.centre
    w = moments.within
    xm, xx, mm = w.inner(x, m), w.norms(x), w.inner(m, m)
    d = np.clip(xx[:, None] - 2.0 * xm + np.diag(mm)[None, :], 0.0, None)
    q = d[rows, own]
    n = counts[own].astype(np.float64)
    k = np.where(n > 1, n / np.maximum(n - 1, 1), 1.0)
    cross = xx[:, None] - xm[rows, own][:, None] - xm + mm[own, :]  # (x - m_k) M^-1 (x - m_own)
    scale = (total - 1) / total
    d = scale * (d + k[:, None] * cross**2 / np.maximum(total - k * q, 1.0)[:, None])
    d[rows, own] *= k**2
    q0 = background_distance(base, moments)
    k0 = total / max(total - 1, 1.0)
    return d, k0**2 * scale * (q0 + k0 * q0**2 / np.maximum(total - k0 * q0, 1.0))


def raw_scores(kind: str, logits: np.ndarray, temperature: float, base: np.ndarray | None,
               moments: Moments | None, own: np.ndarray | None = None, counts: np.ndarray | None = None,
               ) -> np.ndarray:
    """Higher = more familiar. ``logits`` are the head's scores already divided by the temperature.

    ``own``/``counts``: the images are held in the statistics, with these classes and class sizes; their
    distances are then taken as if each had been left out (:func:`left_out_distances`)."""
    if kind == "softmax":
        z = logits - logits.max(axis=1, keepdims=True)
        return 1.0 / np.exp(z).sum(axis=1)
    if kind == "energy":
        m = logits.max(axis=1)
        return temperature * (m + np.log(np.exp(logits - m[:, None]).sum(axis=1)))
    if kind != "relative_mahalanobis" or moments is None or base is None:
        raise ValueError(f"unknown detector {kind!r}")
    if own is not None and counts is not None:
        return relative(*left_out_distances(base, moments, own, counts))
    return relative(class_distances(base, moments), background_distance(base, moments))


def relative(d: np.ndarray, d0: np.ndarray) -> np.ndarray:
    """Relative Mahalanobis score from the class distances (N, K) and the background distance (N,)."""
    return -(d.min(axis=1) - d0)


def quantile_knots(scores: np.ndarray) -> np.ndarray:
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    if len(scores) <= KNOTS:
        return scores
    return np.quantile(scores, np.linspace(0.0, 1.0, KNOTS))


def familiarity(raw: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Share of held-out known images scoring lower, interpolated linearly between the knots: 0 below the
    least familiar, 1 above the most. The same arithmetic as the exported graph (a sum of clipped ramps)."""
    raw = np.asarray(raw, dtype=np.float64)
    if len(knots) < 2:
        return np.where(raw >= (knots[0] if len(knots) else -np.inf), 1.0, 0.0)
    lo, hi = knots[:-1], knots[1:]
    width = np.maximum(hi - lo, _EPS)
    ramps = np.clip((raw[:, None] - lo[None, :]) / width[None, :], 0.0, 1.0)
    return ramps.sum(axis=1) / (len(knots) - 1)


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Probability that a known image scores above an unknown one (ties count half)."""
    if not len(known) or not len(unknown):
        return float("nan")
    both = np.concatenate([known, unknown])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    sorted_vals = both[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
    ends = np.r_[starts[1:], len(both)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    k = len(known)
    return float((ranks[:k].sum() - k * (k + 1) / 2.0) / (k * len(unknown)))


def false_accepts(known: np.ndarray, unknown: np.ndarray, keep: float = 0.95) -> float:
    """Share of unknown images accepted when the cut keeps ``keep`` of the known ones."""
    cut = np.quantile(known, 1.0 - keep)
    return float((unknown >= cut).mean())


def _candidates() -> list[tuple[str, float]]:
    return [("softmax", 0.0), ("energy", 0.0), *[("relative_mahalanobis", s) for s in SHRINKAGES]]


def name_of(kind: str, shrinkage: float) -> str:
    return kind if kind != "relative_mahalanobis" else f"{kind}@{shrinkage:g}"


def choose(logits: np.ndarray, temperature: float, base: np.ndarray, y: np.ndarray, scatter: Scatter,
           counts: np.ndarray, refit: Callable[[int], tuple[np.ndarray, np.ndarray]], *, left_out: bool) -> Detector:
    """The candidate that best tells a class it never saw from the others (module docstring), on held-out
    images: ``logits``/``base`` of images the head did not hold, or (``left_out``) of held images scored as if
    left out. ``refit(c)``: the held-out logits of the images of the other classes and of class c's images
    from the head solved without class c (a head trained on c has learnt to score it low in every other
    column, which would flatter the probability-based candidates). Knots come from the chosen candidate's
    scores of all the images."""
    k = logits.shape[1]
    sizes = np.bincount(y, minlength=k)
    present = np.flatnonzero(sizes > 0)
    simulated = present[np.linspace(0, len(present) - 1, min(SIMULATED_CLASSES, len(present))).round().astype(int)]
    results: dict[str, float] = {}
    full: dict[str, np.ndarray] = {}
    refits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for kind, shrinkage in _candidates():
        name = name_of(kind, shrinkage)
        if kind == "relative_mahalanobis":  # distances once; a dropped class only drops a column
            moments = scatter.moments(shrinkage)
            d_all, d0 = (left_out_distances(base, moments, y, counts) if left_out
                         else (class_distances(base, moments), background_distance(base, moments)))
            full[name] = relative(d_all, d0)
        else:
            full[name] = raw_scores(kind, logits, temperature, base, None)
        if len(present) < 3:  # dropping a class would leave a single one: nothing to compare
            continue
        aucs = []
        for c in np.unique(simulated):
            rest = np.flatnonzero(np.arange(k) != c)
            known, unknown = np.flatnonzero(y != c), np.flatnonzero(y == c)
            if kind == "relative_mahalanobis":
                aucs.append(auroc(relative(d_all[known][:, rest], d0[known]),
                                  relative(d_all[unknown][:, rest], d0[unknown])))
            else:
                if c not in refits:
                    refits[c] = refit(int(c))
                seen_logits, new_logits = refits[c]
                aucs.append(auroc(raw_scores(kind, seen_logits, temperature, None, None),
                                  raw_scores(kind, new_logits, temperature, None, None)))
        results[name] = float(np.mean(aucs))
    if results:
        best = max(results, key=lambda name: (round(results[name], 6), -list(full).index(name)))
    else:
        best = name_of("relative_mahalanobis", SHRINKAGES[0])
    kind, _, shrink = best.partition("@")
    return Detector(kind, quantile_knots(full[best]), float(shrink or 0.0), results)


def answers_curve(familiar: np.ndarray, correct: np.ndarray,
                  levels: Sequence[float] = CAUTION_LEVELS) -> list[dict[str, float]]:
    """For each caution: the share of images answered and the share right among them."""
    out = []
    for level in levels:
        answered = familiar >= level
        share = float(answered.mean()) if len(answered) else 0.0
        right = float(correct[answered].mean()) if answered.any() else 0.0
        out.append({"caution": float(level), "answered": share, "right_when_answered": right,
                    "right_overall": float((correct & answered).mean()) if len(answered) else 0.0})
    return out
