"""Does the labelling queue save labels? The benchmark plays the user: it labels 50 images at a time, from the
queue's top (``learn.labelling.labelling_order`` with the product's head) or at random, and measures test
accuracy after each round.

Sets: flowers5 (train.zip as the unlabelled pool, test.zip to measure) and the coloured MNIST digits of
``label_errors.py`` (32 px), on the frozen MobileNetV2 features that benchmark caches. Start: 5 labelled images
per class (seeded), the same for both; 50 a round, up to 500 labels. Goal: the queue reaches random's final
accuracy with at most 60 % of the labels. The curves go to an SVG next to the cache.

``--oracle`` adds a reference no product can have: a greedy that sees the pool's true labels and picks, one image
at a time, the one whose label raises the pool's accuracy most (a rank-one update of the ridge solution at the
head's strength, features centred on the pool's mean). It tells what any queue could hope for with this head
and these features: if even it needs more than 60 % of the labels, the goal is out of reach of a smarter order.

    .venv/bin/python benchmarks/label_errors.py      # computes and caches the features first
    .venv/bin/python benchmarks/active_learning.py [--seeds 3] [--oracle]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_errors import CACHE  # noqa: E402

from pigeonhole.learn.head import RidgeHead  # noqa: E402
from pigeonhole.learn.labelling import labelling_order, uncertainty  # noqa: E402

ROUND, BUDGET, START_PER_CLASS = 50, 500, 5
ORACLE = "oracle (true labels)"


def accuracy(x: np.ndarray, y: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> tuple[float, RidgeHead]:
    head = RidgeHead(x.shape[1])
    labels = [str(v) for v in y]
    head.add(x, labels)
    head.fit_left_out(x, labels)
    predicted = np.array([int(head.classes[i]) for i in head.predict_proba(tx).argmax(1)])
    return float((predicted == ty).mean()), head


def oracle_picks(head: RidgeHead, x_pool: np.ndarray, y_pool: np.ndarray, centre: np.ndarray,
                 labelled: np.ndarray, rng: np.random.Generator, candidates: int = 800) -> np.ndarray:
    """ROUND pool indices chosen with the true labels (module docstring). Candidates: the 400 most uncertain
    images and 400 at random (scoring every pool image as a candidate costs 4x more and changed nothing)."""
    pool_phi, lab_phi, alpha = head.map(x_pool) - centre, head.map(labelled) - centre, head.alpha
    # k[p, q] = phi_p^T (L^T L + alpha I)^-1 phi_q, in the dual form (fewer labelled images than dimensions)
    cross = pool_phi @ lab_phi.T
    k = (pool_phi @ pool_phi.T - cross @ np.linalg.solve(lab_phi @ lab_phi.T + alpha * np.eye(len(lab_phi)),
                                                        cross.T)) / alpha
    column = {int(c): i for i, c in enumerate(head.classes)}
    truth = np.array([column[int(v)] for v in y_pool])
    onehot = np.eye(len(head.classes))[truth]
    scores = head.scores(x_pool)
    doubt = np.argsort(-uncertainty(head.predict_proba(x_pool)))
    cand = np.unique(np.concatenate([doubt[:candidates // 2], rng.choice(len(x_pool), candidates // 2,
                                                                        replace=False)]))
    chosen: list[int] = []
    for _ in range(ROUND):
        step = (onehot[cand] - scores[cand]) / (1.0 + k[cand, cand])[:, None]
        gain = np.empty(len(cand))
        for lo in range(0, len(cand), 100):  # (100, pool, classes) at a time
            after = scores[None] + k[:, cand[lo:lo + 100]].T[:, :, None] * step[lo:lo + 100, None, :]
            gain[lo:lo + 100] = (after.argmax(axis=2) == truth[None]).mean(axis=1)
        gain[np.isin(cand, chosen)] = -1.0
        pick = int(cand[np.argmax(gain)])
        chosen.append(pick)
        kp = k[:, pick].copy()
        scores = scores + np.outer(kp, (onehot[pick] - scores[pick]) / (1.0 + kp[pick]))
        k -= np.outer(kp, kp) / (1.0 + kp[pick])
    return np.array(chosen)


def curve(x: np.ndarray, y: np.ndarray, tx: np.ndarray, ty: np.ndarray, strategy: str,
          seed: int) -> list[tuple[int, float]]:
    rng = np.random.default_rng(seed)
    centre = RidgeHead(x.shape[1]).map(x).mean(axis=0) if strategy == ORACLE else None
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
        elif strategy == ORACLE:
            assert centre is not None
            chosen = pool[oracle_picks(head, x[pool], y[pool], centre, x[labelled], rng)]
        else:
            order, _ = labelling_order(head.predict_proba(x[pool]), x[pool],
                                       **({"diversity": 0.0} if strategy == "uncertainty only" else {}))
            chosen = pool[order[:ROUND]]
        labelled = np.concatenate([labelled, chosen])


def labels_to_reach(points: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, acc in points if acc >= target - 1e-12), None)


def svg(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> None:
    """The mean curves, one panel per set (plain SVG: no plotting package needed)."""
    colours = {"queue": "#4f46e5", "random": "#9ca3af", "uncertainty only": "#f59e0b", ORACLE: "#16a34a"}
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
    parser.add_argument("--oracle", action="store_true", help="add the true-label greedy (about 1-2 min a seed)")
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
                for s in ("queue", "random", "uncertainty only") + ((ORACLE,) if args.oracle else ())}
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
        if args.oracle:
            reached = labels_to_reach(means[ORACLE], final_random)
            print(f"active_learning: {name}: the true-label greedy reaches it with {reached or '-'} "
                  f"({f'{reached / means[ORACLE][-1][0]:.0%}' if reached else 'never'})", flush=True)
    out = CACHE / "active_learning.svg"
    svg(mean_curves, out)
    print(f"active_learning: curves in {out}", flush=True)


if __name__ == "__main__":
    main()
