"""Scale on the model side, through the API (``benchmarks/scale.py --stage train``): train a model of 999 of the
glyph set's 1,000 classes with a 15-minute budget (or take the one an earlier run trained), then add the last class,
remove one and add it back, then predict.

Figures: seconds to the first served version and to the end, test accuracy (top-1 and top-5 through the prediction
API on held-out renders of the same characters), the training worker's peak memory (resident memory of the Ray
worker processes, sampled every half second), the seconds from each class change's request to its active version
(with the job's own stage times), single-image prediction latency, and the exported ONNX file's size.
"""

from __future__ import annotations

import io
import statistics
import threading
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from pigeonhole.client import Client


class WorkerMemory:
    """Peak resident memory of the Ray worker processes (``ray::`` in their command line), sampled."""

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    if not (proc / "cmdline").read_bytes().startswith(b"ray::"):
                        continue
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            self.peak_mib = max(self.peak_mib, int(line.split()[1]) / 1024)
                except OSError:
                    continue

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mib


def _active_after(client: Client, job_id: str, started: float, asked_at: float) -> str:
    """How long from the request to the active version, and where it went: the request and the queue until a
    dispatcher started the job, the job (the worker's own stages among it), and the job's end until the client saw
    it (the server's clock is this machine's)."""
    job = client.wait_for_job(job_id, poll_s=0.1)
    seconds = time.perf_counter() - started
    seen_at = time.time()
    if job["status"] != "succeeded":
        raise SystemExit(f"the job {job['status']}: {job.get('error')}")
    result = job.get("result") or {}
    stages = ", ".join(f"{k} {v:.2f}" for k, v in (result.get("stage_seconds") or {}).items())

    def at(name: str) -> float:
        return datetime.fromisoformat(job[name]).replace(tzinfo=UTC).timestamp() if job.get(name) else float("nan")

    return (f"active after {seconds:.2f} s (request and queue {at('started_at') - asked_at:.2f} s, job "
            f"{at('finished_at') - at('started_at'):.2f} s, seen {seen_at - at('finished_at'):.2f} s later; in the "
            f"worker {result.get('seconds', 0):.2f} s: {stages})")


def held_out(archive_renders: dict[str, list[bytes]], classes: set[str], per_class: int) -> list[tuple[str, bytes]]:
    return [(label, data) for label, images in sorted(archive_renders.items()) if label in classes
            for data in images[:per_class]]


def test_images(test_zip: Path) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    with zipfile.ZipFile(test_zip) as zf:
        for name in zf.namelist():
            out.setdefault(name.split("/")[0], []).append(zf.read(name))
    return out


def accuracy(http: httpx.Client, model_id: str, images: list[tuple[str, bytes]]) -> tuple[float, float, float]:
    """(top-1, top-5, median single-image latency in ms) through the prediction API, one image per call."""
    top1 = top5 = 0
    latencies = []
    for label, data in images:
        t = time.perf_counter()
        answer = http.post(f"/api/v1/models/{model_id}/predict", params={"top_k": 5},
                           files=[("files", ("glyph.jpg", io.BytesIO(data), "image/jpeg"))])
        latencies.append(time.perf_counter() - t)
        answer.raise_for_status()
        prediction = answer.json()["predictions"][0]
        ranked = [c["label"] for c in prediction["top"]]
        top1 += bool(ranked) and ranked[0] == label
        top5 += label in ranked[:5]
    return top1 / len(images), top5 / len(images), 1000 * statistics.median(latencies)


def train(client: Client, http: httpx.Client, dataset_id: str, classes: list[str], renders: dict[str, list[bytes]],
          budget_s: int) -> str:
    """A model of all classes but the last, trained with ``budget_s``; returns its id."""
    first = classes[:-1]
    memory = WorkerMemory()
    started = time.perf_counter()
    model = client.create_model("glyphs", dataset_id, classes=first, time_budget_s=budget_s)
    first_version = None
    while True:
        job = client.get_job(model["job_id"])
        if first_version is None and client.get_model(model["id"])["active_version"] is not None:
            first_version = time.perf_counter() - started
            print(f"scale train: first served version after {first_version:.0f} s", flush=True)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(2)
    total = time.perf_counter() - started
    peak = memory.stop()
    if job["status"] != "succeeded":
        raise SystemExit(f"training {job['status']}: {job.get('error')}")
    held = held_out(renders, set(first), 2)
    top1, top5, latency = accuracy(http, model["id"], held)
    info = client.get_model(model["id"])
    version = http.get(f"/api/v1/models/{model['id']}/versions/{info['active_version']}").json()
    print(f"scale train: {len(first)} classes, done after {total:.0f} s; version {info['active_version']}: test "
          f"{100 * version['metrics'].get('accuracy', 0):.2f} % (page); held-out renders through the API: top-1 "
          f"{100 * top1:.2f} %, top-5 {100 * top5:.2f} % on {len(held)} images; single image {latency:.1f} ms; "
          f"ONNX file {version['size_bytes'] / 2**20:.1f} MiB; training worker peak RSS {peak:.0f} MiB", flush=True)
    return str(model["id"])


def grow(client: Client, http: httpx.Client, model_id: str, classes: list[str], renders: dict[str, list[bytes]],
         ) -> None:
    """Remove a class the model has (a trained model's first change), add the class of the dataset it lacks (its
    images never seen: their features are computed), remove that one again, and add the first back (its features
    cached): each timed from the request to its version being active."""
    have = client.get_model(model_id)["classes"]
    absent = next((c for c in classes if c not in have), None)
    first, other = (absent, have[0]) if absent is not None else (have[-1], have[0])

    def add(name: str) -> Any:
        return client.add_classes(model_id, [name])

    def remove(name: str) -> Any:
        return client.remove_class(model_id, name)

    # a model that already has every class (an earlier run grew it): remove one first
    changes = ([("remove", other, remove), ("add", first, add), ("remove", first, remove), ("add back", other, add)]
               if absent is not None else
               [("remove", first, remove), ("add back", first, add), ("remove", other, remove)])
    for what, name, request in changes:
        t, asked_at = time.perf_counter(), time.time()
        change = request(name)
        print(f"scale grow: {what} {name!r}: {_active_after(client, change['job_id'], t, asked_at)}", flush=True)
    kept = set(client.get_model(model_id)["classes"])
    top1, top5, latency = accuracy(http, model_id, held_out(renders, kept, 1))
    print(f"scale grow: after the changes ({len(kept)} classes), held-out renders: top-1 {100 * top1:.2f} %, top-5 "
          f"{100 * top5:.2f} %, single image {latency:.1f} ms", flush=True)
