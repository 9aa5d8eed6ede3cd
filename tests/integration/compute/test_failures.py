"""Lost workers, lost nodes and a restarted dispatcher: the job is retried and succeeds exactly once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from tests.integration.compute.conftest import CPU_NODE, GPU_NODE, node_ids_by_class

PIGEONHOLE = Path(sys.executable).with_name("pigeonhole")


def _worker_pid(log_tail: str) -> int | None:
    found = re.findall(r"in process (\d+)", log_tail)
    return int(found[-1]) if found else None


def test_a_killed_worker_makes_the_job_retry_from_its_checkpoint(compute) -> None:
    user = compute.user("worker@example.com")
    compute.start_dispatcher()
    job_id = compute.job(user, "selftest", {"steps": 40, "step_s": 0.05})
    job = compute.wait_for(lambda: (j := compute.get(job_id)).progress >= 0.25 and _worker_pid(j.log_tail) and j,
                           30, "progress")
    os.kill(_worker_pid(job.log_tail), signal.SIGKILL)
    done = compute.wait_status(job_id, "succeeded", "failed", timeout_s=60)
    assert done.status == "succeeded", done.error
    assert done.attempt == 2
    assert done.result["resumed_from"] >= 10, "the retry resumes from the last checkpoint"
    assert "attempt 1 lost: The worker process running the job stopped." in done.log_tail


@pytest.mark.slow
def test_a_lost_node_makes_the_job_retry_elsewhere(compute, ray_cluster) -> None:
    user = compute.user("node@example.com")
    compute.start_dispatcher()
    job_id = compute.job(user, "test-batch-predict", {"steps": 60, "step_s": 0.05}, model_id="m-lost")
    job = compute.wait_for(lambda: (j := compute.get(job_id)).progress >= 0.2 and j, 30, "progress")
    lost = job.node_id
    assert lost in node_ids_by_class()["cpu"]
    node = next(n for n in ray_cluster.worker_nodes if n.node_id == lost)
    ray_cluster.remove_node(node)
    try:
        done = compute.wait_status(job_id, "succeeded", "failed", timeout_s=60)
        assert done.status == "succeeded", done.error
        assert done.attempt == 2 and done.node_id != lost
        assert "The compute node running the job stopped." in done.log_tail
        assert len([e for e in compute.events(job_id) if e.type == "succeeded"]) == 1
    finally:  # give the shared cluster its CPU node back
        ray_cluster.add_node(**CPU_NODE)
        ray_cluster.wait_for_nodes()
    assert GPU_NODE  # the GPU-class node was never touched


def _dispatcher_process(compute, tmp_path: Path) -> subprocess.Popen[str]:
    settings = compute.settings
    env = {**os.environ, "PIGEONHOLE_DATABASE_URL": settings.resolved_database_url,
           "PIGEONHOLE_DATA_DIR": str(settings.data_dir),
           "PIGEONHOLE_RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "PIGEONHOLE_DISPATCHER_LEASE_TTL_S": "2", "PIGEONHOLE_NODE_SYNC_INTERVAL_S": "0.5",
           "PIGEONHOLE_DISPATCHER_POLL_INTERVAL_S": "0.05"}
    log = open(tmp_path / f"dispatcher-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
    return subprocess.Popen([str(PIGEONHOLE), "dispatcher", "--log-level", "warning"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_killing_and_restarting_the_dispatcher_mid_job_succeeds_exactly_once(compute, tmp_path: Path) -> None:
    user = compute.user("restart@example.com")
    job_id = compute.job(user, "selftest", {"steps": 40, "step_s": 0.1, "emit_every": 5})
    first = _dispatcher_process(compute, tmp_path)
    try:
        compute.wait_for(lambda: compute.get(job_id).progress >= 0.3, 60, "progress under the first dispatcher")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    versions_before = [e.data["step"] for e in compute.events(job_id) if e.type == "version"]
    assert versions_before
    second = _dispatcher_process(compute, tmp_path)
    try:
        done = compute.wait_status(job_id, "succeeded", "failed", timeout_s=90)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    assert done.status == "succeeded", done.error
    assert done.attempt == 2 and done.result["resumed_from"] >= max(versions_before)
    events = compute.events(job_id)
    assert len([e for e in events if e.type == "succeeded"]) == 1
    steps = [e.data["step"] for e in events if e.type == "version"]
    assert len(steps) == len(set(steps)) == 7, f"every anytime version exactly once: {steps}"
