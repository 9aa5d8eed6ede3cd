"""Prediction throughput and latency over HTTP against raw in-process ONNX Runtime, same file, same images.

Trains a quick MobileNetV2-based model on part of flowers5 through the API of a ``pigeonhole serve`` with
its defaults (the first version that serves), downloads the version's ONNX file, then measures:

- raw in-process: decode + ONNX Runtime one image at a time (ONNX Runtime's own thread choice, and one
  thread), and batches of 32;
- HTTP single-image calls at concurrency 1, 8 and 32 (multipart, as browsers and most clients send), and
  at 8 with the image as the raw body; batches of 32 images at concurrency 2;
- for each level: requests/s, p50/p99, errors, and the CPU used by the API processes and by the load
  generator; the images per inference call at c=8 and 32 (the server's Prometheus histogram);
- overload: 1,200 connections at once; every answer is 200 or a 503 with Retry-After, none times out;
- ``--profile``: where the API's Python time goes per request at c=8 (py-spy, samples holding the GIL);
- ``--soak S``: c=8 for S seconds, API memory sampled every 30 s.

The load comes from ``wrk`` (Debian package ``wrk``) when it is installed, so that the client costs the
2 cores almost nothing; otherwise from Python threads (which then take a visible share of the CPU).

    .venv/bin/python benchmarks/predict.py [--seconds 10] [--workers N] [--profile] [--soak 600]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATASETS, WEIGHTS, write_folder, zip_images  # noqa: E402
from _server import Server, start_server  # noqa: E402

from pigeonhole.client import Client  # noqa: E402
from pigeonhole.serving.model import ServingModel, load_model  # noqa: E402
from pigeonhole.serving.preprocess import pixels_for  # noqa: E402
from pigeonhole.storage.images import ImageLimits  # noqa: E402

LUA = Path(__file__).with_name("predict.lua")
TICK = os.sysconf("SC_CLK_TCK")
OVERLOAD_CONNECTIONS = 1200  # well past the 256 images each API process lets wait
# py-spy frames that say what a sample of the API's Python time was doing, first match wins.
CATEGORIES = (
    ("inference (ONNX Runtime call)", ("ServingModel.run", "Batcher._infer")),
    ("decode + resize", ("_pixels (", "pixels_for")),
    ("version lookup (database)", ("_resolve_target", "serving_row")),
    ("token check", ("require.<locals>.dependency", "_remembered_token", "_authenticate_in_session")),
    ("body parsing (multipart)", ("read_inputs", "MultiPartParser")),
    ("answer (top-k, JSON)", ("PredictionService.predict", "top_k", "serialize_response", "PredictionResult")),
    ("usage metering", ("UsageRecorder",)),
    ("HTTP + framework (uvicorn, Starlette, FastAPI, middleware)", ("run_asgi", "httptools_impl", "h11_impl")),
    ("event loop and hand-offs between threads", ("_chain_future", "ThreadPoolExecutor.submit", "Queue.put",
                                                   "WorkerThread", "_worker", "Runner.run")),
)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / TICK


def metric_buckets(server: Server) -> dict[float, float]:
    text = httpx.get(f"{server.base}/metrics", timeout=30).text
    found = re.findall(r'pigeonhole_predict_batch_images_bucket\{le="([^"]+)"\} ([0-9.e+]+)', text)
    return {float(le): float(n) for le, n in found}


def batch_histogram(before: dict[float, float], after: dict[float, float]) -> str:
    """Inference calls by images per call, from two snapshots of the cumulative Prometheus buckets."""
    previous, parts = 0.0, []
    for le in sorted(after):
        count = after[le] - before.get(le, 0.0)
        if count - previous > 0 and le != float("inf"):
            parts.append(f"≤{le:g}: {count - previous:.0f}")
        previous = count
    calls = previous
    return f"{calls:.0f} calls ({', '.join(parts)})" if calls else "no calls"


def wrk_level(server: Server, url: str, folder: Path, count: int, concurrency: int, seconds: float,
              mode: str = "multipart") -> dict[str, object]:
    command = ["wrk", "-t", str(min(2, concurrency)), "-c", str(concurrency), "-d", f"{seconds:g}s", "--timeout",
               "10s", "-s", str(LUA), url, "--", str(folder), str(count), mode, server.token]
    api_before = cpu_seconds(server.api_pids())
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    output = process.stdout.read() if process.stdout else ""
    line = next((x for x in output.splitlines() if x.startswith("RESULT")), None)
    if status != 0 or line is None:
        raise SystemExit(f"wrk failed:\n{output}")
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    statuses = dict(s.split("=") for s in fields["statuses"].split(",") if s)
    requests = int(fields["requests"])
    ok = int(statuses.get("200", 0))
    return {"rps": requests / wall, "ok_rps": ok / wall, "p50": float(fields["p50_ms"]),
            "p99": float(fields["p99_ms"]), "errors": requests - ok + int(fields["socket_errors"]),
            "socket_errors": int(fields["socket_errors"]), "statuses": statuses, "requests": requests,
            "api_cores": (cpu_seconds(server.api_pids()) - api_before) / wall,
            "client_cores": (usage.ru_utime + usage.ru_stime) / wall}


def python_level(server: Server, url: str, images: list[bytes], concurrency: int, seconds: float,
                 batch: int = 1, mode: str = "multipart") -> dict[str, object]:
    latencies: list[float] = []
    statuses: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(offset: int) -> None:
        with server.client() as http:
            i = offset
            while time.monotonic() < deadline:
                if mode == "raw":
                    request = {"content": images[i % len(images)], "headers": {"Content-Type": "image/jpeg"}}
                else:
                    request = {"files": [("files", (f"{j}.jpg", images[(i + j) % len(images)], "image/jpeg"))
                                         for j in range(batch)]}
                started = time.perf_counter()
                response = http.post(url, **request)  # type: ignore[arg-type]
                with lock:
                    latencies.append(time.perf_counter() - started)
                    statuses[str(response.status_code)] += 1
                i += batch

    api_before, client_before = cpu_seconds(server.api_pids()), time.process_time()
    threads = [threading.Thread(target=worker, args=(k * 7,)) for k in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    ok = statuses.get("200", 0)
    return {"rps": len(latencies) / wall, "ok_rps": ok / wall, "ips": ok * batch / wall,
            "p50": percentile(latencies, 50) * 1e3, "p99": percentile(latencies, 99) * 1e3,
            "errors": len(latencies) - ok, "socket_errors": 0, "statuses": dict(statuses), "requests": len(latencies),
            "api_cores": (cpu_seconds(server.api_pids()) - api_before) / wall,
            "client_cores": (time.process_time() - client_before) / wall}


def raw_single(model: ServingModel, images: list[bytes], seconds: float) -> float:
    """In-process decode + ONNX Runtime, one image at a time (images/s)."""
    limits = ImageLimits()
    done, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        model.run(pixels_for(model, images[done % len(images)], limits)[None])
        done += 1
    return done / (time.monotonic() - started)


def raw_batch(model: ServingModel, images: list[bytes], seconds: float) -> float:
    """In-process decode + ONNX Runtime, 32 images per call (images/s)."""
    limits = ImageLimits()
    done, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        model.run(np.stack([pixels_for(model, images[(done + j) % len(images)], limits) for j in range(32)]))
        done += 32
    return done / (time.monotonic() - started)


def profile(server: Server, run_load, seconds: float) -> None:  # type: ignore[no-untyped-def]
    """Python time (samples holding the GIL) of the API processes per request at c=8, by what it was doing."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = Path(tempfile.mkdtemp()) / "profile"
    rate = 250
    spies = [subprocess.Popen([spy, "record", "-p", str(pid), "-d", f"{seconds - 2:g}", "-r", str(rate), "--gil",
                               "--nonblocking", "-f", "raw", "-o", f"{out}-{pid}.txt"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid in server.api_pids()]
    result = run_load()
    for spy_process in spies:
        spy_process.wait()
    samples: collections.Counter[str] = collections.Counter()
    for path in out.parent.glob("profile-*.txt"):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            category = next((name for name, marks in CATEGORIES if any(m in stack for m in marks)), "other")
            samples[category] += int(count)
    requests = float(result["ok_rps"]) * (seconds - 2)  # type: ignore[arg-type]
    print(f"predict: profile at c=8, {result['ok_rps']:.0f} req/s; Python time per request, by what it was doing:")
    for name, count in samples.most_common():
        print(f"predict:   {count / rate / requests * 1e3:6.2f} ms  {name}")
    print(f"predict:   {sum(samples.values()) / rate / requests * 1e3:6.2f} ms  in all (GIL held)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--rounds", type=int, default=3, help="raw / HTTP c=8 pairs for the headline ratio")
    parser.add_argument("--workers", type=int, default=None, help="API processes (default: the service's own)")
    parser.add_argument("--python-client", action="store_true", help="load from Python threads even if wrk exists")
    parser.add_argument("--profile", action="store_true", help="py-spy breakdown of the API's time at c=8")
    parser.add_argument("--no-overload", action="store_true", help="skip the 1,200-connection level (a server "
                        "without admission control may not recover from it in time for what follows)")
    parser.add_argument("--soak", type=float, default=0.0, help="then c=8 for this many seconds, memory sampled")
    parser.add_argument("--mode", choices=("inline", "ray"), default=None,
                        help="where inference runs (PIGEONHOLE_PREDICT_MODE; default: the service's own)")
    args = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None and not args.python_client
    train = zip_images(DATASETS / "flowers5" / "train.zip", per_class=40)
    test_images = [data for files in zip_images(DATASETS / "flowers5" / "test.zip", per_class=13).values()
                   for _, data in files]
    env = {"PIGEONHOLE_WEIGHTS_DIR": str(WEIGHTS)}
    if args.workers:
        env["PIGEONHOLE_API_WORKERS"] = str(args.workers)
    if args.mode:
        env["PIGEONHOLE_PREDICT_MODE"] = args.mode
    server = start_server(env)
    try:
        with server.client() as http, tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "images"
            folder.mkdir()
            for i, data in enumerate(test_images):
                (folder / f"{i}.jpg").write_bytes(data)
            pgh = Client(server.base, server.token)
            dataset = pgh.create_dataset("flowers")
            pgh.upload_folder(dataset["id"], write_folder(train, Path(tmp) / "train"))
            model = pgh.create_model("flowers", dataset["id"], preference="fast", time_budget_s=120)
            deadline = time.monotonic() + 300
            while pgh.get_model(model["id"])["active_version"] is None:
                if time.monotonic() > deadline:
                    raise SystemExit("no version within 300 s")
                time.sleep(1)
            pgh.cancel_job(model["job_id"])  # the first version is all this benchmark needs
            time.sleep(3)  # the training processes settle
            version = pgh.get_model(model["id"])["active_version"]
            onnx = http.get(f"/api/v1/models/{model['id']}/versions/{version}/export").content
            card = pgh.get_version(model["id"], version)
            candidate = card["lineage"].get("candidate") or {}
            pids = server.api_pids()
            print(f"predict: {len(pids) - 1 if len(pids) > 1 else 1} API process(es), "
                  f"load from {'wrk' if use_wrk else 'Python threads'}; model v{version} "
                  f"({candidate.get('name', '?')}), {card['size_bytes'] / 2**20:.1f} MiB, "
                  f"input {card['input']['height']} px, {len(test_images)} test JPEGs "
                  f"(mean {np.mean([len(d) for d in test_images]) / 1024:.1f} KiB)")
            own_threads, one_thread = load_model(onnx), load_model(onnx, threads=1)

            def raw_singles() -> tuple[float, float]:
                """One image at a time with ONNX Runtime's own thread choice (what issue 26 measured), and with one
                thread (faster for small models: no waking of a second thread per image)."""
                return raw_single(own_threads, test_images, 3.0), raw_single(one_thread, test_images, 3.0)

            url = f"{server.base}/api/v1/models/{model['id']}/predict"

            def level(concurrency: int, seconds: float, mode: str = "multipart") -> dict[str, object]:
                if use_wrk:
                    return wrk_level(server, url, folder, len(test_images), concurrency, seconds, mode)
                return python_level(server, url, test_images, concurrency, seconds, mode=mode)

            level(8, 2)  # warm-up: every API process loads the model
            rss_start = server.peak_rss_mib()
            # The headline, in rounds of raw and HTTP back to back: this machine's speed drifts by a third within
            # minutes (other tenants), so each HTTP figure is compared with the raw figure measured beside it.
            ratios, ratios_own = [], []
            for round_ in range(1, args.rounds + 1):
                own, one = raw_singles()
                http_c8 = level(8, args.seconds)
                ratios.append(float(http_c8["ok_rps"]) / max(own, one))  # type: ignore[arg-type]
                ratios_own.append(float(http_c8["ok_rps"]) / own)  # type: ignore[arg-type]
                print(f"predict: round {round_}: raw in-process single {own:.1f} img/s (ONNX Runtime's threads), "
                      f"{one:.1f} (1 thread); HTTP c=8 {http_c8['ok_rps']:.1f} req/s, p50 {http_c8['p50']:.1f} ms, "
                      f"p99 {http_c8['p99']:.1f} ms, errors {http_c8['errors']}; ratio to the faster {ratios[-1]:.2f}")
            raw_single_now, raw_batch_now = max(raw_singles()), raw_batch(own_threads, test_images, 5.0)
            print(f"predict: raw in-process: single {raw_single_now:.1f} img/s, batch-32 {raw_batch_now:.1f} img/s")
            results = {}
            for concurrency, mode in ((1, "multipart"), (8, "multipart"), (8, "raw"), (32, "multipart")):
                before = metric_buckets(server) if concurrency > 1 else {}
                r = level(concurrency, args.seconds, mode)
                results[(concurrency, mode)] = r
                batches = f"; inference calls: {batch_histogram(before, metric_buckets(server))}" if before else ""
                print(f"predict: HTTP single c={concurrency:>2} {mode:9}: {r['ok_rps']:6.1f} req/s, "
                      f"p50 {r['p50']:6.1f} ms, p99 {r['p99']:6.1f} ms, errors {r['errors']}/{r['requests']}, "
                      f"CPU: API {r['api_cores']:.2f} cores, load generator {r['client_cores']:.2f}{batches}")
            b = python_level(server, url, test_images, 2, args.seconds, batch=32)
            print(f"predict: HTTP batch-32 c=2: {b['ips']:6.1f} img/s, p50 {b['p50']:6.1f} ms, p99 {b['p99']:6.1f} ms,"
                  f" errors {b['errors']}/{b['requests']}")
            if use_wrk and not args.no_overload:
                o = wrk_level(server, url, folder, len(test_images), OVERLOAD_CONNECTIONS, args.seconds)
                print(f"predict: overload, {OVERLOAD_CONNECTIONS} connections: {o['ok_rps']:.1f} answered/s, "
                      f"statuses {o['statuses']}, "
                      f"socket errors/timeouts {o['socket_errors']}, p99 {o['p99']:.0f} ms")
            c8 = results[(8, "multipart")]
            print(f"predict: HTTP c=8 / raw single, median of {len(ratios)} rounds: {float(np.median(ratios)):.2f} "
                  f"against the faster raw configuration (each: {', '.join(f'{r:.2f}' for r in ratios)}), "
                  f"{float(np.median(ratios_own)):.2f} against ONNX Runtime's own threads (goal ≥ 1.0); "
                  f"p99/p50 at c=8 = "
                  f"{float(c8['p99']) / float(c8['p50']):.1f} (goal ≤ 3); HTTP batch-32 / raw batch-32 = "  # type: ignore[arg-type]
                  f"{float(b['ips']) / raw_batch_now:.2f}")  # type: ignore[arg-type]
            print(f"predict: API peak RSS {rss_start:.0f} MiB after warm-up, {server.peak_rss_mib():.0f} MiB now")
            if args.profile:
                profile(server, lambda: level(8, args.seconds), args.seconds)
            if args.soak:
                soak(server, level, args.soak)
    finally:
        server.stop()


def soak(server: Server, level, seconds: float) -> None:  # type: ignore[no-untyped-def]
    """c=8 for ``seconds`` in 30-second rounds; the API's resident memory after each round."""
    def rss_mib() -> float:
        total = 0.0
        for pid in server.api_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        return total

    rounds, memory, answered, errors = max(1, round(seconds / 30)), [rss_mib()], 0.0, 0
    for _ in range(rounds):
        r = level(8, 30)
        answered += float(r["ok_rps"]) * 30  # type: ignore[arg-type]
        errors += int(r["errors"])  # type: ignore[arg-type]
        memory.append(rss_mib())
    print(f"predict: soak {rounds * 30} s at c=8: {answered:.0f} answered, {errors} errors; API RSS MiB every 30 s: "
          + " ".join(f"{m:.0f}" for m in memory))


if __name__ == "__main__":
    main()
