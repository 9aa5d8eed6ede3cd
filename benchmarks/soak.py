"""Load and soak: predictions, uploads, listings and a training job together for a fixed time (loopback only).

Prints the number of 5xx answers (target 0), prediction p99 under load versus idle (target ≤ 3×; "idle" is
the same two prediction clients for 20 s with nothing else running), and the server's resident memory
sampled over the run (target: flat after warm-up, i.e. the middle and last thirds alike: no leak).

    .venv/bin/python benchmarks/soak.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATASETS, WEIGHTS, write_folder, zip_images  # noqa: E402
from _server import start_server  # noqa: E402

from pigeonhole.client import Client  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    train = zip_images(DATASETS / "hymenoptera" / "train.zip", per_class=40)
    probe = [data for files in zip_images(DATASETS / "hymenoptera" / "val.zip", per_class=10).values()
             for _, data in files]
    server = start_server({"PIGEONHOLE_WEIGHTS_DIR": str(WEIGHTS)})
    stop = threading.Event()
    stats: dict = {"5xx": 0, "requests": 0, "predict_ms": [], "errors": []}
    lock = threading.Lock()
    try:
        pgh = Client(server.base, server.token, timeout_s=120)
        with tempfile.TemporaryDirectory() as tmp:
            dataset = pgh.create_dataset("soak")
            pgh.upload_folder(dataset["id"], write_folder(train, Path(tmp)))
        model = pgh.create_model("soak", dataset["id"], preference="fast", time_budget_s=60)
        while pgh.get_model(model["id"])["active_version"] is None:
            time.sleep(1)
        pgh.wait_for_job(model["job_id"], poll_s=2)

        def predict_ms(http) -> float:  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            response = http.post(f"/api/v1/models/{model['id']}/predict",
                                 files=[("files", ("p.jpg", probe[int(started * 1000) % len(probe)]))])
            note(response)
            return (time.perf_counter() - started) * 1000

        def note(response) -> None:  # type: ignore[no-untyped-def]
            with lock:
                stats["requests"] += 1
                if response.status_code >= 500:
                    stats["5xx"] += 1
                    stats["errors"].append(f"{response.request.method} {response.request.url.path}: "
                                           f"{response.status_code}")

        def predictor(until: threading.Event, into: list[float]) -> None:
            with server.client() as http:
                while not until.is_set():
                    ms = predict_ms(http)
                    with lock:
                        into.append(ms)

        # The idle baseline: the same two prediction clients, with nothing else running.
        idle: list[float] = []
        idle_done = threading.Event()
        baseline = [threading.Thread(target=predictor, args=(idle_done, idle)) for _ in range(2)]
        for t in baseline:
            t.start()
        time.sleep(20)
        idle_done.set()
        for t in baseline:
            t.join()
        idle_p99 = float(np.percentile(idle, 99))

        def uploader() -> None:
            seed = 10_000
            with server.client() as http:
                scratch = http.post("/api/v1/datasets", json={"name": "scratch"}).json()["id"]
                while not stop.is_set():
                    files = [("files", (f"{seed + i}.png", png(seed + i))) for i in range(8)]
                    note(http.post(f"/api/v1/datasets/{scratch}/uploads", data={"label": f"c{seed % 3}"},
                                   files=files))
                    seed += 8
                    time.sleep(0.5)

        def lister() -> None:
            with server.client() as http:
                while not stop.is_set():
                    for path in ("/api/v1/datasets", "/api/v1/models", f"/api/v1/datasets/{dataset['id']}/images",
                                 "/api/v1/usage", "/api/v1/jobs"):
                        note(http.get(path))
                    time.sleep(0.2)

        def trainer() -> None:
            while not stop.is_set():
                pgh.retrain(model["id"])
                job = pgh.get_model(model["id"])["job_id"]
                pgh.wait_for_job(job, poll_s=2)

        threads = [threading.Thread(target=predictor, args=(stop, stats["predict_ms"]), daemon=True) for _ in range(2)]
        threads += [threading.Thread(target=f, daemon=True) for f in (uploader, lister, trainer)]
        for t in threads:
            t.start()
        memory = []
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline:
            memory.append(rss_mib(server.process.pid))
            time.sleep(min(15.0, max(1.0, deadline - time.monotonic())))
        stop.set()
        for t in threads:
            t.join(timeout=120)
        loaded_p99 = float(np.percentile(stats["predict_ms"], 99))
        third = max(1, len(memory) // 3)
        print(f"soak: {args.minutes:.0f} min, {stats['requests']} requests, {stats['5xx']} answered 5xx "
              f"{stats['errors'][:3]}")
        print(f"soak: prediction p99 idle {idle_p99:.1f} ms, under load {loaded_p99:.1f} ms "
              f"({loaded_p99 / idle_p99:.1f}x; target ≤ 3x)")
        print(f"soak: server RSS first third {np.mean(memory[:third]):.0f} MiB, middle third "
              f"{np.mean(memory[third:-third] or memory):.0f} MiB, last third {np.mean(memory[-third:]):.0f} MiB "
              f"(samples: {', '.join(f'{m:.0f}' for m in memory)})")
    finally:
        stop.set()
        server.stop()


if __name__ == "__main__":
    main()
