"""Suspected mislabels from the closed-form left-out head."""

from __future__ import annotations

import numpy as np
import pytest

from pigeonhole.learn.ridge import left_out_scores, left_out_scores_at
from pigeonhole.learn.suspects import estimated_errors, find_suspects


def _clusters(n_per: int = 60, classes: int = 4, dim: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.6, (classes, dim))
    y = np.repeat(np.arange(classes), n_per)
    return centres[y] + rng.normal(0, 1.0, (len(y), dim)), y


@pytest.mark.parametrize("dim", [30, 400])  # more images than dimensions, and fewer
def test_flipped_labels_are_found_with_the_true_class_suggested(dim: int) -> None:
    x, y = _clusters(dim=dim)
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(y), 24, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, 4, len(flipped))) % 4
    report = find_suspects(x, noisy, 4)
    found = {s.index for s in report.suspects}
    assert len(found & set(flipped.tolist())) >= 20, "most flips are flagged"
    assert len(found - set(flipped.tolist())) <= 6, "few clean images are"
    for s in report.suspects:
        if s.index in set(flipped.tolist()):
            assert s.suggested == y[s.index] and s.given == noisy[s.index]
        assert s.confidence > s.given_probability and s.margin < 0
    margins = [s.margin for s in report.suspects]
    assert margins == sorted(margins), "the most likely wrong first"
    np.testing.assert_allclose(report.probabilities.sum(1), 1.0)


def test_the_same_image_under_two_labels_comes_first() -> None:
    x, y = _clusters()
    x = np.vstack([x, x[:1]])  # image 0 uploaded again into another class
    y = np.append(y, 2)
    content = [f"sha{i}" for i in range(len(y) - 1)] + ["sha0"]
    report = find_suspects(x, y, 4, content=content)
    first_two = {s.index for s in report.suspects[:2]}
    assert first_two == {0, len(y) - 1} and all(s.conflict for s in report.suspects[:2])


def test_one_class_cannot_be_checked() -> None:
    x, _ = _clusters()
    with pytest.raises(ValueError, match="two classes"):
        find_suspects(x, np.zeros(len(x), dtype=np.int64), 4)


def test_the_estimated_number_of_errors_counts_confident_disagreements() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    y = np.array([0, 0, 0, 1, 1, 1])
    # thresholds: class 0 = mean(0.9, 0.8, 0.3) = 0.667, class 1 = mean(0.8, 0.4, 0.55) = 0.583
    # row 2 (labelled 0): only class 1 clears its threshold -> an error; row 4 (labelled 1): 0.6 < 0.667, 0.4 <
    # 0.583 -> not confident either way; the others agree with their label
    assert estimated_errors(probs, y) == 1


@pytest.mark.parametrize("dim", [30, 400])
def test_left_out_scores_at_one_alpha_equal_the_eigendecomposition_path(dim: int) -> None:
    x, y = _clusters(dim=dim)
    for alpha in (1e-3, 1.0, 100.0):
        np.testing.assert_allclose(left_out_scores_at(x, y, 4, alpha), next(left_out_scores(x, y, 4, [alpha])),
                                   atol=1e-9)
