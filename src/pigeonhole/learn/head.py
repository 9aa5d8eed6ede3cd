"""Incremental closed-form classification head (ridge regression on features).

Why closed form: a ridge head is a single linear solve, takes well under a second,
and -- kept as sufficient statistics -- can add or remove classes and images without
the old images, giving *exactly* the head a full refit would give. That is what makes
"add a class in seconds" honest.

The statistics, the solve and the class weights are in :mod:`pigeonhole.learn.ridge`.

Calibration: softmax(scores / T) with the temperature T fitted on validation by 1-D
minimisation of the negative log-likelihood (convex in 1/T, so golden-section search
on log T finds it).

"Unknown" rule: each image gets a familiarity in [0, 1] from a detector chosen on held-out images (see
``novelty``; chosen by ``unknown.choose_unknown`` once a head is final, not for every candidate, as it
costs a second or two), and images below the caution (``threshold``, default 5 %) are answered "unknown". The caution
is the share of ordinary images of the taught classes refused, so a weak model answers as often as a good
one; ``threshold_precision`` and ``threshold_coverage`` record how often it was right when it answered and
how often it answered on those held-out images. A head saved before detectors existed has none: its
familiarity is the largest probability and its threshold a confidence, as it always was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pigeonhole.learn import novelty
from pigeonhole.learn.ridge import (
    NLL_MARGIN,
    ClassStats,
    RidgeProblem,
    calibrated_nll,
    fit_temperature,
    left_out_scores,
    softmax,
    softmax_in_place,
    summed_gram,
)

if TYPE_CHECKING:
    from pigeonhole.learn.head_graph import HeadGraph

DEFAULT_ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
_EPS = 1e-12


@dataclass(frozen=True)
class HeadConfig:
    """Fixed feature map of the head; part of the head's identity.

    ``random_features`` > 0 appends random Fourier features ``sqrt(2/m) cos(x W + b)``
    of the L2-normalised input (W ~ N(0, 1/bandwidth^2), b ~ U[0, 2 pi), seeded), which
    turns the ridge into an approximation of Gaussian-kernel ridge regression: extra
    capacity with the same closed form. Cosine rather than ReLU because CNN features
    share a large common direction, which leaves most random ReLU units always on or
    always off; a shift-invariant kernel does not care about that offset.
    """

    l2_normalize: bool = True
    random_features: int = 0
    bandwidth: float = 0.5
    seed: int = 0


class FeatureMap:
    """The deterministic map from extractor features x to head features phi(x).

    It must not depend on data, otherwise statistics gathered at different times would
    not add up. The random matrix is stored with the head rather than regenerated from
    the seed, so a saved head never depends on the RNG's implementation.
    """

    def __init__(
        self, input_dim: int, config: HeadConfig, projection: tuple[np.ndarray, np.ndarray] | None = None
    ) -> None:
        self.input_dim = input_dim
        self.config = config
        m = config.random_features
        if m > 0 and projection is None:
            rng = np.random.default_rng(config.seed)
            projection = (rng.standard_normal((input_dim, m)) / config.bandwidth, rng.uniform(0, 2 * np.pi, m))
        self.projection = projection

    @property
    def dim(self) -> int:
        return self.input_dim + self.config.random_features

    def __call__(self, x: np.ndarray, dtype: type[np.floating] = np.float64) -> np.ndarray:
        """phi(x) in ``dtype``. float64 (the default) for statistics and solves: computed in float64, then rounded
        to float32 (below), so a row is the same whenever it is mapped. float32 for scoring only, computed in
        float32 as the exported graph does (10,000 test images at 1,000 classes: 0.1 s instead of 0.8)."""
        x = np.asarray(x, dtype=dtype)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected features of shape (N, {self.input_dim}), got {x.shape}")
        norms = (np.linalg.norm(x, axis=1, keepdims=True) if x.dtype == np.float64
                 else np.sqrt(np.einsum("ij,ij->i", x, x))[:, None])
        unit = x / np.maximum(norms, _EPS)
        base = unit if self.config.l2_normalize else x
        if self.projection is not None:
            w, b = self.projection
            base = np.hstack([base, np.sqrt(2.0 / w.shape[1]) * np.cos(unit @ w.astype(dtype, copy=False)
                                                                        + b.astype(dtype, copy=False))])
        # Rounded to float32 (the precision of the features and of the exported graph), so that the rows a head
        # holds are saved at half the size without losing a bit (100,000 images: 490 MB instead of 980).
        return base.astype(np.float32).astype(dtype, copy=False)


class RidgeHead:
    """Incremental ridge classifier over named classes.

    Class order is insertion order; renaming changes a label only. ``solve`` /
    ``fit`` must run after statistics change before predicting.
    """

    def __init__(
        self,
        input_dim: int,
        config: HeadConfig | None = None,
        *,
        dense_after: int | None = None,
        feature_map: FeatureMap | None = None,
    ) -> None:
        self.config = config or HeadConfig()
        self.map = feature_map or FeatureMap(input_dim, self.config)
        self.dense_after = self.map.dim if dense_after is None else dense_after
        self.classes: list[str] = []
        self._stats: dict[str, ClassStats] = {}
        self.alpha = 1e-2
        self.temperature = 1.0
        self.threshold = 0.0
        self.threshold_precision: float | None = None
        self.threshold_coverage: float | None = None
        self.detector: novelty.Detector | None = None
        self._scatter: novelty.Scatter | None = None
        # sum of the classes' Grams, made when a solve first needs it and then kept up to date: with 100,000 images
        # held as rows, summing them again for every solve would cost seconds each time.
        self._gram: np.ndarray | None = None
        self.weights: np.ndarray | None = None  # (dim, K) over mapped features
        self.bias: np.ndarray | None = None

    @property
    def input_dim(self) -> int:
        return self.map.input_dim

    @property
    def counts(self) -> dict[str, int]:
        return {c: self._stats[c].count for c in self.classes}

    # ---- statistics -------------------------------------------------------------
    def add(self, features: np.ndarray, labels: Sequence[str]) -> None:
        """Add images (new class names create classes). Invalidates the solution."""
        phi = self.map(features)
        labels = np.asarray(labels)
        if len(labels) != len(phi):
            raise ValueError("features and labels differ in length")
        for name in dict.fromkeys(labels.tolist()):
            if name not in self._stats:
                self._stats[name] = ClassStats(self.map.dim, self.dense_after)
                self.classes.append(name)
            self._stats[name].add(phi[labels == name])
        if self._gram is not None:
            self._gram += phi.T @ phi
        self._invalidate()

    def remove_images(self, features: np.ndarray, labels: Sequence[str]) -> None:
        """Subtract images that were added before (e.g. deleted from the dataset)."""
        phi = self.map(features)
        labels = np.asarray(labels)
        for name in dict.fromkeys(labels.tolist()):
            self._require(name).subtract(phi[labels == name])
        if self._gram is not None:
            self._gram -= phi.T @ phi
        self._invalidate()

    def remove_class(self, name: str) -> None:
        stats = self._require(name)
        if self._gram is not None:
            self._gram -= stats.gram_matrix()
        del self._stats[name]
        self.classes.remove(name)
        self._invalidate()

    def rename_class(self, old: str, new: str) -> None:
        """A label change only: statistics and weights are untouched."""
        if new in self._stats:
            raise ValueError(f"class {new!r} already exists")
        self._require(old)
        self._stats[new] = self._stats.pop(old)
        self.classes[self.classes.index(old)] = new

    def _require(self, name: str) -> ClassStats:
        if name not in self._stats:
            raise KeyError(f"no class {name!r} in this head")
        return self._stats[name]

    def _invalidate(self) -> None:
        self.weights = self.bias = None
        self._scatter = None

    def gram(self) -> np.ndarray:
        """``sum_c G_c`` over the mapped features (kept up to date once made; never change it in place)."""
        if self._gram is None:
            self._gram = summed_gram([self._stats[c] for c in self.classes], self.map.dim)
        return self._gram

    def copy(self) -> RidgeHead:
        """An independent head with the same statistics, settings and solution, without a round trip through
        bytes (which would copy every held row)."""
        other = RidgeHead(self.input_dim, self.config, dense_after=self.dense_after, feature_map=self.map)
        other.classes = list(self.classes)
        other._stats = {c: self._stats[c].copy() for c in self.classes}
        other._gram = self._gram.copy() if self._gram is not None else None
        for key in ("alpha", "temperature", "threshold", "threshold_precision", "threshold_coverage", "detector",
                    "weights", "bias"):
            setattr(other, key, getattr(self, key))
        return other

    def scatter(self) -> novelty.Scatter:
        """Class means and covariances of the base features (the input part of the map), from the statistics."""
        if self._scatter is None:
            d = self.input_dim
            stats = [self._stats[c] for c in self.classes]
            counts = np.array([s.count for s in stats], dtype=np.float64)
            sums = np.stack([s.sum[:d] for s in stats])
            if all(s.rows is not None for s in stats) and counts.sum() < d:  # fewer images than dimensions
                self._scatter = novelty.Scatter(counts, sums, rows=[s.rows[:, :d] for s in stats])
            else:
                self._scatter = novelty.Scatter(counts, sums, self.gram()[:d, :d])
        return self._scatter

    # ---- solving ----------------------------------------------------------------
    def _problem(self) -> RidgeProblem:
        if len(self.classes) < 2:
            raise ValueError("a classifier needs at least two classes")
        stats = [self._stats[c] for c in self.classes]
        dual = RidgeProblem.is_dual(stats, self.map.dim)
        return RidgeProblem(stats, self.map.dim, None if dual else self.gram())

    def solve(self, alpha: float | None = None) -> None:
        """Solve for the weights with ridge strength ``alpha`` (default: the current one)."""
        if alpha is not None:
            self.alpha = float(alpha)
        self.weights, self.bias = self._problem().solve(self.alpha)

    def fit(
        self,
        val_features: np.ndarray,
        val_labels: Sequence[str],
        *,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
    ) -> dict[str, float]:
        """Choose alpha on validation, then fit the temperature (the unknown detector: ``unknown.choose_unknown``).

        Alpha: highest validation accuracy, ties broken by lower calibrated NLL. Validation
        images of classes the head does not know are ignored.
        """
        index = {c: i for i, c in enumerate(self.classes)}
        keep = np.array([lab in index for lab in val_labels], dtype=bool)
        phi = self.map(np.asarray(val_features)[keep])
        y = np.array([index[lab] for lab in np.asarray(val_labels)[keep]], dtype=np.int64)
        if len(y) == 0:
            raise ValueError("no validation images of known classes")
        solutions = dict(zip(alphas, self._problem().path(alphas), strict=True))
        # Accuracy first: only the strengths tied for the best need a temperature (a second each at 1,000
        # classes and 12,500 validation images), to break the tie by calibrated NLL.
        phi32 = phi.astype(np.float32)  # ranking only: half the time of float64, and the map's precision anyway
        accuracy = {a: float(((phi32 @ w.astype(np.float32) + b).argmax(axis=1) == y).mean())
                    for a, (w, b) in solutions.items()}
        top = max(accuracy.values())
        tied = [a for a in alphas if accuracy[a] >= top - 1e-12]
        info = self._calibrate(((a, phi @ solutions[a][0] + solutions[a][1]) for a in tied), y)
        self.weights, self.bias = solutions[self.alpha]
        return info

    def fit_left_out(
        self,
        features: np.ndarray,
        labels: Sequence[str],
        *,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
    ) -> dict[str, float]:
        """Choose alpha and temperature on leave-one-out scores of the images the head holds.

        For small sets: a validation split of a few dozen images makes alpha a coin toss and ties
        every candidate at 100 %, while each held image scored by the head refit without it is an
        honest out-of-sample score (only for features that were not trained on these images). Ridge
        is a linear smoother, so all N left-out fits cost one eigendecomposition (see
        :func:`left_out_scores`). ``features``/``labels`` must be exactly the images the head holds.
        """
        y = self.held_labels(labels)
        scores = left_out_scores(self.map(features), y, len(self.classes), alphas)
        info = self._calibrate(zip(alphas, scores, strict=True), y)
        self.solve(self.alpha)
        return {**info, "left_out": len(y)}

    def held_labels(self, labels: Sequence[str]) -> np.ndarray:
        """Class indices of ``labels``, which must be exactly the images the head holds (for left-out scores)."""
        labels = np.asarray(labels)
        held = {c: int(n) for c, n in zip(*np.unique(labels, return_counts=True), strict=True)}
        if held != self.counts:
            raise ValueError("leave-one-out needs exactly the images the head holds")
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[lab] for lab in labels], dtype=np.int64)

    def _calibrate(self, candidates: Iterable[tuple[float, np.ndarray]], y: np.ndarray) -> dict[str, float]:
        """Take the alpha whose held-out scores are most accurate (ties: lower calibrated NLL), then the
        temperature on those scores."""
        best: tuple[float, float, float, float, np.ndarray] | None = None
        for alpha, scores in candidates:
            acc = float((scores.argmax(axis=1) == y).mean())
            if best is not None and acc < best[1] - 1e-12:  # cannot win: no temperature needed
                continue
            temp = fit_temperature(scores, y)
            nll = calibrated_nll(scores, y, 1.0 / temp)
            # A later alpha must win by a real margin: statistics that are equal up to rounding (an
            # incrementally grown head versus a refit) then always choose the same alpha.
            if best is None or acc > best[1] + 1e-12 or (
                    abs(acc - best[1]) <= 1e-12 and nll < best[2] - NLL_MARGIN * max(1.0, abs(best[2]))):
                best = (alpha, acc, nll, temp, scores)
        assert best is not None
        self.alpha, acc, nll, self.temperature, _ = best
        return {
            "alpha": self.alpha,
            "val_accuracy": acc,
            "val_nll": nll,
            "temperature": self.temperature,
        }

    def without_class(self, name: str) -> RidgeHead:
        """A head sharing this one's statistics but for class ``name``, solved at the same ridge strength."""
        sub = RidgeHead(self.input_dim, self.config, dense_after=self.dense_after, feature_map=self.map)
        sub.classes = [c for c in self.classes if c != name]
        sub._stats = {c: self._stats[c] for c in sub.classes}
        if not RidgeProblem.is_dual(list(sub._stats.values()), self.map.dim):
            sub._gram = self.gram() - self._stats[name].gram_matrix()
        sub.solve(self.alpha)
        return sub

    def set_caution(self, caution: float) -> None:
        """The share of ordinary images of the taught classes to answer "unknown" (0 to 0.5)."""
        if not 0.0 <= caution <= 0.5:
            raise ValueError("the caution is a share between 0 and 0.5")
        self.threshold = float(caution)

    # ---- prediction -------------------------------------------------------------
    def _require_solved(self) -> tuple[np.ndarray, np.ndarray]:
        if self.weights is None or self.bias is None:
            raise RuntimeError("head statistics changed since the last solve; call solve() or fit()")
        return self.weights, self.bias

    def scores(self, features: np.ndarray) -> np.ndarray:
        w, b = self._require_solved()
        return self.map(features) @ w + b

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(N, K) calibrated probabilities, columns in ``self.classes`` order."""
        return softmax(self.scores(features) / self.temperature)

    def familiarity(self, features: np.ndarray) -> np.ndarray:
        """(N,) in [0, 1]: how familiar each image looks (module docstring); below ``threshold`` is unknown."""
        phi = self.map(features)
        w, b = self._require_solved()
        return self._familiarity(phi, (phi @ w + b) / self.temperature)

    def answers(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``predict_proba`` and ``familiarity`` at once, in float32 as the exported graph computes them: one pass
        through the weights at half the cost (at 1,000 classes and 10,000 test images, 0.3 s instead of 2).

        The (N, K) scores are turned into probabilities in place, and the softmax detector's score (the top
        probability: 1 over the sum of the shifted exponentials) is read from them rather than computed again:
        each pass over 10,000 x 1,000 numbers costs 0.05-0.2 s of a class change that should take a second."""
        w, b = self._require_solved()
        phi = self.map(features, dtype=np.float32)
        logits = phi @ w.astype(np.float32)
        logits += b.astype(np.float32)
        logits /= np.float32(self.temperature)
        kind = self.detector.kind if self.detector is not None else None
        raw = None if kind in (None, "softmax") else self._raw_familiarity(phi, logits)
        probs = softmax_in_place(logits)
        if self.detector is None:
            return probs, probs.max(axis=1)
        return probs, novelty.familiarity(probs.max(axis=1) if raw is None else raw, self.detector.knots)

    def _familiarity(self, phi: np.ndarray, logits: np.ndarray) -> np.ndarray:
        if self.detector is None:
            return softmax(logits).max(axis=1)
        return novelty.familiarity(self._raw_familiarity(phi, logits), self.detector.knots)

    def _raw_familiarity(self, phi: np.ndarray, logits: np.ndarray) -> np.ndarray:
        assert self.detector is not None
        moments = (self.scatter().moments(self.detector.shrinkage)
                   if self.detector.kind == "relative_mahalanobis" else None)
        return novelty.raw_scores(self.detector.kind, logits, self.temperature, phi[:, : self.input_dim], moments)

    def predict(self, features: np.ndarray) -> list[tuple[str | None, float]]:
        """(label or None for unknown, confidence) per image."""
        probs = self.predict_proba(features)
        familiar = self.familiarity(features)
        out: list[tuple[str | None, float]] = []
        for i, j in enumerate(probs.argmax(axis=1)):
            out.append((self.classes[j] if familiar[i] >= self.threshold else None, float(probs[i, j])))
        return out

    def to_module(self) -> HeadGraph:
        """A torch module features -> (calibrated probabilities, familiarity), for ONNX export."""
        w, b = self._require_solved()
        moments = None
        if self.detector is not None and self.detector.kind == "relative_mahalanobis":
            moments = self.scatter().moments(self.detector.shrinkage)
        from pigeonhole.learn.head_graph import HeadGraph  # torch only where a graph is made

        return HeadGraph(self.map.config.l2_normalize, self.map.projection, w, b, self.temperature, self.detector,
                         moments)

    # ---- serialisation ------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The head's file (``head_file``: rows unchanged since they were read stay where they are)."""
        from pigeonhole.learn import head_file

        return head_file.dump(self)

    @classmethod
    def from_bytes(cls, data: bytes, *, key: str | None = None,
                   read: Callable[[str], Any] | None = None) -> RidgeHead:
        """A head from its file; ``key`` and ``read`` as in ``head_file.load``."""
        from pigeonhole.learn import head_file

        return head_file.load(data, key=key, read=read)
