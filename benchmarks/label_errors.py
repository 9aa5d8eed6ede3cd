"""Finding mislabelled images: Pigeonhole's closed-form suspects against cleanlab, same features, same run.

Sets: flowers5 train.zip, and a small colour set made from MNIST (each digit drawn in a random colour on a
random-colour, noisy background at 32 px: CIFAR-10's size and kind of route). Features: the frozen MobileNetV2
extractor (``--extractor``) as a training job computes them. Then 10 % of the labels are flipped to another
class at random (seeded; the flips are the truth to find).

- Pigeonhole: ``learn.suspects.find_suspects`` on the head's features (its flagged images, and its ranking), at
  the ridge strength of a version trained on the noisy labels (what the suspects job does), and choosing it.
- cleanlab: ``cleanlab.filter.find_label_issues`` on out-of-fold probabilities of a logistic regression
  (5 folds, scikit-learn), the recipe cleanlab documents. Its time includes the cross-validation, which is
  what a user of it has to run.

Figures: precision, recall and F1 of the flagged set against the flips; precision in the first k and recall
in the first 2k of each ranking (k = number of flips); seconds. Then what fixing buys: test accuracy of the
product's head trained on the clean labels, on the noisy ones, and on the noisy ones after a person has
reviewed the flagged images (restoring the true label where it was flipped, keeping it otherwise).

    .venv/bin/pip install -e '.[bench]'   # cleanlab and scikit-learn: the benchmark's extras only
    .venv/bin/python benchmarks/label_errors.py [--flip 0.1] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATASETS, WEIGHTS, mnist, zip_images  # noqa: E402

from pigeonhole.learn.backbones import available_specs  # noqa: E402
from pigeonhole.learn.features import ImageItem, compute_features, pretrained_onnx_extractor  # noqa: E402
from pigeonhole.learn.head import RidgeHead  # noqa: E402
from pigeonhole.learn.suspects import find_suspects  # noqa: E402
from pigeonhole.learn.weights import WeightsCatalog  # noqa: E402

CACHE = Path("/tmp/pigeonhole-bench-label-errors")


def coloured_digits(split: str, limit: int, seed: int) -> dict[str, list[tuple[str, bytes]]]:
    """MNIST digits as 32 px colour images: stroke and background colours at random, with noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[str, bytes]]] = {}
    for label, files in mnist(split, limit).items():
        for name, data in files:
            grey = np.asarray(Image.open(io.BytesIO(data)).convert("L").resize((32, 32), Image.BILINEAR)) / 255.0
            fg, bg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            pixels = grey[..., None] * fg + (1 - grey[..., None]) * bg + rng.normal(0, 12, (32, 32, 3))
            buf = io.BytesIO()
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "PNG")
            out.setdefault(label, []).append((name, buf.getvalue()))
    return out


def features(extractor, images: dict[str, list[tuple[str, bytes]]], cache: Path) -> tuple[np.ndarray, np.ndarray]:
    if cache.exists():
        saved = np.load(cache)
        return saved["x"], saved["y"]
    xs, ys = [], []
    for label, files in sorted(images.items()):
        xs.append(compute_features([ImageItem.from_bytes(b) for _, b in files], extractor))
        ys += [label] * len(files)
    x, y = np.concatenate(xs), np.array(ys)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x=x, y=y)
    return x, y


def flip(y: np.ndarray, classes: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(y), int(round(share * len(y))), replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, classes, len(flipped))) % classes
    return noisy, np.sort(flipped)


def scores(flagged: np.ndarray, ranking: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    truth_set, k = set(truth.tolist()), len(truth)
    hits = len(truth_set & set(flagged.tolist()))
    precision = hits / max(len(flagged), 1)
    recall = hits / k
    return {"flagged": len(flagged), "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12),
            "p_at_k": len(truth_set & set(ranking[:k].tolist())) / k,
            "r_at_2k": len(truth_set & set(ranking[: 2 * k].tolist())) / k}


def version_alpha(x: np.ndarray, y: np.ndarray) -> float:
    """The ridge strength a version trained on these (noisy) labels has: what the suspects job uses."""
    head = RidgeHead(x.shape[1])
    labels = [str(v) for v in y]
    head.add(x, labels)
    head.fit_left_out(x, labels)
    return head.alpha


def pigeonhole(x: np.ndarray, y: np.ndarray, classes: int,
               alpha: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    t = time.perf_counter()
    phi = RidgeHead(x.shape[1]).map(x)
    report = find_suspects(phi, y, classes, **({"alphas": [alpha]} if alpha is not None else {}))
    seconds = time.perf_counter() - t
    flagged = np.array([s.index for s in report.suspects], dtype=np.int64)
    return flagged, report.ranking, seconds


def cleanlab_issues(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t = time.perf_counter()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probs = cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed),
                              method="predict_proba")
    ranked = find_label_issues(y, probs, return_indices_ranked_by="self_confidence")
    seconds = time.perf_counter() - t
    self_confidence = probs[np.arange(len(y)), y]
    return np.asarray(ranked), np.argsort(self_confidence, kind="stable"), seconds


def test_accuracy(x: np.ndarray, y: np.ndarray, tx: np.ndarray, ty: np.ndarray, names: list[str]) -> float:
    head = RidgeHead(x.shape[1])
    labels = [names[i] for i in y]
    head.add(x, labels)
    head.fit_left_out(x, labels)
    predicted = [head.classes[i] for i in head.predict_proba(tx).argmax(1)]
    return float(np.mean([p == names[t] for p, t in zip(predicted, ty, strict=True)]))


def run(name: str, x: np.ndarray, labels: np.ndarray, tx: np.ndarray, tlabels: np.ndarray, share: float,
        seed: int) -> None:
    names = sorted(set(labels.tolist()))
    y = np.array([names.index(v) for v in labels])
    ty = np.array([names.index(v) for v in tlabels])
    noisy, truth = flip(y, len(names), share, seed)
    print(f"label_errors: {name}: {len(y)} images, {len(names)} classes, {len(truth)} labels flipped "
          f"(seed {seed})", flush=True)
    results = {}
    alpha = version_alpha(x, noisy)
    for method, call in (("pigeonhole", lambda: pigeonhole(x, noisy, len(names), alpha)),
                         ("pigeonhole, choosing alpha", lambda: pigeonhole(x, noisy, len(names))),
                         ("cleanlab", lambda: cleanlab_issues(x, noisy, seed))):
        flagged, ranking, seconds = call()
        results[method] = (flagged, scores(flagged, ranking, truth), seconds)
        s = results[method][1]
        print(f"label_errors: {name}: {method:26} flagged {s['flagged']:4d}  precision {s['precision']:.3f}  "
              f"recall {s['recall']:.3f}  F1 {s['f1']:.3f}  | ranking: precision@k {s['p_at_k']:.3f}  "
              f"recall@2k {s['r_at_2k']:.3f}  | {seconds:.2f} s", flush=True)
    ours, theirs = results["pigeonhole"], results["cleanlab"]
    print(f"label_errors: {name}: F1 {ours[1]['f1']:.3f} vs {theirs[1]['f1']:.3f} "
          f"({ours[1]['f1'] - theirs[1]['f1']:+.3f}); time {ours[2]:.2f} s vs {theirs[2]:.2f} s "
          f"({theirs[2] / max(ours[2], 1e-9):.0f}x faster)", flush=True)
    reviewed = noisy.copy()
    found = np.intersect1d(ours[0], truth)
    reviewed[found] = y[found]  # a person looks at each flagged image: restores flips, keeps the rest
    clean, dirty, fixed = (test_accuracy(x, labels_, tx, ty, names) for labels_ in (y, noisy, reviewed))
    print(f"label_errors: {name}: test accuracy clean {clean:.2%}, with the flips {dirty:.2%}, after reviewing "
          f"Pigeonhole's {len(ours[0])} flagged images {fixed:.2%} ({100 * (fixed - clean):+.2f} points from clean)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--extractor", default="mobilenet_v2")
    parser.add_argument("--flip", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--digits", type=int, default=5000, help="coloured digits to train on (test: a fifth)")
    args = parser.parse_args()
    catalog = WeightsCatalog(WEIGHTS)
    spec = next(s for s in available_specs(catalog) if s.id == args.extractor and s.pretrained)
    extractor = pretrained_onnx_extractor(spec.at_size(224 if 224 in spec.sizes else spec.sizes[-1]), catalog)
    small = pretrained_onnx_extractor(spec.at_size(spec.sizes[0]), catalog)
    t = time.monotonic()
    flowers = DATASETS / "flowers5"
    fx, fy = features(extractor, zip_images(flowers / "train.zip"), CACHE / f"{spec.id}-flowers-train.npz")
    tx, ty = features(extractor, zip_images(flowers / "test.zip"), CACHE / f"{spec.id}-flowers-test.npz")
    dx, dy = features(small, coloured_digits("train", args.digits, 1), CACHE / f"{spec.id}-digits-train.npz")
    dtx, dty = features(small, coloured_digits("test", args.digits // 5, 2), CACHE / f"{spec.id}-digits-test.npz")
    print(f"label_errors: features of {spec.id} in {time.monotonic() - t:.0f} s (cached in {CACHE})", flush=True)
    run("flowers5", fx, fy, tx, ty, args.flip, args.seed)
    run("coloured digits 32 px", dx, dy, dtx, dty, args.flip, args.seed)


if __name__ == "__main__":
    main()
