"""Prediction throughput and latency over HTTP versus raw in-process ONNX Runtime, on the same images.

Trains a quick MobileNetV2-based model on part of flowers5 through the API (the first version that
serves), then runs closed-loop clients sending single-image JPEG requests at concurrency 1, 8 and 32,
and batch requests of 32 images; prints requests/s, images/s, p50/p95/p99, errors and server memory.

    .venv/bin/python benchmarks/predict.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATASETS, WEIGHTS, write_folder, zip_images  # noqa: E402
from _server import start_server  # noqa: E402

from pigeonhole.client import Client  # noqa: E402
from pigeonhole.serving.model import load_model  # noqa: E402
from pigeonhole.serving.preprocess import pixels_for  # noqa: E402
from pigeonhole.storage.images import ImageLimits  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def closed_loop(server, model_id: str, images: list[bytes], concurrency: int, seconds: float, batch: int = 1
                ) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(offset: int) -> None:
        nonlocal errors
        with server.client() as http:
            i = offset
            while time.monotonic() < deadline:
                files = [("files", (f"{j}.jpg", images[(i + j) % len(images)], "image/jpeg")) for j in range(batch)]
                started = time.perf_counter()
                response = http.post(f"/api/v1/models/{model_id}/predict", files=files)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    errors += response.status_code != 200
                i += batch

    threads = [threading.Thread(target=worker, args=(k * 7,)) for k in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    return {"rps": len(latencies) / wall, "ips": len(latencies) * batch / wall, "p50": percentile(latencies, 50) * 1e3,
            "p95": percentile(latencies, 95) * 1e3, "p99": percentile(latencies, 99) * 1e3, "errors": errors,
            "requests": len(latencies)}


def raw_throughput(onnx: bytes, images: list[bytes], seconds: float = 5.0) -> tuple[float, float]:
    """In-process decode + preprocess + ONNX Runtime: single images, then batches of 32 (images/s)."""
    model = load_model(onnx)
    limits = ImageLimits()
    done, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        model.run(pixels_for(model, images[done % len(images)], limits)[None])
        done += 1
    single = done / (time.monotonic() - started)
    done, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        batch = np.stack([pixels_for(model, images[(done + j) % len(images)], limits) for j in range(32)])
        model.run(batch)
        done += 32
    return single, done / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0, help="per concurrency level")
    parser.add_argument("--workers", type=int, default=1, help="API processes (serve --workers)")
    args = parser.parse_args()
    train = zip_images(DATASETS / "flowers5" / "train.zip", per_class=40)
    test_images = [data for files in zip_images(DATASETS / "flowers5" / "test.zip", per_class=13).values()
                   for _, data in files]
    server = start_server({"PIGEONHOLE_WEIGHTS_DIR": str(WEIGHTS), "PIGEONHOLE_API_WORKERS": str(args.workers)})
    print(f"predict: {args.workers} API process(es)")
    try:
        with server.client() as http, tempfile.TemporaryDirectory() as tmp:
            pgh = Client(server.base, server.token)
            dataset = pgh.create_dataset("flowers")
            pgh.upload_folder(dataset["id"], write_folder(train, Path(tmp)))
            model = pgh.create_model("flowers", dataset["id"], preference="fast", time_budget_s=120)
            deadline = time.monotonic() + 300
            while pgh.get_model(model["id"])["active_version"] is None:
                if time.monotonic() > deadline:
                    raise SystemExit("no version within 300 s")
                time.sleep(1)
            pgh.cancel_job(model["job_id"])  # the first version is all this benchmark needs
            version = pgh.get_model(model["id"])["active_version"]
            onnx = http.get(f"/api/v1/models/{model['id']}/versions/{version}/export").content
            card = pgh.get_version(model["id"], version)
            candidate = card["lineage"].get("candidate") or {}
            print(f"predict: model v{version} ({candidate.get('name', '?')}), "
                  f"{card['size_bytes'] / 2**20:.1f} MiB, input {card['input']['height']} px")
            raw_single, raw_batch = raw_throughput(onnx, test_images)
            print(f"predict: raw in-process: single {raw_single:.1f} img/s, batch-32 {raw_batch:.1f} img/s")
            rss_start = server.peak_rss_mib()
            results = {}
            for concurrency in (1, 8, 32):
                r = closed_loop(server, model["id"], test_images, concurrency, args.seconds)
                results[concurrency] = r
                print(f"predict: HTTP single c={concurrency:>2}: {r['rps']:6.1f} req/s, p50 {r['p50']:6.1f} ms, "
                      f"p95 {r['p95']:6.1f} ms, p99 {r['p99']:6.1f} ms, errors {r['errors']}/{r['requests']}")
            b = closed_loop(server, model["id"], test_images, 2, args.seconds, batch=32)
            print(f"predict: HTTP batch-32 c=2: {b['ips']:6.1f} img/s, p50 {b['p50']:6.1f} ms, p99 {b['p99']:6.1f} ms,"
                  f" errors {b['errors']}/{b['requests']}")
            c8 = results[8]
            print(f"predict: single c=8 / raw single = {c8['ips'] / raw_single:.0%} (target ≥ 70 %); "
                  f"batch / raw batch = {b['ips'] / raw_batch:.0%} (target ≥ 85 %); "
                  f"p99/p50 at c=8 = {c8['p99'] / c8['p50']:.1f} (target ≤ 3)")
            print(f"predict: server peak RSS {rss_start:.0f} MiB before load, {server.peak_rss_mib():.0f} MiB after")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
