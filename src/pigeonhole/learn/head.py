"""Incremental closed-form classification head (ridge regression on features).

Why closed form: a ridge head is a single linear solve, takes well under a second,
and -- kept as sufficient statistics -- can add or remove classes and images without
the old images, giving *exactly* the head a full refit would give. That is what makes
"add a class in seconds" honest.

Statistics, per class c over mapped features phi (see :class:`FeatureMap`):
``G_c = Phi_c^T Phi_c`` (Gram contribution), ``s_c = Phi_c^T 1`` (sum) and ``n_c``.
With one-hot targets, column c of ``Phi^T Y`` is exactly ``s_c``, so these are all a
least-squares fit needs. While a class has fewer images than feature dimensions its
Gram is kept in factored form (the mapped rows R_c, with ``G_c = R_c^T R_c``), which is
smaller and exactly equivalent; it becomes the dense matrix once that is smaller.

Solving (all from the statistics, never from stored data): with ``N = sum n_c``,
``mu = S / N`` and centred scatter ``C = G - N mu mu^T``, features are standardised by
``sigma = sqrt(diag(C) / N)``; the weights solve ``(Corr + alpha I) W_z = B`` where
``Corr = C / (N sigma sigma^T)`` (unit diagonal, so ``alpha`` means the same for every
backbone and dataset size) and ``B[:, c] = (s_c - n_c mu) / (N sigma)``. Mapped back:
``W = W_z / sigma``, bias ``b_c = n_c / N - mu . W_c`` (the intercept is not penalised).

Small classes: a class with far fewer images than the others would get small scores everywhere and
never be predicted (flowers5 with 40 roses against 550-840 of each other flower: rose recall 0 %;
with these weights 27 % after a 120 s search, the fine-tuned network itself being the rest; a rose
class added to a four-flower head with 30 images: 0 -> 32 %). So when some class holds fewer than
the median class size / ``RARE_RATIO`` images, each class's rows count ``w_c = max(1, median / n_c)``
times in every sum above (``n_c``, ``s_c``, ``G_c`` scaled by ``w_c`` at solve time): every class
below the median weighs as if it had the median's images. The statistics themselves stay
unweighted, so adding and removing stay exact; sets whose classes are all within that ratio of the
median (flowers5, hymenoptera, MNIST) solve exactly as before.

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

import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from pigeonhole.learn import novelty

if TYPE_CHECKING:
    from pigeonhole.learn.head_graph import HeadGraph

DEFAULT_ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
RARE_RATIO = 1.5  # a class below median size / RARE_RATIO turns on class weights (module docstring)
_FORMAT_VERSION = 1
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

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected features of shape (N, {self.input_dim}), got {x.shape}")
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)
        base = unit if self.config.l2_normalize else x
        if self.projection is None:
            return base
        w, b = self.projection
        rff = np.sqrt(2.0 / w.shape[1]) * np.cos(unit @ w + b)
        return np.hstack([base, rff])


NLL_MARGIN = 1e-6


_SAME_ROW = 1e-9


def _rows_without(rows: np.ndarray, phi: np.ndarray) -> np.ndarray | None:
    """Indices of ``rows`` left after removing one held row per row of ``phi``, or None if some row of
    ``phi`` is not held (to rounding: a matrix product may differ in the last bit between batches).

    Removing images the head holds as rows (a held-out validation set, a deleted image) then keeps
    the class factored, which keeps the cheap dual solve available, instead of densifying it.
    """
    if len(phi) == 0:
        return np.arange(len(rows))
    if len(rows) == 0:
        return None
    dist = (phi * phi).sum(axis=1)[:, None] + (rows * rows).sum(axis=1)[None, :] - 2.0 * (phi @ rows.T)
    used = np.zeros(len(rows), dtype=bool)
    for i in range(len(phi)):
        candidates = np.argsort(dist[i])[:8]
        match = next((int(j) for j in candidates if not used[j]
                      and np.max(np.abs(rows[j] - phi[i])) <= _SAME_ROW * max(1.0, float(np.max(np.abs(phi[i]))))),
                     None)
        if match is None:
            return None
        used[match] = True
    return np.flatnonzero(~used)


class _ClassStats:
    """Sufficient statistics of one class (Gram dense or as factor rows, sum, count)."""

    def __init__(self, dim: int, dense_after: int) -> None:
        self.sum = np.zeros(dim)
        self.count = 0
        self.rows: np.ndarray | None = np.zeros((0, dim))
        self.gram: np.ndarray | None = None
        self._dense_after = dense_after

    def add(self, phi: np.ndarray) -> None:
        self.sum += phi.sum(axis=0)
        self.count += len(phi)
        if self.rows is not None:
            self.rows = np.vstack([self.rows, phi])
            if len(self.rows) > self._dense_after:
                self.gram, self.rows = self.rows.T @ self.rows, None
        else:
            assert self.gram is not None
            self.gram += phi.T @ phi

    def subtract(self, phi: np.ndarray) -> None:
        if len(phi) > self.count:
            raise ValueError("cannot remove more images than the class holds")
        keep = _rows_without(self.rows, phi) if self.rows is not None else None
        if keep is not None:  # the rows being removed are held: drop them and stay factored
            self.rows = self.rows[keep]
        else:
            self.gram = self.gram_matrix() - phi.T @ phi
            self.rows = None
        self.sum -= phi.sum(axis=0)
        self.count -= len(phi)

    def gram_matrix(self) -> np.ndarray:
        return self.rows.T @ self.rows if self.rows is not None else self.gram.copy()


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(scores: np.ndarray, y: np.ndarray, beta: float) -> float:
    z = scores * beta
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def fit_temperature(scores: np.ndarray, y: np.ndarray, lo: float = 1e-4, hi: float = 1e2) -> float:
    """Temperature T minimising validation NLL of softmax(scores / T), golden section on log T."""
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = _nll(scores, y, np.exp(-c)), _nll(scores, y, np.exp(-d))
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = _nll(scores, y, np.exp(-c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = _nll(scores, y, np.exp(-d))
    return float(np.exp((a + b) / 2))


def _feature_scale(var: np.ndarray) -> np.ndarray:
    """Standard deviations that standardise the features; constant features (weight 0 anyway) get 1."""
    sigma = np.sqrt(np.clip(var, 0.0, None))
    sigma[sigma <= _EPS * max(float(sigma.max()), 1.0)] = 1.0
    return sigma


def class_weights(counts: np.ndarray) -> np.ndarray:
    """How many times each class's rows count in the solve (module docstring, "Small classes")."""
    counts = np.asarray(counts, dtype=np.float64)
    held = counts[counts > 0]
    if not len(held):
        return np.ones_like(counts)
    median = float(np.median(held))
    if held.min() >= median / RARE_RATIO:
        return np.ones_like(counts)
    return np.where(counts > 0, np.maximum(1.0, median / np.maximum(counts, 1.0)), 1.0)


def left_out_scores(phi: np.ndarray, y: np.ndarray, classes: int,
                    alphas: Sequence[float]) -> Iterator[np.ndarray]:
    """For each alpha, the (N, K) scores each row gets from the ridge head refit without that row.

    The head's fitted scores are ``H Y`` with the hat matrix ``H = 11^T/N + Z (Z^T Z + a I)^-1 Z^T`` (Z
    the standardised, centred rows over sqrt(N); the intercept is not penalised), and for penalised
    least squares the left-out score is ``(fit - h Y) / (1 - h)`` row by row, ``h`` the diagonal of H.
    One eigendecomposition of the smaller of ``Z Z^T`` and ``Z^T Z`` serves every alpha. Exact but for
    the standardisation (mean and scale include the left-out row), which moves scores by O(1/N).
    With class weights (rows of class c counting ``w_c`` times, :func:`class_weights`) the same holds
    for weighted least squares: Z's rows are scaled by ``sqrt(w)``, the targets likewise, and the
    hat diagonal is ``w_i / N_w + z_i^T (Z^T Z + a I)^-1 z_i``.
    """
    weight = class_weights(np.bincount(y, minlength=classes))[y]
    total = float(weight.sum())
    mu = weight @ phi / total
    sigma = _feature_scale(weight @ ((phi - mu) ** 2) / total)
    root = np.sqrt(weight)[:, None]
    z = root * (phi - mu) / (sigma * np.sqrt(total))
    onehot = np.eye(classes)[y]
    mean = weight @ onehot / total
    n = len(phi)
    if n <= z.shape[1]:  # Z = V sqrt(L) U^T: H - 11^T/N = V L/(L+a) V^T
        eigenvalues, basis = np.linalg.eigh(z @ z.T)
        gain = lambda a: eigenvalues / (eigenvalues + a)  # noqa: E731
    else:  # Z^T Z = U L U^T, P = Z U: H - 11^T/N = P (L+a)^-1 P^T
        eigenvalues, u = np.linalg.eigh(z.T @ z)
        basis = z @ u
        gain = lambda a: 1.0 / (eigenvalues + a)  # noqa: E731
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    projected = basis.T @ (root * (onehot - mean))
    squares = basis * basis
    for alpha in alphas:
        g = gain(alpha)
        h = np.clip(squares @ g + weight / total, 0.0, 1.0 - 1e-9)[:, None]
        fitted = basis @ (g[:, None] * projected) / root + mean
        yield (fitted - h * onehot) / (1.0 - h)


class _RidgeProblem:
    """The standardised normal equations of some class statistics, solvable for any ridge strength.

    Two exact forms of the same solution. *Primal*: the D x D correlation matrix (module docstring).
    *Dual*, used when every class is still held as rows and there are fewer rows N than feature
    dimensions D (the usual case for a user's first hundred images per class against a 1,280- or
    2,000-dimension head): with ``Z`` the standardised, centred rows divided by sqrt(N), ``Corr = Z^T Z``
    and ``B = Z^T Y / sqrt(N)`` (Y the one-hot labels of the rows), so
    ``W_z = (Z^T Z + a I)^-1 Z^T Y / sqrt(N) = Z^T (Z Z^T + a I)^-1 Y / sqrt(N)``: an N x N problem
    instead of a D x D one. A class change then costs milliseconds instead of a D x D eigendecomposition.
    Both forms standardise with the same ``mu`` and ``sigma`` taken from the sums and the Gram diagonal,
    so a head held as rows and one held densely give the same weights up to rounding.
    """

    def __init__(self, stats: Sequence[_ClassStats], dim: int) -> None:
        counts = np.array([s.count for s in stats], dtype=np.float64)
        weights = class_weights(counts)
        n = counts * weights  # weighted counts, sums and Grams (module docstring, "Small classes")
        total = float(n.sum())
        sums = np.stack([s.sum for s in stats], axis=1) * weights  # (D, K)
        mu = sums.sum(axis=1) / total
        held = [(s.rows, w) for s, w in zip(stats, weights, strict=True) if s.rows is not None and len(s.rows)]
        rows = np.vstack([r for r, _ in held]) if held else np.zeros((0, dim))
        row_w = np.concatenate([np.full(len(r), w) for r, w in held]) if held else np.zeros(0)
        self.dual = all(s.rows is not None for s in stats) and len(rows) < dim
        gram = None
        if self.dual:
            gram_diag = np.einsum("ij,ij->j", rows, rows * row_w[:, None])
        else:
            gram = rows.T @ (rows * row_w[:, None])
            for s, w in zip(stats, weights, strict=True):
                if s.gram is not None:
                    gram += w * s.gram
            gram_diag = np.diag(gram)
        sigma = _feature_scale((gram_diag - total * mu * mu) / total)
        self.mu, self.sigma, self.n, self.total = mu, sigma, n, total
        if self.dual:
            self.z = np.sqrt(row_w)[:, None] * (rows - mu) / (sigma * np.sqrt(total))
            self.y = np.zeros((len(rows), len(stats)))
            start = 0
            for k, s in enumerate(stats):
                self.y[start : start + s.count, k] = np.sqrt(weights[k] / total)
                start += s.count
            self.matrix = self.z @ self.z.T
        else:
            assert gram is not None
            scatter = gram - total * np.outer(mu, mu)
            self.matrix = scatter / (total * np.outer(sigma, sigma))
            self.rhs = (sums - np.outer(mu, n)) / (total * sigma[:, None])

    def _unstandardise(self, wz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = wz / self.sigma[:, None]
        return w, self.n / self.total - self.mu @ w

    def solve(self, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        a = self.matrix + alpha * np.eye(len(self.matrix))
        if self.dual:
            return self._unstandardise(self.z.T @ np.linalg.solve(a, self.y))
        return self._unstandardise(np.linalg.solve(a, self.rhs))

    def path(self, alphas: Sequence[float]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(weights, bias) for each alpha from one eigendecomposition: (M + aI)^-1 = V (L + a)^-1 V^T,
        so trying seven strengths costs about one solve."""
        eigenvalues, vectors = np.linalg.eigh(self.matrix)
        if self.dual:
            projected, back = vectors.T @ self.y, self.z.T @ vectors
        else:
            projected, back = vectors.T @ self.rhs, vectors
        for alpha in alphas:
            yield self._unstandardise(back @ (projected / (eigenvalues + alpha)[:, None]))


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
        self._stats: dict[str, _ClassStats] = {}
        self.alpha = 1e-2
        self.temperature = 1.0
        self.threshold = 0.0
        self.threshold_precision: float | None = None
        self.threshold_coverage: float | None = None
        self.detector: novelty.Detector | None = None
        self._scatter: novelty.Scatter | None = None
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
                self._stats[name] = _ClassStats(self.map.dim, self.dense_after)
                self.classes.append(name)
            self._stats[name].add(phi[labels == name])
        self._invalidate()

    def remove_images(self, features: np.ndarray, labels: Sequence[str]) -> None:
        """Subtract images that were added before (e.g. deleted from the dataset)."""
        phi = self.map(features)
        labels = np.asarray(labels)
        for name in dict.fromkeys(labels.tolist()):
            self._require(name).subtract(phi[labels == name])
        self._invalidate()

    def remove_class(self, name: str) -> None:
        self._require(name)
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

    def _require(self, name: str) -> _ClassStats:
        if name not in self._stats:
            raise KeyError(f"no class {name!r} in this head")
        return self._stats[name]

    def _invalidate(self) -> None:
        self.weights = self.bias = None
        self._scatter = None

    def scatter(self) -> novelty.Scatter:
        """Class means and covariances of the base features (the input part of the map), from the statistics."""
        if self._scatter is None:
            d = self.input_dim
            stats = [self._stats[c] for c in self.classes]
            counts = np.array([s.count for s in stats], dtype=np.float64)
            sums = np.stack([s.sum[:d] for s in stats])
            grams = [s.rows[:, :d].T @ s.rows[:, :d] if s.rows is not None else s.gram[:d, :d] for s in stats]
            self._scatter = novelty.Scatter(counts, sums, grams)
        return self._scatter

    # ---- solving ----------------------------------------------------------------
    def _problem(self) -> _RidgeProblem:
        if len(self.classes) < 2:
            raise ValueError("a classifier needs at least two classes")
        return _RidgeProblem([self._stats[c] for c in self.classes], self.map.dim)

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
        solutions: dict[float, tuple[np.ndarray, np.ndarray]] = {}

        def scored() -> Iterator[tuple[float, np.ndarray]]:
            for alpha, (w, b) in zip(alphas, self._problem().path(alphas), strict=True):
                solutions[alpha] = (w, b)
                yield alpha, phi @ w + b

        info = self._calibrate(scored(), y)
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
            temp = fit_temperature(scores, y)
            acc = float((scores.argmax(axis=1) == y).mean())
            nll = _nll(scores, y, 1.0 / temp)
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
        return _softmax(self.scores(features) / self.temperature)

    def familiarity(self, features: np.ndarray) -> np.ndarray:
        """(N,) in [0, 1]: how familiar each image looks (module docstring); below ``threshold`` is unknown."""
        logits = self.scores(features) / self.temperature
        if self.detector is None:
            return _softmax(logits).max(axis=1)
        moments = (self.scatter().moments(self.detector.shrinkage)
                   if self.detector.kind == "relative_mahalanobis" else None)
        base = self.map(features)[:, : self.input_dim]
        raw = novelty.raw_scores(self.detector.kind, logits, self.temperature, base, moments)
        return novelty.familiarity(raw, self.detector.knots)

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
        meta = {
            "format": _FORMAT_VERSION,
            "input_dim": self.input_dim,
            "config": asdict(self.config),
            "dense_after": self.dense_after,
            "classes": self.classes,
            "counts": [self._stats[c].count for c in self.classes],
            "alpha": self.alpha,
            "temperature": self.temperature,
            "threshold": self.threshold,
            "threshold_precision": self.threshold_precision,
            "threshold_coverage": self.threshold_coverage,
            "detector": self.detector.to_meta() if self.detector is not None else None,
        }
        arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        if self.map.projection is not None:
            arrays["proj_w"], arrays["proj_b"] = self.map.projection
        if self.weights is not None and self.bias is not None:
            arrays["weights"], arrays["bias"] = self.weights, self.bias
        for i, name in enumerate(self.classes):
            s = self._stats[name]
            arrays[f"sum_{i}"] = s.sum
            arrays[f"rows_{i}" if s.rows is not None else f"gram_{i}"] = s.rows if s.rows is not None else s.gram
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> RidgeHead:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            if meta.get("format") != _FORMAT_VERSION:
                raise ValueError(f"unsupported head format {meta.get('format')!r}")
            config = HeadConfig(**meta["config"])
            projection = (npz["proj_w"], npz["proj_b"]) if "proj_w" in npz else None
            head = cls(
                meta["input_dim"],
                config,
                dense_after=meta["dense_after"],
                feature_map=FeatureMap(meta["input_dim"], config, projection),
            )
            for i, name in enumerate(meta["classes"]):
                stats = _ClassStats(head.map.dim, head.dense_after)
                stats.sum = npz[f"sum_{i}"].copy()
                stats.count = int(meta["counts"][i])
                if f"rows_{i}" in npz:
                    stats.rows = npz[f"rows_{i}"].copy()
                else:
                    stats.rows, stats.gram = None, npz[f"gram_{i}"].copy()
                head._stats[name] = stats
                head.classes.append(name)
            for key in ("alpha", "temperature", "threshold", "threshold_precision", "threshold_coverage"):
                setattr(head, key, meta[key])
            if meta.get("detector"):
                head.detector = novelty.Detector.from_meta(meta["detector"])
            if "weights" in npz:
                head.weights, head.bias = npz["weights"].copy(), npz["bias"].copy()
        return head
