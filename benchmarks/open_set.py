"""How well "unknown" catches things a model was never taught, and what ordinary images it costs.

Frozen pretrained features and the product's own head (``RidgeHead.fit``: ridge strength, temperature and the
unknown detector chosen on a validation fifth of the training images, as training does for larger sets).
For each case the known test images and the never-seen ones are scored by max-softmax, energy and the
familiarity the served model uses (its chosen detector), and we report AUROC (known vs never seen) and the
false-accept rate when 95 % of the known images are accepted. Then the same after growing: the model starts
without one of its known classes, which is added with ``add`` + ``fit`` as the expand job does.

Cases. Near: flowers5 with each class never seen in turn (trained on the other four), MNIST digits 0-7 with
8 and 9 never seen. Far: a flowers5 model shown hymenoptera and MNIST images; a hymenoptera model shown
flowers5. Default-caution figures: the share of known test images answered and the accuracy on those.

    .venv/bin/python benchmarks/open_set.py [--extractor mobilenet_v2] [--fresh]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATASETS, WEIGHTS, mnist, zip_images  # noqa: E402

from pigeonhole.learn import novelty  # noqa: E402
from pigeonhole.learn.backbones import available_specs  # noqa: E402
from pigeonhole.learn.features import ImageItem, compute_features, pretrained_onnx_extractor  # noqa: E402
from pigeonhole.learn.head import RidgeHead  # noqa: E402
from pigeonhole.learn.unknown import choose_unknown  # noqa: E402
from pigeonhole.learn.weights import WeightsCatalog  # noqa: E402


def features(extractor, images: dict[str, list[tuple[str, bytes]]]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for label, files in images.items():
        xs.append(compute_features([ImageItem.from_bytes(b) for _, b in files], extractor))
        ys += [label] * len(files)
    return np.concatenate(xs), np.array(ys)


def train_head(x: np.ndarray, y: np.ndarray, first: list[str] | None = None) -> RidgeHead:
    """A head fitted as training does (validation = a seeded fifth). ``first``: start with only these classes
    and add the others afterwards, as growing does."""
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(0.8 * len(y))
    tr, va = order[:cut], order[cut:]
    head = RidgeHead(x.shape[1])
    if first is None:
        head.add(x[tr], y[tr])
    else:
        early = np.isin(y[tr], first)
        head.add(x[tr][early], y[tr][early])
        head.fit(x[va][np.isin(y[va], first)], y[va][np.isin(y[va], first)])
        choose_unknown(head, x[va][np.isin(y[va], first)], y[va][np.isin(y[va], first)], left_out=False)
        head.add(x[tr][~early], y[tr][~early])
    head.fit(x[va], y[va])
    choose_unknown(head, x[va], y[va], left_out=False)
    return head


def scores(head: RidgeHead, x: np.ndarray) -> dict[str, np.ndarray]:
    logits = head.scores(x) / head.temperature
    return {"max-softmax": novelty.raw_scores("softmax", logits, head.temperature, x, None),
            "energy": novelty.raw_scores("energy", logits, head.temperature, x, None),
            "familiarity": head.familiarity(x)}


def report(name: str, head: RidgeHead, known_x: np.ndarray, known_y: np.ndarray, unknown_x: np.ndarray,
           rows: list[dict]) -> None:
    known, unknown = scores(head, known_x), scores(head, unknown_x)
    answered = known["familiarity"] >= head.threshold
    right = head.predict_proba(known_x).argmax(1) == np.array([head.classes.index(c) for c in known_y])
    row = {"case": name, "detector": novelty.name_of(head.detector.kind, head.detector.shrinkage),
           "answered": float(answered.mean()), "right_when_answered": float(right[answered].mean()),
           "refused_unknown": float((unknown["familiarity"] < head.threshold).mean())}
    for key in known:
        row[key] = (novelty.auroc(known[key], unknown[key]), novelty.false_accepts(known[key], unknown[key]))
    rows.append(row)
    print(f"open_set: {name:34} {row['detector']:24} " + "  ".join(
        f"{k} AUROC {row[k][0]:.3f} FPR95 {row[k][1]:.3f}" for k in known)
        + f"  | default caution: answers {row['answered']:.1%} of known, right on {row['right_when_answered']:.1%}, "
          f"refuses {row['refused_unknown']:.1%} of never-seen", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--extractor", default="mobilenet_v2")
    parser.add_argument("--fresh", action="store_true", help="only what ships with the product (EfficientNet-Lite0)")
    parser.add_argument("--mnist", type=int, default=3000, help="MNIST training images (test: half as many)")
    args = parser.parse_args()
    catalog = WeightsCatalog(None if args.fresh else WEIGHTS)
    wanted = "efficientnet_lite0" if args.fresh else args.extractor
    spec = next(s for s in available_specs(catalog) if s.id == wanted and s.pretrained)
    spec = spec.at_size(224 if 224 in spec.sizes else spec.sizes[-1])
    extractor = pretrained_onnx_extractor(spec, catalog)
    t = time.monotonic()
    fx, fy = features(extractor, zip_images(DATASETS / "flowers5" / "train.zip"))
    tx, ty = features(extractor, zip_images(DATASETS / "flowers5" / "test.zip"))
    hx, hy = features(extractor, zip_images(DATASETS / "hymenoptera" / "train.zip"))
    hvx, hvy = features(extractor, zip_images(DATASETS / "hymenoptera" / "val.zip"))
    mx, my = features(extractor, mnist("train", args.mnist))
    mtx, mty = features(extractor, mnist("test", args.mnist // 2))
    print(f"open_set: features of {spec.id} at {spec.input_size} px in {time.monotonic() - t:.0f} s", flush=True)

    rows: list[dict] = []
    grown: list[dict] = []
    flowers = sorted(set(fy))
    for held in flowers:
        keep, tkeep = fy != held, ty != held
        report(f"near: flowers5 without {held}", train_head(fx[keep], fy[keep]), tx[tkeep], ty[tkeep], tx[~tkeep],
               rows)
        rest = [c for c in flowers if c != held]
        report(f"near: flowers5 without {held}, grown", train_head(fx[keep], fy[keep], rest[:-1]), tx[tkeep],
               ty[tkeep], tx[~tkeep], grown)
    keep, tkeep = ~np.isin(my, ["8", "9"]), ~np.isin(mty, ["8", "9"])
    report("near: MNIST 0-7, 8-9 unseen", train_head(mx[keep], my[keep]), mtx[tkeep], mty[tkeep], mtx[~tkeep], rows)
    report("near: MNIST 0-7, 8-9 unseen, grown", train_head(mx[keep], my[keep], [str(d) for d in range(7)]),
           mtx[tkeep], mty[tkeep], mtx[~tkeep], grown)
    flower_head = train_head(fx, fy)
    flower_grown = train_head(fx, fy, flowers[:-1])
    for name, ux in (("hymenoptera", np.vstack([hx, hvx])), ("MNIST", mtx)):
        report(f"far: flowers5 model, {name}", flower_head, tx, ty, ux, rows)
        report(f"far: flowers5 model, {name}, grown", flower_grown, tx, ty, ux, grown)
    report("far: hymenoptera model, flowers5", train_head(hx, hy), hvx, hvy, tx, rows)

    for label, group in (("trained", rows), ("grown", grown)):
        near = [r for r in group if r["case"].startswith("near")]
        far = [r for r in group if r["case"].startswith("far")]
        for kind, part in (("near", near), ("far", far)):
            if part:
                msp = np.mean([r["max-softmax"][0] for r in part])
                energy = np.mean([r["energy"][0] for r in part])
                fam = np.mean([r["familiarity"][0] for r in part])
                print(f"open_set: mean {kind} AUROC ({label}, {len(part)} cases): max-softmax {msp:.3f}, energy "
                      f"{energy:.3f}, chosen detector {fam:.3f} ({100 * (fam - msp):+.1f} points over max-softmax); "
                      f"min chosen {min(r['familiarity'][0] for r in part):.3f}")
    answered = np.mean([r["answered"] for r in rows])
    print(f"open_set: default caution answers {answered:.1%} of known test images on average "
          f"(right on {np.mean([r['right_when_answered'] for r in rows]):.1%} of those)")


if __name__ == "__main__":
    main()
