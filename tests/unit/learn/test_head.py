"""Incremental ridge head: exactness against a refit, calibration, unknown threshold."""

from __future__ import annotations

import numpy as np
import pytest

from pigeonhole.learn import novelty
from pigeonhole.learn.artifacts import export_model
from pigeonhole.learn.backbones import PixelExtractor, build_extractor, get_spec
from pigeonhole.learn.evaluate import evaluate
from pigeonhole.learn.export import INPUT_NAME, open_session
from pigeonhole.learn.head import HeadConfig, RidgeHead
from pigeonhole.learn.preprocess import images_to_batch
from pigeonhole.learn.ridge import RidgeProblem, calibrated_nll, class_weights, left_out_scores
from pigeonhole.learn.unknown import choose_unknown


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _subset(x: np.ndarray, labels: list[str], name: str, sl: slice = slice(None)) -> tuple[np.ndarray, list[str]]:
    idx = [i for i, lab in enumerate(labels) if lab == name][sl]
    return x[idx], [name] * len(idx)


@pytest.mark.parametrize(
    ("config", "dense_after"),
    [(HeadConfig(), None), (HeadConfig(), 0), (HeadConfig(random_features=256, seed=3), None)],
    ids=["factored", "dense", "random-features"],
)
def test_incremental_equals_refit(flower_features, config: HeadConfig, dense_after: int | None) -> None:
    x, labels = flower_features["train"]
    x2, labels2 = flower_features["val"]
    dim = x.shape[1]

    inc = RidgeHead(dim, config, dense_after=dense_after)
    inc.add(*_subset(x, labels, "daisy"))
    inc.add(*_subset(x, labels, "dandelion"))
    inc.add(*_subset(x, labels, "rose", slice(0, 10)))  # part of a class
    inc.add(*_subset(x, labels, "tulip"))  # add class
    inc.gram()  # from here on the summed Gram is kept up to date by every change below
    inc.remove_class("dandelion")  # remove class
    inc.add(*_subset(x, labels, "rose", slice(10, None)))  # add images to a class
    inc.add(*_subset(x2, labels2, "daisy", slice(0, 5)))  # images that will be removed again
    inc.add(*_subset(x, labels, "sunflower"))
    inc.remove_images(*_subset(x2, labels2, "daisy", slice(0, 5)))  # remove images
    inc.add(*_subset(x2, labels2, "tulip"))  # more images later

    final = [_subset(x, labels, c) for c in ("daisy", "rose", "tulip", "sunflower")] + [_subset(x2, labels2, "tulip")]
    refit = RidgeHead(dim, config, dense_after=dense_after)
    refit.add(np.vstack([f for f, _ in final]), sum((lab for _, lab in final), []))

    assert inc.classes == refit.classes == ["daisy", "rose", "tulip", "sunflower"]
    assert inc.counts == refit.counts
    assert _rel(inc.gram(), refit.gram()) < 1e-12
    copied = inc.copy()
    copied.remove_class("tulip")
    assert inc.classes == refit.classes and _rel(inc.gram(), refit.gram()) < 1e-12  # a copy is independent
    for alpha in (1e-3, 1.0):
        inc.solve(alpha)
        refit.solve(alpha)
        assert _rel(inc.weights, refit.weights) < 1e-6
        assert _rel(inc.bias, refit.bias) < 1e-6
    probe = flower_features["test"][0]
    np.testing.assert_allclose(inc.predict_proba(probe), refit.predict_proba(probe), rtol=1e-6, atol=1e-9)
    # the unknown detector comes from the same statistics: grown and refit heads refuse the same images
    for head in (inc, refit):
        head.fit(*flower_features["val"])
        choose_unknown(head, *flower_features["val"], left_out=False)
    assert inc.detector.kind == refit.detector.kind and inc.threshold == refit.threshold
    np.testing.assert_allclose(inc.detector.knots, refit.detector.knots, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(inc.familiarity(probe), refit.familiarity(probe), atol=1e-6)


def test_removing_held_images_keeps_the_class_factored(flower_features) -> None:
    """Images the class holds are dropped from its rows (any order); others densify it, exactly."""
    x, labels = flower_features["train"]
    xv, labels_v = flower_features["val"]
    config = HeadConfig(random_features=64, seed=2)
    head = RidgeHead(x.shape[1], config)
    head.add(x, labels)
    held, names = _subset(x, labels, "daisy", slice(0, 5))
    head.remove_images(held[::-1], names)
    stats = head._stats["daisy"]
    assert stats.rows is not None and len(stats.rows) == stats.count == labels.count("daisy") - 5
    foreign, foreign_names = _subset(xv, labels_v, "rose", slice(0, 2))
    head.add(foreign[:1], foreign_names[:1])
    head.remove_images(foreign, foreign_names[:1] * 2)  # one held, one never added: subtracted as a Gram
    assert head._stats["rose"].rows is None and head._stats["rose"].gram is not None
    kept = [i for i, lab in enumerate(labels) if not (lab == "daisy" and i in set(
        [j for j, name in enumerate(labels) if name == "daisy"][:5]))]
    expected = RidgeHead(x.shape[1], config)
    expected.add(x[kept], [labels[i] for i in kept])
    expected.remove_images(foreign[1:], foreign_names[:1])
    head.solve(0.1)
    expected.solve(0.1)
    assert _rel(head.weights, expected.weights) < 1e-6


@pytest.mark.parametrize("config", [HeadConfig(), HeadConfig(random_features=512, seed=1)], ids=["plain", "rff"])
def test_dual_form_equals_primal(flower_features, config: HeadConfig) -> None:
    """Fewer rows than dimensions: the N x N (dual) solve chooses and solves exactly as the D x D one."""

    x, labels = flower_features["train"]
    xv, labels_v = flower_features["val"]
    rows = RidgeHead(x.shape[1], config)  # held as rows: 150 images < 1,280+ dimensions
    dense = RidgeHead(x.shape[1], config, dense_after=0)
    for head in (rows, dense):
        head.add(x, labels)
    assert RidgeProblem([rows._stats[c] for c in rows.classes], rows.map.dim).dual
    assert not RidgeProblem([dense._stats[c] for c in dense.classes], dense.map.dim).dual
    chosen_rows, chosen_dense = rows.fit(xv, labels_v), dense.fit(xv, labels_v)
    assert chosen_rows["alpha"] == chosen_dense["alpha"]
    for key in ("val_accuracy", "val_nll", "temperature"):
        assert chosen_rows[key] == pytest.approx(chosen_dense[key], rel=1e-6, abs=1e-9)
    assert _rel(rows.weights, dense.weights) < 1e-6 and _rel(rows.bias, dense.bias) < 1e-6
    for alpha in (1e-3, 10.0):
        rows.solve(alpha)
        dense.solve(alpha)
        assert _rel(rows.weights, dense.weights) < 1e-6 and _rel(rows.bias, dense.bias) < 1e-6


def test_statistics_equal_plain_least_squares(flower_features) -> None:
    """The statistics-only solve is the textbook ridge on standardised data."""
    x, labels = flower_features["train"]
    head = RidgeHead(x.shape[1], HeadConfig(l2_normalize=False))
    head.add(x, labels)
    alpha = 0.1
    head.solve(alpha)
    xd = x.astype(np.float64)
    mu, sd = xd.mean(0), xd.std(0)
    sd[sd == 0] = 1.0
    z = (xd - mu) / sd
    y = np.eye(len(head.classes))[[head.classes.index(lab) for lab in labels]]
    n = len(z)
    wz = np.linalg.solve(z.T @ z / n + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean(0)) / n)
    assert _rel(head.weights, wz / sd[:, None]) < 1e-6
    assert _rel(head.bias, y.mean(0) - mu @ (wz / sd[:, None])) < 1e-6


def test_flowers_end_to_end(flower_features) -> None:
    train, val, test = flower_features["train"], flower_features["val"], flower_features["test"]
    head = RidgeHead(train[0].shape[1])
    head.add(*train)
    info = head.fit(*val)
    y = [head.classes.index(lab) for lab in test[1]]
    metrics = evaluate(y, head.predict_proba(test[0]), head.classes, threshold=head.threshold)
    print(
        f"\nflowers5, mobilenet_v2@224 + ridge head, 30 train/class: test accuracy {metrics['accuracy']:.3f} "
        f"(chance 0.2), alpha {info['alpha']}, T {info['temperature']:.3f}, ECE {metrics['ece']:.3f}, "
        f"unknown threshold {head.threshold:.3f} -> coverage {metrics['coverage']:.2f}, "
        f"selective accuracy {metrics['selective_accuracy']:.3f}"
    )
    # 30 images/class of small, blurry, partly mislabelled photos: ~0.6 measured; README's
    # 71.5 % uses all 2,760 training images. The floor is 2.5x chance.
    assert metrics["accuracy"] >= 0.5
    assert set(metrics["per_class"]["classes"]) == set(head.classes)


def test_calibration_and_caution_on_validation(flower_features) -> None:
    train, val = flower_features["train"], flower_features["val"]
    head = RidgeHead(train[0].shape[1])
    head.add(*train)
    info = head.fit(*val)
    choose_unknown(head, *val, left_out=False, caution=0.1)
    y = np.array([head.classes.index(lab) for lab in val[1]])
    scores = head.scores(val[0])
    t = head.temperature
    best = calibrated_nll(scores, y, 1 / t)
    for other in (1.0, t * 2, t / 2, t * 1.1, t / 1.1):
        assert best <= calibrated_nll(scores, y, 1 / other) + 1e-9
    assert info["val_nll"] == pytest.approx(best)

    # The caution is the share of the held-out images of the taught classes answered "unknown", and the
    # figures the head records are what it does on them.
    familiar = head.familiarity(val[0])
    accepted = familiar >= head.threshold
    assert head.threshold == 0.1 and abs((~accepted).mean() - 0.1) <= 0.02
    precision = float((scores.argmax(1)[accepted] == y[accepted]).mean())
    assert head.threshold_precision == pytest.approx(precision) and head.threshold_coverage == pytest.approx(
        accepted.mean())
    labels = [lab for lab, _ in head.predict(val[0])]
    assert labels.count(None) == int((~accepted).sum())
    with pytest.raises(ValueError, match="between 0 and 0.5"):
        head.set_caution(0.9)


@pytest.mark.parametrize(("n", "d"), [(30, 48), (90, 12)], ids=["dual", "primal"])
def test_left_out_scores_equal_refits_without_each_image(n: int, d: int) -> None:
    """Both eigen-forms give, for every row, the score of the ridge refit without that row: exactly for a fixed
    standardisation, and to O(1/N) against real head refits (which re-standardise)."""
    rng = np.random.default_rng(7)
    k = 3
    y = np.arange(n) % k
    x = rng.normal(size=(n, d)) + 2.5 * np.eye(k, d)[y]
    head = RidgeHead(d)
    phi = head.map(x)
    alphas = (0.1, 3.0)
    loo = list(left_out_scores(phi, y, k, alphas))
    mu, sigma = phi.mean(axis=0), phi.std(axis=0)
    z = (phi - mu) / (sigma * np.sqrt(n))
    onehot = np.eye(k)[y]
    for a, scores in zip(alphas, loo, strict=True):
        agree = 0
        for i in range(n):
            rest = np.arange(n) != i
            zc, yc = z[rest] - z[rest].mean(axis=0), onehot[rest] - onehot[rest].mean(axis=0)
            w = np.linalg.solve(zc.T @ zc + a * np.eye(d), zc.T @ yc)
            exact = (z[i] - z[rest].mean(axis=0)) @ w + onehot[rest].mean(axis=0)
            np.testing.assert_allclose(scores[i], exact, atol=1e-8)
            refit = RidgeHead(d)
            refit.add(x[rest], [str(c) for c in y[rest]])
            refit.solve(a)
            real = refit.scores(x[i : i + 1])[0][[refit.classes.index(str(c)) for c in range(k)]]
            assert np.abs(real - scores[i]).max() < 0.1
            agree += int(real.argmax() == scores[i].argmax())
        assert agree >= 0.9 * n  # rows near a class boundary may tip either way


def test_fit_left_out_chooses_on_held_images(flower_features) -> None:
    """The head keeps every image it held, picks alpha on their left-out scores, and says how many it used."""
    train, val = flower_features["train"], flower_features["val"]
    x = np.vstack([train[0], val[0]])
    labels = train[1] + val[1]
    head = RidgeHead(x.shape[1])
    head.add(x, labels)
    info = head.fit_left_out(x, labels)
    assert info["left_out"] == len(labels) and sum(head.counts.values()) == len(labels)
    y = np.array([head.classes.index(lab) for lab in labels])
    alphas = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
    accs = [float((s.argmax(1) == y).mean()) for s in left_out_scores(head.map(x), y, len(head.classes), alphas)]
    assert info["val_accuracy"] == pytest.approx(max(accs)) and accs[alphas.index(head.alpha)] == max(accs)
    assert head.weights is not None and head.temperature > 0
    with pytest.raises(ValueError, match="exactly the images"):
        head.fit_left_out(x[:-1], labels[:-1])


def test_serialise_rename_and_guards(flower_features) -> None:
    train, val = flower_features["train"], flower_features["val"]
    head = RidgeHead(train[0].shape[1], HeadConfig(random_features=64), dense_after=40)
    head.add(*train)
    head.fit(*val)
    restored = RidgeHead.from_bytes(head.to_bytes())
    assert restored.classes == head.classes and restored.counts == head.counts
    assert (restored.alpha, restored.temperature, restored.threshold) == (head.alpha, head.temperature, head.threshold)
    np.testing.assert_array_equal(restored.predict_proba(val[0]), head.predict_proba(val[0]))
    restored.solve()
    assert _rel(restored.weights, head.weights) < 1e-12

    # rows held as a factor are saved as float32 without losing a bit (the map rounds to float32)
    small = RidgeHead(train[0].shape[1])
    small.add(*train)
    reloaded = RidgeHead.from_bytes(small.to_bytes())
    for name in small.classes:
        assert reloaded._stats[name].rows.dtype == np.float32
        np.testing.assert_array_equal(reloaded._stats[name].rows, small._stats[name].rows)

    before = head.weights.copy()
    head.rename_class("rose", "roses")
    assert "roses" in head.classes and "rose" not in head.classes
    np.testing.assert_array_equal(head.weights, before)
    with pytest.raises(ValueError, match="already exists"):
        head.rename_class("roses", "tulip")
    head.remove_class("daisy")
    with pytest.raises(RuntimeError, match="solve"):
        head.predict(val[0])
    lonely = RidgeHead(train[0].shape[1])
    lonely.add(train[0][:3], ["daisy"] * 3)
    with pytest.raises(ValueError, match="two classes"):
        lonely.solve()


def test_classifier_export_matches_head(catalog, flowers, flower_features) -> None:
    train, val = flower_features["train"], flower_features["val"]
    spec = get_spec("mobilenet_v2")
    head = RidgeHead(train[0].shape[1], HeadConfig(random_features=128))
    head.add(*train)
    head.fit(*val)
    choose_unknown(head, *val, left_out=False)
    extractor = PixelExtractor(spec, build_extractor(spec, catalog))
    session = open_session(export_model(extractor, spec.input_spec(), head))
    pixels = images_to_batch([b for b, _ in flowers.test[:6]], spec.input_size)
    got, familiar, feats = session.run(None, {INPUT_NAME: pixels})
    np.testing.assert_allclose(got, head.predict_proba(feats), atol=2e-4)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(familiar, head.familiarity(feats), atol=2e-3)  # float32 graph, float64 head


def _rare_class_blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three overlapping classes of 200, 200 and 8 rows (a rare class among common ones)."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], [200, 200, 8])
    return rng.normal(size=(len(y), 16)) + 1.6 * np.eye(3, 16)[y], y


@pytest.mark.parametrize("dense_after", [None, 0], ids=["dual", "primal"])
def test_a_rare_class_is_weighted_up_exactly(dense_after: int | None) -> None:
    """A class below two thirds of the median size counts as if it had the median's rows: the solve is the
    textbook ridge with those sample weights, in both forms, and adding/removing rows stays exact."""
    x, y = _rare_class_blobs()
    labels = [str(c) for c in y]
    head = RidgeHead(16, HeadConfig(l2_normalize=False), dense_after=dense_after)
    head.add(x, labels)
    alpha = 0.3
    head.solve(alpha)
    weight = np.where(y == 2, 200 / 8, 1.0)  # the median's 200 rows' worth
    total = weight.sum()
    mu = weight @ x / total
    sd = np.sqrt(weight @ (x - mu) ** 2 / total)
    z = (x - mu) / sd
    onehot = np.eye(3)[y]
    prior = weight @ onehot / total
    wz = np.linalg.solve((z.T * weight) @ z / total + alpha * np.eye(16), (z.T * weight) @ (onehot - prior) / total)
    assert _rel(head.weights, wz / sd[:, None]) < 1e-6
    assert _rel(head.bias, prior - mu @ (wz / sd[:, None])) < 1e-6
    # statistics stay unweighted: taking rows out and back in gives the same head
    grown = RidgeHead(16, HeadConfig(l2_normalize=False), dense_after=dense_after)
    grown.add(x[:300], labels[:300])
    grown.add(x[300:], labels[300:])
    grown.remove_images(x[:5], labels[:5])
    grown.add(x[:5], labels[:5])
    grown.solve(alpha)
    assert _rel(grown.weights, head.weights) < 1e-6 and _rel(grown.bias, head.bias) < 1e-6


def test_a_rare_class_is_predicted(monkeypatch) -> None:
    """Without the weights the 8-row class is almost never the answer; with them it is found."""
    import pigeonhole.learn.ridge as ridge_module

    x, y = _rare_class_blobs()
    xt, yt = _rare_class_blobs(seed=1)
    recall = {}
    for name, ratio in (("unweighted", 1e12), ("weighted", ridge_module.RARE_RATIO)):
        monkeypatch.setattr(ridge_module, "RARE_RATIO", ratio)
        head = RidgeHead(16, HeadConfig(l2_normalize=False))
        head.add(x, [str(c) for c in y])
        head.solve(1.0)
        predicted = np.array([int(head.classes[i]) for i in head.scores(xt).argmax(1)])
        recall[name] = float((predicted[yt == 2] == 2).mean())
    assert recall["unweighted"] <= 0.25 and recall["weighted"] >= 0.6, recall


def test_left_out_scores_with_a_rare_class_equal_weighted_refits() -> None:
    """The left-out scores use the class weights too: for a fixed standardisation each equals the weighted
    ridge refit without that row."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], [40, 40, 4])
    x = rng.normal(size=(len(y), 10)) + 2.0 * np.eye(3, 10)[y]
    alpha = 0.5
    scores = next(iter(left_out_scores(x, y, 3, (alpha,))))
    weight = np.where(y == 2, 40 / 4, 1.0)
    total = weight.sum()
    mu = weight @ x / total
    sd = np.sqrt(weight @ (x - mu) ** 2 / total)
    z = (x - mu) / (sd * np.sqrt(total))
    onehot = np.eye(3)[y]
    for i in (0, 41, 80, 83):
        rest = np.arange(len(y)) != i
        w = weight[rest]
        zm, ym = w @ z[rest] / w.sum(), w @ onehot[rest] / w.sum()
        zc, yc = z[rest] - zm, onehot[rest] - ym
        coef = np.linalg.solve((zc.T * w) @ zc + alpha * np.eye(10), (zc.T * w) @ yc)
        np.testing.assert_allclose(scores[i], (z[i] - zm) @ coef + ym, atol=1e-8)


def test_class_weights_only_for_a_rare_class() -> None:
    """Sets whose classes are within 1.5x below the median solve unweighted (flowers5's train folder: 587-842);
    once one class is rarer, every class below the median counts as the median's size."""

    np.testing.assert_array_equal(class_weights(np.array([613, 842, 627, 587, 784])), np.ones(5))
    np.testing.assert_array_equal(class_weights(np.array([121, 124])), np.ones(2))
    np.testing.assert_allclose(class_weights(np.array([200, 200, 8, 0])), [1, 1, 25, 1])
    np.testing.assert_allclose(class_weights(np.array([500, 300, 400, 40])), [1, 350 / 300, 1, 350 / 40])


@pytest.mark.parametrize("kind", [None, "softmax", "energy", "relative_mahalanobis"])
def test_answers_in_float32_are_the_probabilities_and_familiarity_of_each_detector(kind: str | None) -> None:
    """``answers`` (the measuring path: float32, scores turned into probabilities in place, the softmax detector's
    score read from them) gives what ``predict_proba`` and ``familiarity`` give in float64."""
    import dataclasses

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((5, 24)) * 0.4  # classes that overlap: answers of every confidence
    x = np.vstack([c + rng.standard_normal((80, 24)) for c in centres]).astype(np.float32)
    labels = [f"c{k}" for k in range(5) for _ in range(80)]
    val = np.arange(len(labels)) % 4 == 0
    head = RidgeHead(24)
    head.add(x[~val], [lab for lab, v in zip(labels, val, strict=True) if not v])
    vx, vy = x[val], [lab for lab, v in zip(labels, val, strict=True) if v]
    head.fit(vx, vy)
    choose_unknown(head, vx, vy, left_out=False)
    if kind is None:
        head.detector = None
    else:  # this detector, with its knots on these images
        head.detector = dataclasses.replace(head.detector, kind=kind)
        phi = head.map(vx)
        raw = head._raw_familiarity(phi, (phi @ head.weights + head.bias) / head.temperature)
        head.detector = dataclasses.replace(head.detector, knots=novelty.quantile_knots(raw))
    probs, familiar = head.answers(vx)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, head.predict_proba(vx), atol=1e-4)  # float32 against float64
    np.testing.assert_allclose(familiar, head.familiarity(vx), atol=2e-3)
    assert np.ptp(familiar) > 0.1  # the detector separates something: the comparison is not of constants
