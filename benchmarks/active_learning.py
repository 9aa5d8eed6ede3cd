"""Does the labelling queue save labels? The benchmark plays the user: it labels 50 images at a time, from the
queue's top (``learn.labelling.labelling_order`` with the product's head) or at random, and measures test
accuracy after each round.

Sets: flowers5 (train.zip as the unlabelled pool, test.zip to measure) and the coloured MNIST digits of
``label_errors.py`` (32 px), on the frozen MobileNetV2 features that benchmark caches. Start: 5 labelled images
per class (seeded), the same for both; 50 a round, up to 500 labels. Goal: the queue reaches random's final
accuracy with at most 60 % of the labels. The curves go to an SVG next to the cache.

    .venv/bin/python benchmarks/label_errors.py      # computes and caches the features first
    .venv/bin/python benchmarks/active_learning.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_errors import CACHE  # noqa: E402

from pigeonhole.learn.head import RidgeHead  # noqa: E402
from pigeonhole.learn.labelling import labelling_order  # noqa: E402

ROUND, BUDGET, START_PER_CLASS = 50, 500, 5


def accuracy(x: np.ndarray, y: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> tuple[float, RidgeHead]:
    head = RidgeHead(x.shape[1])
    labels = [str(v) for v in y]
    head.add(x, labels)
    head.fit_left_out(x, labels)
    predicted = np.array([int(head.classes[i]) for i in head.predict_proba(tx).argmax(1)])
    return float((predicted == ty).mean()), head


def curve(x: np.ndarray, y: np.ndarray, tx: np.ndarray, ty: np.ndarray, strategy: str,
          seed: int) -> list[tuple[int, float]]:
    rng = np.random.default_rng(seed)
    labelled = np.concatenate([rng.choice(np.flatnonzero(y == c), START_PER_CLASS, replace=False)
                               for c in np.unique(y)])
    points = []
    while True:
        acc, head = accuracy(x[labelled], y[labelled], tx, ty)
        points.append((len(labelled), acc))
        if len(labelled) >= BUDGET:
            return points
        pool = np.setdiff1d(np.arange(len(y)), labelled)
        if strategy == "random":
            chosen = rng.choice(pool, ROUND, replace=False)
        else:
            order, _ = labelling_order(head.predict_proba(x[pool]), x[pool],
                                       **({"diversity": 0.0} if strategy == "uncertainty only" else {}))
            chosen = pool[order[:ROUND]]
        labelled = np.concatenate([labelled, chosen])


def labels_to_reach(points: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, acc in points if acc >= target - 1e-12), None)


def svg(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> None:
    """The mean curves, one panel per set (plain SVG: no plotting package needed)."""
    colours = {"queue": "#4f46e5", "random": "#9ca3af", "uncertainty only": "#f59e0b"}
    width, height, pad = 420, 280, 40
    panels = []
    for p, (name, by_strategy) in enumerate(curves.items()):
        ys = [a for pts in by_strategy.values() for _, a in pts]
        lo, hi = min(ys), max(ys)
        x0 = p * (width + 20)

        def at(n: float, a: float, lo: float = lo, hi: float = hi, x0: int = x0) -> str:
            return (f"{x0 + pad + (n / BUDGET) * (width - 2 * pad):.1f},"
                    f"{height - pad - (a - lo) / max(hi - lo, 1e-9) * (height - 2 * pad):.1f}")

        lines = [f'<text x="{x0 + pad}" y="20" font-size="14">{name}: test accuracy by labels given</text>',
                 f'<text x="{x0 + pad}" y="{height - 10}" font-size="11">0 … {BUDGET} labels; '
                 f'{lo:.0%} … {hi:.0%}</text>']
        for i, (strategy, pts) in enumerate(by_strategy.items()):
            lines.append(f'<polyline fill="none" stroke="{colours[strategy]}" stroke-width="2" points="'
                         + " ".join(at(n, a) for n, a in pts) + '"/>')
            lines.append(f'<text x="{x0 + width - 150}" y="{height - pad - 40 + 14 * i}" font-size="11" '
                         f'fill="{colours[strategy]}">{strategy}</text>')
        panels.append("\n".join(lines))
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{len(curves) * (width + 20)}" '
                    f'height="{height}">\n' + "\n".join(panels) + "\n</svg>\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    sets = {"flowers5": ("flowers-train", "flowers-test"), "coloured digits": ("digits-train", "digits-test")}
    mean_curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for name, (train, test) in sets.items():
        files = [CACHE / f"mobilenet_v2-{part}.npz" for part in (train, test)]
        if not all(f.exists() for f in files):
            sys.exit(f"active_learning: run benchmarks/label_errors.py first (no cached features in {CACHE})")
        (x, labels), (tx, tlabels) = ((np.load(f)["x"], np.load(f)["y"]) for f in files)
        names = sorted(set(labels.tolist()))
        y = np.array([names.index(v) for v in labels])
        ty = np.array([names.index(v) for v in tlabels])
        runs = {s: [curve(x, y, tx, ty, s, seed) for seed in range(args.seeds)]
                for s in ("queue", "random", "uncertainty only")}
        means = {s: [(pts[0][i][0], float(np.mean([p[i][1] for p in pts]))) for i in range(len(pts[0]))]
                 for s, pts in runs.items()}
        mean_curves[name] = means
        final_random = means["random"][-1][1]
        needed = labels_to_reach(means["queue"], final_random)
        for strategy, pts in means.items():
            print(f"active_learning: {name}: {strategy:16} " + "  ".join(f"{n}:{a:.1%}" for n, a in pts), flush=True)
        share = f"{needed / means['random'][-1][0]:.0%}" if needed else "never"
        print(f"active_learning: {name}: random reaches {final_random:.2%} with {means['random'][-1][0]} labels; "
              f"the queue reaches it with {needed or '-'} ({share}; goal ≤ 60 %); queue's final "
              f"{means['queue'][-1][1]:.2%} (mean of {args.seeds} seeds)", flush=True)
    out = CACHE / "active_learning.svg"
    svg(mean_curves, out)
    print(f"active_learning: curves in {out}", flush=True)


if __name__ == "__main__":
    main()
