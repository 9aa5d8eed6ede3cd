"""The closed-form maths of the ridge head: per-class statistics, the standardised normal equations (primal
and dual), class weights for small classes, left-out scores and temperature fitting.

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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

_EPS = 1e-12
RARE_RATIO = 1.5  # a class below median size / RARE_RATIO turns on class weights (module docstring)


NLL_MARGIN = 1e-6


_SAME_ROW = 1e-9


def rows_without(rows: np.ndarray, phi: np.ndarray) -> np.ndarray | None:
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


class ClassStats:
    """Sufficient statistics of one class (Gram dense or as factor rows, sum, count)."""

    def __init__(self, dim: int, dense_after: int) -> None:
        self.sum = np.zeros(dim)
        self.count = 0
        self.rows: np.ndarray | None = np.zeros((0, dim))
        self.gram: np.ndarray | None = None
        self._dense_after = dense_after
        # where the rows were read from (``head_file``), so an unchanged class is not written again
        self.origin: Any = None

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
        keep = rows_without(self.rows, phi) if self.rows is not None else None
        if keep is not None:  # the rows being removed are held: drop them and stay factored
            self.rows = self.rows[keep]
        else:
            self.gram = self.gram_matrix() - phi.T @ phi
            self.rows = None
        self.sum -= phi.sum(axis=0)
        self.count -= len(phi)

    def gram_matrix(self) -> np.ndarray:
        if self.rows is None:
            return self.gram.copy()
        rows = np.asarray(self.rows, dtype=np.float64)  # rows read from a file are float32: sum in float64
        return rows.T @ rows

    def copy(self) -> ClassStats:
        """Independent statistics. The rows are shared: they are only ever replaced, never changed in place."""
        other = ClassStats(len(self.sum), self._dense_after)
        other.sum, other.count, other.rows, other.origin = self.sum.copy(), self.count, self.rows, self.origin
        other.gram = self.gram.copy() if self.gram is not None else None
        return other


_GRAM_CHUNK = 4096  # rows per product when summing Grams: one large product, never all rows copied at once


def summed_gram(stats: Sequence[ClassStats], dim: int) -> np.ndarray:
    """``sum_c G_c``: the rows of every factored class in a few large products, plus the dense Grams.

    Never one D x D matrix per class: at 1,000 classes of 1,280 dimensions those would take 13 GB.
    """
    gram = np.zeros((dim, dim))
    chunk: list[np.ndarray] = []
    held = 0
    for s in stats:
        if s.gram is not None:
            gram += s.gram
        elif s.rows is not None and len(s.rows):
            chunk.append(s.rows)
            held += len(s.rows)
            if held >= _GRAM_CHUNK:
                block = np.vstack(chunk).astype(np.float64, copy=False)
                gram += block.T @ block
                chunk, held = [], 0
    if chunk:
        block = np.vstack(chunk).astype(np.float64, copy=False)
        gram += block.T @ block
    return gram


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_in_place(z: np.ndarray) -> np.ndarray:
    """:func:`softmax` written over ``z`` (the same numbers, without three more arrays of its size)."""
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def calibrated_nll(scores: np.ndarray, y: np.ndarray, beta: float) -> float:
    z = scores * beta
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def fit_temperature(scores: np.ndarray, y: np.ndarray, lo: float = 1e-4, hi: float = 1e2) -> float:
    """Temperature T in [lo, hi] minimising the NLL of softmax(scores / T).

    The NLL is convex in beta = 1/T, with derivative ``mean(E_p[s] - s_y)`` and second derivative
    ``mean(Var_p[s])``, so Newton's method inside a shrinking bracket finds it in a handful of passes over the
    scores (golden-section search took 80, which at 1,000 classes and 12,500 validation images was 11 s per
    ridge strength). A bisection step (in log scale) replaces any Newton step that leaves the bracket, and
    beta doubles while Newton's steps do not shrink and no upper bound is known. It stops where no beta in the
    bracket can lower the NLL by more than 1e-12 (scores that separate the classes: the first beta at which the
    NLL is 0 to that precision, so the least confident of the equally good temperatures).
    """
    scores = np.asarray(scores, dtype=np.float64)
    own = scores[np.arange(len(y)), y]
    a, b = 1.0 / hi, 1.0 / lo

    def slopes(beta: float) -> tuple[float, float]:
        p = softmax(beta * scores)
        expected = (p * scores).sum(axis=1)
        variance = (p * scores * scores).sum(axis=1) - expected**2
        return float((expected - own).mean()), float(np.clip(variance, 0.0, None).mean())

    beta, previous = min(max(1.0, a), b), np.inf
    for _ in range(100):
        first, second = slopes(beta)
        if first > 0:  # the NLL rises here: the minimum is at a smaller beta
            b = beta
            if first * (beta - a) <= 1e-12:  # convex: no beta in the bracket is better by more than this
                break
        else:
            a = beta
            if -first * (b - beta) <= 1e-12:  # e.g. separable scores: the NLL only approaches 0 towards b
                break
        step = first / second if second > _EPS else np.inf
        following = beta - step
        if first <= 0 and b == 1.0 / lo and abs(step) >= 0.5 * previous:
            # Newton is not converging and no upper bound is known yet: double. Where the scores separate the
            # classes the NLL falls exponentially, and Newton's steps stay the same small size all the way to hi.
            following = max(following, 2.0 * beta)
        previous = abs(step)
        if not a < following < b:
            following = float(np.sqrt(a * b))  # the bracket spans decades: halve it in log scale
        if abs(following - beta) <= 1e-9 * beta or b <= a * (1 + 1e-9):
            beta = following
            break
        beta = following
    return float(1.0 / min(max(beta, 1.0 / hi), 1.0 / lo))


def feature_scale(var: np.ndarray) -> np.ndarray:
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


def _design(phi: np.ndarray, y: np.ndarray, classes: int,
            ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The weighted, standardised, centred rows over sqrt(N) (``z``) and what undoes it, for the left-out
    scores: (weight, total, root, z, onehot, mean)."""
    weight = class_weights(np.bincount(y, minlength=classes))[y]
    total = float(weight.sum())
    mu = weight @ phi / total
    sigma = feature_scale(weight @ ((phi - mu) ** 2) / total)
    root = np.sqrt(weight)[:, None]
    z = root * (phi - mu) / (sigma * np.sqrt(total))
    onehot = np.eye(classes)[y]
    mean = weight @ onehot / total
    return weight, total, root, z, onehot, mean


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
    weight, total, root, z, onehot, mean = _design(phi, y, classes)
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


def left_out_scores_at(phi: np.ndarray, y: np.ndarray, classes: int, alpha: float) -> np.ndarray:
    """:func:`left_out_scores` at one known alpha, by a Cholesky factor instead of an eigendecomposition: about
    half the time where there are more rows than dimensions (the same numbers up to rounding)."""
    n, d = phi.shape
    if n <= d:
        return next(left_out_scores(phi, y, classes, [alpha]))
    weight, total, root, z, onehot, mean = _design(phi, y, classes)
    inverse = np.linalg.inv(np.linalg.cholesky(z.T @ z + alpha * np.eye(d)))  # L^-1, L L^T = Z^T Z + a I
    whitened = inverse @ z.T  # L^-1 Z^T: h_i = |column i|^2
    h = np.clip((whitened * whitened).sum(0) + weight / total, 0.0, 1.0 - 1e-9)[:, None]
    fitted = whitened.T @ (whitened @ (root * (onehot - mean))) / root + mean
    return (fitted - h * onehot) / (1.0 - h)


class RidgeProblem:
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

    def __init__(self, stats: Sequence[ClassStats], dim: int, gram: np.ndarray | None = None) -> None:
        """``gram``: ``sum_c G_c`` of these statistics when the caller keeps it (:class:`RidgeHead` does), so a
        solve does not sum 100,000 rows again; only classes weighted other than 1 are added to it."""
        counts = np.array([s.count for s in stats], dtype=np.float64)
        weights = class_weights(counts)
        n = counts * weights  # weighted counts, sums and Grams (module docstring, "Small classes")
        total = float(n.sum())
        sums = np.stack([s.sum for s in stats], axis=1) * weights  # (D, K)
        mu = sums.sum(axis=1) / total
        self.dual = self.is_dual(stats, dim)
        if self.dual:
            rows = np.vstack([s.rows for s in stats if s.rows is not None]).astype(np.float64, copy=False)
            row_w = np.concatenate([np.full(s.count, w) for s, w in zip(stats, weights, strict=True)])
            gram_diag = np.einsum("ij,ij->j", rows, rows * row_w[:, None])
        else:
            gram = summed_gram(stats, dim) if gram is None else gram.copy()
            for s, w in zip(stats, weights, strict=True):
                if w != 1.0:
                    gram += (w - 1.0) * s.gram_matrix()
            gram_diag = np.diag(gram)
        sigma = feature_scale((gram_diag - total * mu * mu) / total)
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
            scatter = gram - total * np.outer(mu, mu)
            self.matrix = scatter / (total * np.outer(sigma, sigma))
            self.rhs = (sums - np.outer(mu, n)) / (total * sigma[:, None])

    @staticmethod
    def is_dual(stats: Sequence[ClassStats], dim: int) -> bool:
        """Whether these statistics are solved in the dual form (class docstring): no summed Gram needed."""
        return all(s.rows is not None for s in stats) and sum(s.count for s in stats) < dim

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
