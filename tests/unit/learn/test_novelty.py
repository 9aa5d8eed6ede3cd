"""The unknown detector: familiarity as a share of held-out known images, chosen per model, kept by saving."""

from __future__ import annotations

import numpy as np
import pytest

from pigeonhole.learn import novelty
from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.unknown import choose_unknown


def test_familiarity_is_the_share_of_known_scores_below() -> None:
    knots = np.array([0.0, 1.0, 2.0, 4.0])
    got = novelty.familiarity(np.array([-5.0, 0.0, 0.5, 1.0, 3.0, 4.0, 9.0]), knots)
    np.testing.assert_allclose(got, [0.0, 0.0, 1 / 6, 1 / 3, 5 / 6, 1.0, 1.0])
    held = np.random.default_rng(0).normal(size=5000)
    knots = novelty.quantile_knots(held)
    assert len(knots) == novelty.KNOTS
    for share in (0.05, 0.2, 0.5):  # a caution of c refuses about c of the images it was read from
        assert abs((novelty.familiarity(held, knots) < share).mean() - share) < 0.01


def test_auroc_and_false_accepts() -> None:
    assert novelty.auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert novelty.auroc(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.5
    assert novelty.false_accepts(np.arange(100.0), np.array([0.0, 50.0, 99.0])) == pytest.approx(2 / 3)


def _clusters(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float = 1.0):
    y = np.repeat(np.arange(len(centres)), n)
    return centres[y] + spread * rng.normal(size=(len(y), centres.shape[1])), y


def test_a_never_seen_kind_of_image_is_unfamiliar_and_ordinary_ones_are_answered() -> None:
    """Five taught classes and a sixth never taught. Max-softmax is as confident on the sixth as on the taught
    ones here; the chosen detector refuses it, and the taught ones stay answered."""
    rng = np.random.default_rng(1)
    d = 32
    centres = 4.0 * np.eye(6, d) + 10.0
    x, y = _clusters(rng, centres[:5], 80)
    xv, yv = _clusters(rng, centres[:5], 40)
    head = RidgeHead(d)
    head.add(x, [str(c) for c in y])
    head.fit(xv, [str(c) for c in yv])
    choose_unknown(head, xv, [str(c) for c in yv], left_out=False)
    assert set(head.detector.simulated_auroc) == {"softmax", "energy", *(f"relative_mahalanobis@{s:g}"
                                                                          for s in novelty.SHRINKAGES)}
    new = centres[5] + rng.normal(size=(200, d))
    xt, _ = _clusters(rng, centres[:5], 100)
    known, unknown = head.familiarity(xt), head.familiarity(new)
    confidence = lambda f: head.predict_proba(f).max(1)  # noqa: E731
    assert novelty.auroc(confidence(xt), confidence(new)) < 0.7
    assert head.detector.kind == "relative_mahalanobis" and novelty.auroc(known, unknown) > 0.95
    assert 0.85 <= (known >= head.threshold).mean() <= 0.99  # about 5 % of ordinary images refused
    assert (unknown < head.threshold).mean() > 0.8


def test_left_out_familiarity_matches_new_images_of_a_small_set() -> None:
    """With fewer images than dimensions, held images look more typical than new ones unless they are scored
    as if left out: the caution chosen on them must refuse about the same share of new images."""
    rng = np.random.default_rng(2)
    d = 200
    centres = rng.normal(size=(4, d)) * 0.6
    x, y = _clusters(rng, centres, 25)
    head = RidgeHead(d)
    labels = [str(c) for c in y]
    head.add(x, labels)
    head.fit_left_out(x, labels)
    choose_unknown(head, x, labels, left_out=True, caution=0.1)
    xt, _ = _clusters(rng, centres, 500)
    refused = (head.familiarity(xt) < head.threshold).mean()
    assert 0.03 <= refused <= 0.2


def test_detector_survives_saving() -> None:
    rng = np.random.default_rng(3)
    x, y = _clusters(rng, 3.0 * np.eye(3, 8), 30)
    head = RidgeHead(8)
    head.add(x, [str(c) for c in y])
    head.fit(x[::2], [str(c) for c in y[::2]])
    choose_unknown(head, x[::2], [str(c) for c in y[::2]], left_out=False)
    again = RidgeHead.from_bytes(head.to_bytes())
    assert again.detector.kind == head.detector.kind and again.threshold == head.threshold
    np.testing.assert_array_equal(again.familiarity(x), head.familiarity(x))


def test_left_out_distances_equal_refits_without_each_image() -> None:
    rng = np.random.default_rng(4)
    d = 60
    x, y = _clusters(rng, rng.normal(size=(3, d)), 15)
    labels = [str(c) for c in y]
    head = RidgeHead(d)
    head.add(x, labels)
    base = head.map(x)
    dist, background = novelty.left_out_distances(base, head.scatter().moments(3.0), y, np.bincount(y))
    for i in (0, 17, 44):
        keep = np.arange(len(y)) != i
        refit = RidgeHead(d)
        refit.add(x[keep], [labels[j] for j in np.flatnonzero(keep)])
        moments = refit.scatter().moments(3.0)
        exact = novelty.class_distances(base[i : i + 1], moments)[0][[refit.classes.index(c) for c in head.classes]]
        np.testing.assert_allclose(dist[i], exact, rtol=0.03)  # the shrinkage level is kept: O(1/N)
        np.testing.assert_allclose(background[i], novelty.background_distance(base[i : i + 1], moments)[0], rtol=0.03)


@pytest.mark.parametrize("dim", [40, 300])  # fewer dimensions than rows, and more (the dual form)
def test_a_scatter_from_rows_gives_the_metrics_of_one_from_grams(dim: int) -> None:
    rng = np.random.default_rng(3)
    rows = [rng.normal(c, 1.0 + c, (n, dim)) @ rng.normal(size=(dim, dim)) / dim for c, n in enumerate((30, 45, 25))]
    counts = np.array([len(r) for r in rows], dtype=np.float64)
    sums = np.stack([r.sum(0) for r in rows])
    from_grams = novelty.Scatter(counts, sums, sum(r.T @ r for r in rows)).moments(3.0)
    from_rows = novelty.Scatter(counts, sums, rows=rows).moments(3.0)
    probe = rng.normal(size=(7, dim))
    for a, b in ((from_grams.within, from_rows.within), (from_grams.total, from_rows.total)):
        assert a.floor == pytest.approx(b.floor, rel=1e-9)
        np.testing.assert_allclose(a.norms(probe), b.norms(probe), rtol=1e-7)
        np.testing.assert_allclose(a.inner(probe, from_grams.means), b.inner(probe, from_rows.means), rtol=1e-7,
                                   atol=1e-9 * float(np.abs(a.inner(probe, from_grams.means)).max()))


def test_a_small_head_over_many_dimensions_uses_its_rows() -> None:
    """90 images of 3,072 pixel features: the head's scatter is decomposed in 90 dimensions, not 3,072."""
    rng = np.random.default_rng(4)
    features = rng.normal(size=(90, 3072))
    labels = [str(i % 3) for i in range(90)]
    head = RidgeHead(3072)
    head.add(features, labels)
    scatter = head.scatter()
    values, vectors = scatter._eigen("within")
    assert vectors.shape == (3072, len(values)) and len(values) <= 90
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(len(values)), atol=1e-8)
