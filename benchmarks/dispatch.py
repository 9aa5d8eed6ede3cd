"""Dispatch overhead on the local Ray runtime, through the HTTP API of a real ``pigeonhole serve``.

1. ``/api/v1/me`` latency (p50/p95) with the cluster idle;
2. 200 tiny self-test jobs queued through the API at once: jobs/second (first queued → last finished)
   and the median time from ``queued`` to ``running``;
3. ``/api/v1/me`` latency again while 2 CPU-bound jobs ("training") run.

Run: ``.venv/bin/python benchmarks/dispatch.py [--jobs 200] [--job-cpus 1]``. ``--job-cpus`` is what each
tiny job asks Ray for; the default is the self-test's own declared need (1 CPU), so 2 run at once on a 2-core
machine. Asking for less (0.25: 8 at once) is slower here, not faster: Ray keeps only as many idle worker
processes as the node has CPUs, so every burst starts (and imports) six more Python workers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import start_server  # noqa: E402


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _latency(client: httpx.Client, n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        assert client.get("/api/v1/me").status_code == 200
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


def _all_jobs(client: httpx.Client) -> list[dict]:
    jobs, cursor = [], None
    while True:
        page = client.get("/api/v1/admin/jobs", params={"limit": 200, **({"cursor": cursor} if cursor else {})}).json()
        jobs += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return jobs


def _wait_finished(client: httpx.Client, ids: set[str], timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = [j for j in _all_jobs(client) if j["id"] in ids]
        if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs):
            return jobs
        time.sleep(0.5)
    raise RuntimeError("jobs did not finish in time")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--job-cpus", type=float, default=1.0)
    parser.add_argument("--me-requests", type=int, default=300)
    parser.add_argument("--paced-jobs", type=int, default=100)
    parser.add_argument("--paced-rate", type=float, default=10.0, help="jobs/s for the paced run")
    args = parser.parse_args()

    server = start_server({"PIGEONHOLE_JOBS_MAX_QUEUED_PER_USER": "10000",
                           "PIGEONHOLE_JOBS_MAX_RUNNING_PER_USER": "1000",
                           "PIGEONHOLE_ARGON2_MEMORY_KIB": "1024", "PIGEONHOLE_ARGON2_TIME_COST": "1"})
    try:
        with httpx.Client(base_url=server.base) as browser:
            browser.post("/api/v1/auth/login", json={"email": "bench@example.com", "password": "benchmark password"})
            token = browser.post("/api/v1/tokens", json={"name": "admin", "scopes": ["read", "write", "admin"]},
                                 headers={"X-CSRF-Token": browser.cookies["pgh_csrf"]}).json()["token"]
        client = httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {token}"}, timeout=60)

        deadline = time.monotonic() + 120  # the dispatcher starts the local Ray runtime
        while not [n for n in client.get("/api/v1/admin/nodes").json()["items"] if n["state"] == "alive"]:
            if time.monotonic() > deadline:
                raise RuntimeError("no compute node appeared")
            time.sleep(0.5)
        warm = [client.post("/api/v1/admin/selftest", json={"steps": 1, "step_s": 0, "num_cpus": args.job_cpus})
                .json()["id"] for _ in range(8)]  # start the worker processes
        _wait_finished(client, set(warm), 120)

        idle_p50, idle_p95 = _latency(client, args.me_requests)

        submitted = time.monotonic()
        ids = {client.post("/api/v1/admin/selftest", json={"steps": 1, "step_s": 0, "num_cpus": args.job_cpus})
               .json()["id"] for _ in range(args.jobs)}
        submit_s = time.monotonic() - submitted
        jobs = _wait_finished(client, ids, 600)
        assert all(j["status"] == "succeeded" for j in jobs), [j["error"] for j in jobs if j["status"] != "succeeded"]
        waits = sorted(_ts(j["started_at"]) - _ts(j["created_at"]) for j in jobs)
        span = max(_ts(j["finished_at"]) for j in jobs) - min(_ts(j["created_at"]) for j in jobs)

        # Paced arrivals (below capacity): the queue stays short, so this is the dispatcher's own latency.
        paced, paced_start = set(), time.monotonic()
        for i in range(args.paced_jobs):
            time.sleep(max(0.0, paced_start + i / args.paced_rate - time.monotonic()))
            paced.add(client.post("/api/v1/admin/selftest", json={"steps": 1, "step_s": 0, "num_cpus": args.job_cpus})
                      .json()["id"])
        paced_jobs = _wait_finished(client, paced, 300)
        paced_waits = sorted(_ts(j["started_at"]) - _ts(j["created_at"]) for j in paced_jobs)

        busy = {client.post("/api/v1/admin/selftest", json={"steps": 200, "step_s": 0.1, "busy": True}).json()["id"]
                for _ in range(2)}
        while sum(j["status"] == "running" for j in _all_jobs(client) if j["id"] in busy) < 2:
            time.sleep(0.2)
        busy_p50, busy_p95 = _latency(client, args.me_requests)
        for job_id in busy:
            client.post(f"/api/v1/jobs/{job_id}/cancel")

        print(f"jobs: {args.jobs} tiny self-tests, {args.job_cpus} CPU each, queued in {submit_s:.1f} s "
              "through the API")
        print(f"throughput: {args.jobs / span:.1f} jobs/s (first queued -> last finished: {span:.1f} s)")
        print(f"queued -> running: median {statistics.median(waits) * 1000:.0f} ms, "
              f"p95 {waits[int(0.95 * (len(waits) - 1))] * 1000:.0f} ms, max {waits[-1] * 1000:.0f} ms")
        print(f"paced ({args.paced_jobs} jobs at {args.paced_rate:g}/s): queued -> running median "
              f"{statistics.median(paced_waits) * 1000:.0f} ms, "
              f"p95 {paced_waits[int(0.95 * (len(paced_waits) - 1))] * 1000:.0f} ms")
        print(f"/api/v1/me idle: p50 {idle_p50:.1f} ms, p95 {idle_p95:.1f} ms")
        print(f"/api/v1/me with 2 jobs training: p50 {busy_p50:.1f} ms, p95 {busy_p95:.1f} ms")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
