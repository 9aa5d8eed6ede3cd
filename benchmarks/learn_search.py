"""Direct (non-API) benchmark of the automatic model search on the shared datasets.

    python benchmarks/learn_search.py hymenoptera flowers5 mnist --budget hymenoptera=60 --budget flowers5=600

Prints one line per dataset: wall time, time to first candidate, test accuracy, chosen
candidate, model size, single-image latency (ONNX Runtime). ``--subset N`` keeps N
training images per class (development runs). The held-out split is the dataset's own
test/val folder; the search carves its validation split out of train.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _data import shrink  # noqa: E402

from pigeonhole.learn.data import MappingSource, TrainingImage, TrainingSet, sha256_bytes  # noqa: E402
from pigeonhole.learn.memory import JsonMemoryStore, ModelMemory  # noqa: E402
from pigeonhole.learn.search import CandidateResult, SearchConfig, run_search  # noqa: E402

DATASETS = Path(os.environ.get("PIGEONHOLE_DATASETS_DIR") or ROOT.parent / "shared" / "datasets")
WEIGHTS = Path(os.environ.get("PIGEONHOLE_WEIGHTS_DIR") or ROOT.parent / "shared" / "weights")
DEFAULT_BUDGETS = {"hymenoptera": 60.0, "flowers5": 600.0, "mnist": 600.0}
HELD_OUT = {"hymenoptera": "val.zip", "flowers5": "test.zip"}


def _zip_images(
    path: Path, split: str, blobs: dict, out: list, per_class: int | None, skip: int = 0, side: int = 0,
    caps: dict[str, int] | None = None,
) -> None:
    taken: dict[str, int] = {}
    with zipfile.ZipFile(path) as zf:
        for name in sorted(zf.namelist()):
            if name.endswith("/") or "/" not in name:
                continue
            label = name.split("/")[0]
            taken[label] = taken.get(label, 0) + 1
            if taken[label] <= skip or (per_class is not None and taken[label] > skip + per_class):
                continue
            if caps and label in caps and taken[label] > skip + caps[label]:
                continue
            data = zf.read(name)
            if side:
                data = shrink(data, side)
            key = sha256_bytes(data)
            blobs[key] = data
            out.append(TrainingImage(key, label, split, len(data)))


def _mnist(split: str, prefix: str, blobs: dict, out: list, per_class: int | None, skip: int = 0) -> None:
    from PIL import Image

    root = DATASETS / "mnist"
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz") as fh:
        raw = fh.read()
    images = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), dtype=np.uint8, offset=8)
    taken: dict[int, int] = {}
    for img, lab in zip(images, labels, strict=True):
        taken[int(lab)] = taken.get(int(lab), 0) + 1
        if taken[int(lab)] <= skip or (per_class is not None and taken[int(lab)] > skip + per_class):
            continue
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, "PNG")
        data = buf.getvalue()
        key = sha256_bytes(data)
        blobs[key] = data
        out.append(TrainingImage(key, str(int(lab)), split, len(data)))


def load(
    name: str, subset: int | None, skip: int = 0, side: int = 0, caps: dict[str, int] | None = None
) -> tuple[TrainingSet, MappingSource]:
    blobs: dict[str, bytes] = {}
    images: list[TrainingImage] = []
    if name == "mnist":
        _mnist("train", "train", blobs, images, subset, skip)
        _mnist("test", "t10k", blobs, images, None if subset is None else max(subset // 4, 10))
    else:
        _zip_images(DATASETS / name / "train.zip", "train", blobs, images, subset, skip, side, caps)
        _zip_images(DATASETS / name / HELD_OUT[name], "test", blobs, images, None, side=side)
    # duplicate files (same bytes) keep their first label, like the dataset service's dedup
    seen: set[str] = set()
    unique = []
    for img in images:
        if (img.key, img.split) not in seen:
            seen.add((img.key, img.split))
            unique.append(img)
    return TrainingSet(tuple(unique)), MappingSource(blobs)


class _Reporter:
    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.first: float | None = None
        self.t0 = time.monotonic()

    def progress(self, fraction, stage, eta_s, metrics) -> None:
        if self.verbose:
            best = metrics.get("best_val_accuracy")
            print(f"  [{time.monotonic() - self.t0:6.1f}s {fraction:4.0%}] {stage}"
                  + (f" (best val {best:.3f})" if best is not None else ""), file=sys.stderr, flush=True)

    def candidate_ready(self, c: CandidateResult) -> None:
        if self.first is None:
            self.first = time.monotonic() - self.t0
        if self.verbose:
            print(f"  ready at {c.ready_at_s:.1f}s: {c.name} val {c.val_accuracy:.3f} "
                  f"test {c.test_metrics.get('accuracy', float('nan')):.3f}", file=sys.stderr, flush=True)

    def cancelled(self) -> bool:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", default=["hymenoptera", "flowers5", "mnist"])
    parser.add_argument("--budget", action="append", default=[], help="name=seconds (repeatable)")
    parser.add_argument("--target", type=float, default=None)
    parser.add_argument("--preference", default="balanced", choices=["fast", "balanced", "accurate"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset", type=int, default=None, help="training images per class")
    parser.add_argument("--skip", type=int, default=0,
                        help="leave out the first N training images of each class (a set disjoint from --subset N)")
    parser.add_argument("--side", type=int, default=0,
                        help="shrink every photo to N x N px first (a small colour set like CIFAR's 32 px)")
    parser.add_argument("--cap", action="append", default=[],
                        help="CLASS=N: keep only N training images of that class (a rare class; repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: a fresh temporary folder")
    parser.add_argument("--memory", type=Path, default=None, help="JSON model memory file to read and extend")
    parser.add_argument("--json", action="store_true", help="also print the leaderboard as JSON")
    parser.add_argument("--virtual", type=float, default=None, metavar="STEP_S",
                        help="replay on a virtual clock with stated costs (a fine-tuning step STEP_S seconds at "
                             "128 px): the same choices on any machine, however busy")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    budgets = dict(DEFAULT_BUDGETS)
    for item in args.budget:
        key, _, value = item.partition("=")
        budgets[key] = float(value)
    caps = {k: int(v) for k, _, v in (item.partition("=") for item in args.cap)}
    memory = ModelMemory(JsonMemoryStore(args.memory)) if args.memory else None
    for name in args.datasets:
        ts, source = load(name, args.subset, args.skip, args.side, caps)
        with tempfile.TemporaryDirectory() as tmp:
            cache = args.cache_dir or Path(tmp) / "cache"
            config = SearchConfig(
                target_accuracy=args.target, time_budget_s=budgets[name], preference=args.preference,
                seed=args.seed, weights_dir=WEIGHTS, cache_dir=cache, output_dir=Path(tmp) / "out",
                threads=args.threads,
            )
            reporter = _Reporter(args.verbose)
            t = time.monotonic()
            timing = {}
            if args.virtual is not None:
                from pigeonhole.learn.budget import FixedCosts
                from pigeonhole.learn.clock import VirtualClock

                timing = {"clock": VirtualClock(), "costs": FixedCosts(step_s=args.virtual)}
            result = run_search(ts, source, config, reporter, memory=memory, **timing)
            wall = time.monotonic() - t
        chosen = result.chosen
        if chosen is None:
            print(f"{name}: no candidate finished in {wall:.1f}s ({result.stop_reason})")
            continue
        m = chosen.test_metrics
        n_train = len(ts.split("train"))
        virtual = f" (virtual clock: {result.elapsed_s:.1f}s)" if args.virtual is not None else ""
        print(
            f"{name}: wall {wall:.1f}s{virtual} "
            f"(budget {budgets[name]:.0f}s) | first model {result.first_candidate_s:.1f}s | "
            f"chosen ready {chosen.ready_at_s:.1f}s | "
            f"test acc {m['accuracy']:.4f} (balanced {m['balanced_accuracy']:.4f}, n={m['n']}) | "
            f"chosen {chosen.name} (val {chosen.val_accuracy:.4f}) | size {chosen.model_size_bytes / 1e6:.2f} MB | "
            f"latency {chosen.latency_ms:.1f} ms, {chosen.throughput_img_s:.0f} img/s | "
            f"stop {result.stop_reason} | {len(result.leaderboard)} candidates | train images {n_train}",
            flush=True,
        )
        for label in caps:
            recall = m["per_class"]["classes"][label]["recall"]
            print(f"  {label}: recall {recall:.4f} on the held-out images", flush=True)
        if args.json:
            print(json.dumps([{k: v for k, v in row.items() if k not in ("config", "seconds")}
                              for row in result.leaderboard]))


if __name__ == "__main__":
    main()
