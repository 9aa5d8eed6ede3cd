"""Growing a model through the API: add classes one at a time, remove one, compare with a refit.

For each dataset: train on about half the classes (the first served version), then add the other
classes one by one and remove one, timing request -> active version. Then compare the grown model's
test accuracy with a head refit from scratch on all its classes with the same extractor (computed
in-process from the exported file: the heads should be identical) and with a full search on all classes.

    .venv/bin/python benchmarks/expand.py [--datasets flowers5,mnist] [--per-class 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATASETS, WEIGHTS, mnist, write_folder, zip_images  # noqa: E402
from _server import start_server  # noqa: E402
from train import accuracy  # noqa: E402

from pigeonhole.client import Client  # noqa: E402
from pigeonhole.learn import head_file
from pigeonhole.learn.data import sha256_bytes  # noqa: E402
from pigeonhole.learn.features import ImageItem, compute_features  # noqa: E402
from pigeonhole.learn.grow import extractor_of  # noqa: E402
from pigeonhole.learn.head import HeadConfig, RidgeHead  # noqa: E402


def load(name: str, per_class: int) -> tuple[dict, dict]:
    if name == "mnist":
        train, test = mnist("train", per_class * 12), mnist("test", 2000)
        return {k: v[:per_class] for k, v in train.items()}, test
    return (zip_images(DATASETS / name / "train.zip", per_class), zip_images(DATASETS / name / "test.zip"))


def wait_active(pgh: Client, job_id: str | None, started: float) -> tuple[float, str]:
    """Seconds from the request (``started``) to the active version, and where the job's time went."""
    if not job_id:
        return time.monotonic() - started, ""
    job = pgh.wait_for_job(job_id, poll_s=0.05)
    seconds = time.monotonic() - started
    if job["status"] != "succeeded":
        raise SystemExit(f"expand job {job['status']}: {job.get('error')}")
    queued = (_when(job["started_at"]) - _when(job["created_at"])).total_seconds()
    stages = (job.get("result") or {}).get("stage_seconds") or {}
    detail = f"queued {queued:.2f} s, in the worker {(job.get('result') or {}).get('seconds', 0):.2f} s (" + \
        ", ".join(f"{k} {v:.2f}" for k, v in stages.items()) + ")"
    return seconds, detail


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def head_config(blob_dir: Path, model_id: str) -> HeadConfig:
    """The head configuration the model's versions share (random features, seed...): a refit must use it too."""
    found = next((blob_dir / "models" / model_id).glob("*/head.npz"), None)
    if found is None:
        raise SystemExit(f"no head statistics stored for model {model_id} under {blob_dir}")
    return head_file.read(str(found.relative_to(blob_dir)), lambda key: (blob_dir / key).read_bytes()).config


def refit_accuracy(onnx: bytes, pgh: Client, http: httpx.Client, dataset_id: str, classes: list[str],
                   test: dict, config: HeadConfig) -> float:
    """A head refit from scratch on the grown model's classes, same extractor, same head configuration,
    same splits."""
    extractor = extractor_of(onnx)
    images = [i for i in pgh.list_images(dataset_id) if i["label"] in classes]

    def feats(rows: list[dict]) -> np.ndarray:
        items = [ImageItem(r["sha256"], (lambda r=r: http.get(
            f"/api/v1/datasets/{dataset_id}/images/{r['id']}/content").content)) for r in rows]
        return compute_features(items, extractor)

    train = [i for i in images if i["split"] == "train"]
    val = [i for i in images if i["split"] == "val"]
    train_features = feats(train)
    head = RidgeHead(train_features.shape[1], config=config)
    head.add(train_features, [i["label"] for i in train])
    val_features, val_labels = feats(val), [i["label"] for i in val]
    head.fit(val_features, val_labels)  # as training does: choose on held-out val, then hold val too
    head.add(val_features, val_labels)
    head.solve()
    items = [(label, data) for label, files in test.items() if label in classes for _, data in files]
    test_items = [ImageItem(sha256_bytes(d), (lambda d=d: d)) for _, d in items]
    probs = head.predict_proba(compute_features(test_items, extractor))
    return float(np.mean([head.classes[j] == label for j, (label, _) in zip(probs.argmax(1), items, strict=True)]))


def run(pgh: Client, http: httpx.Client, name: str, per_class: int, full_budget: int, blob_dir: Path) -> None:
    train, test = load(name, per_class)
    classes = sorted(train)
    first, later = classes[: max(2, len(classes) // 2)], classes[max(2, len(classes) // 2):]
    with tempfile.TemporaryDirectory() as tmp:
        dataset = pgh.create_dataset(name)
        pgh.upload_folder(dataset["id"], write_folder(train, Path(tmp)))
    model = pgh.create_model(name, dataset["id"], classes=first, preference="fast", time_budget_s=120)
    while pgh.get_model(model["id"])["active_version"] is None:
        time.sleep(0.5)
    pgh.cancel_job(model["job_id"])  # the first served version is the base we grow
    time.sleep(1)
    for cls in later:
        started = time.monotonic()
        change = pgh.add_classes(model["id"], [cls])
        seconds, detail = wait_active(pgh, change["job_id"], started)
        print(f"expand: {name}: add class {cls!r} ({len(train[cls])} images): active after {seconds:.2f} s; {detail}")
    removed = later[-1] if later else first[-1]
    started = time.monotonic()
    change = pgh.remove_class(model["id"], removed)
    seconds, detail = wait_active(pgh, change["job_id"], started)
    print(f"expand: {name}: remove class {removed!r}: active after {seconds:.2f} s; {detail}")
    grown = pgh.get_model(model["id"])
    kept = [c for c in classes if c != removed]
    test_kept = {k: v for k, v in test.items() if k in kept}
    grown_acc = accuracy(pgh, model["id"], test_kept)
    onnx = http.get(f"/api/v1/models/{model['id']}/versions/{grown['active_version']}/export").content
    refit = refit_accuracy(onnx, pgh, http, dataset["id"], kept, test, head_config(blob_dir, model["id"]))
    full = pgh.create_model(f"{name} full", dataset["id"], classes=kept, preference="balanced",
                            time_budget_s=full_budget)
    pgh.wait_for_job(full["job_id"], poll_s=2)
    full_acc = accuracy(pgh, full["id"], test_kept)
    print(f"expand: {name}: grown {grown_acc:.2%} vs refit on the same extractor {refit:.2%} "
          f"(gap {100 * (grown_acc - refit):+.2f} points) vs full search {full_acc:.2%} "
          f"(gap {100 * (grown_acc - full_acc):+.2f} points)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default="flowers5,mnist")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--full-budget", type=int, default=300, help="budget of the comparison search")
    args = parser.parse_args()
    server = start_server({"PIGEONHOLE_WEIGHTS_DIR": str(WEIGHTS)})
    try:
        with Client(server.base, server.token, timeout_s=600) as pgh, server.client() as http:
            for name in args.datasets.split(","):
                run(pgh, http, name, args.per_class, args.full_budget, server.data_dir / "blobs")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
