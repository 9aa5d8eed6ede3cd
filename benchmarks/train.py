"""Automatic model building through the public API, as a user would: upload, press Train, wait.

Prints one line per dataset: time to the first served version, total wall time, test accuracy (by
calling the prediction API on the held-out split), chosen candidate, model size and latency.

    .venv/bin/python benchmarks/train.py [--datasets hymenoptera,flowers5,mnist] [--budget 600]
        [--mnist-train 60000] [--side 32] [--dump DIR] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATASETS, WEIGHTS, mnist, shrink, write_folder, zip_images  # noqa: E402
from _server import start_server  # noqa: E402

from pigeonhole.client import Client  # noqa: E402

SPLITS = {
    "hymenoptera": ("train.zip", "val.zip"),
    "flowers5": ("train.zip", "test.zip"),
}


def load(name: str, mnist_train: int, side: int = 0) -> tuple[dict, dict]:
    if name == "mnist":
        return mnist("train", mnist_train), mnist("test")
    train, test = (zip_images(DATASETS / name / split) for split in SPLITS[name])
    if side:  # a small colour set (CIFAR-like) made of the same photos
        train, test = ({label: [(f"{Path(n).stem}.png", shrink(data, side)) for n, data in files]
                        for label, files in split.items()} for split in (train, test))
    return train, test


def accuracy(pgh: Client, model_id: str, test: dict[str, list[tuple[str, bytes]]]) -> tuple[float, float, float]:
    """(top-1 accuracy, share answered rather than "unknown", accuracy of the answers) through the prediction API."""
    items = [(label, data) for label, files in test.items() for _, data in files]
    right = answered = right_answered = 0
    for start in range(0, len(items), 64):
        chunk = items[start:start + 64]
        answer = pgh.predict(model_id, [data for _, data in chunk], top_k=1)
        for (label, _), p in zip(chunk, answer["predictions"], strict=True):
            right += p["top"][0]["label"] == label
            answered += p["label"] is not None
            right_answered += p["label"] == label
    return right / len(items), answered / len(items), right_answered / max(answered, 1)


def run(
    pgh: Client, name: str, budget: int, mnist_train: int, preference: str, side: int = 0, dump: Path | None = None
) -> str:
    train, test = load(name, mnist_train, side)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = pgh.create_dataset(name)
        started = time.monotonic()
        uploaded = pgh.upload_folder(dataset["id"], write_folder(train, Path(tmp)))
        upload_s = time.monotonic() - started
    model = pgh.create_model(name, dataset["id"], time_budget_s=budget, preference=preference)
    pressed = time.monotonic()
    first_s = None

    def watch(job: dict) -> None:
        nonlocal first_s
        if first_s is None and pgh.get_model(model["id"])["active_version"] is not None:
            first_s = time.monotonic() - pressed

    job = pgh.wait_for_job(model["job_id"], poll_s=1.0, on_progress=watch)
    wall = time.monotonic() - pressed
    final = pgh.get_model(model["id"])
    if final["active_version"] is None:
        return f"train: {name}: no model ({job['status']}: {job.get('error')})"
    version = pgh.get_version(model["id"], final["active_version"])
    if dump is not None:  # the whole job and version, for the details (rounds, sizes timed, leaderboard)
        dump.mkdir(parents=True, exist_ok=True)
        (dump / f"{name}-{model['id']}.json").write_text(json.dumps({"job": job, "version": version}, indent=1))
    acc, answered, right_answered = accuracy(pgh, model["id"], test)
    page = version["metrics"]
    candidate = (version["lineage"].get("candidate") or {})
    chosen = candidate.get("name") if isinstance(candidate, dict) else candidate
    return (f"train: {name}: {uploaded.accepted} images uploaded in {upload_s:.0f} s; first version after "
            f"{first_s or float('nan'):.1f} s; finished in {wall:.0f} s ({job['status']}, "
            f"{(job.get('result') or {}).get('stop_reason')}); test accuracy {acc:.2%}; answers {answered:.1%} "
            f"(page: {page.get('coverage', float('nan')):.1%}), right on {right_answered:.2%} of answers (page: "
            f"{page.get('selective_accuracy', float('nan')):.2%}); chosen {chosen}; "
            f"size {version['size_bytes'] / 2**20:.1f} MiB; latency {version['latency_ms'] or float('nan'):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default="hymenoptera,flowers5,mnist")
    parser.add_argument("--budget", type=int, default=600)
    parser.add_argument("--mnist-train", type=int, default=60_000)
    parser.add_argument("--preference", default="balanced")
    parser.add_argument("--side", type=int, default=0,
                        help="shrink every photo to N x N px first (a small colour set like CIFAR's 32 px)")
    parser.add_argument("--dump", type=Path, default=None, help="write each job and version as JSON here")
    parser.add_argument("--fresh", action="store_true",
                        help="as a fresh install: no weights directory (only what ships with the product, and what "
                             "its publishers give where the network allows)")
    args = parser.parse_args()
    server = start_server({} if args.fresh else {"PIGEONHOLE_WEIGHTS_DIR": str(WEIGHTS)})
    try:
        with Client(server.base, server.token, timeout_s=600) as pgh:
            for name in args.datasets.split(","):
                print(run(pgh, name, args.budget, args.mnist_train, args.preference, args.side, args.dump), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
