"""Placement on a simulated multi-node cluster: node classes, data affinity, drain."""

from __future__ import annotations

import time

from pigeonhole.compute import nodes
from pigeonhole.db.tables import ComputeNode
from tests.integration.compute.conftest import node_ids_by_class


def test_jobs_land_by_class_then_follow_their_cached_data_until_the_node_is_drained(compute) -> None:
    by_class = node_ids_by_class()
    user = compute.user("placement@example.com")
    compute.start_dispatcher()

    # Training prefers the GPU-class node; batch prediction goes to the CPU node.
    train = compute.job(user, "test-train", {"steps": 2, "step_s": 0.05}, dataset_id="ds-train")
    predict = compute.job(user, "test-batch-predict", {"steps": 2, "step_s": 0.05}, model_id="model-1")
    assert compute.wait_status(train, "succeeded").node_id in by_class["gpu"]
    assert compute.wait_status(predict, "succeeded").node_id in by_class["cpu"]

    # A job that may run anywhere: the first lands somewhere; that node now caches the dataset.
    first = compute.wait_status(compute.job(user, "selftest", {"steps": 2, "step_s": 0.05}, dataset_id="ds-a"),
                                "succeeded")
    home = first.node_id
    other = next(n for n in by_class["gpu"] + by_class["cpu"] if n != home)
    # Make the cache holder the busier node: without affinity the least loaded node would be chosen.
    blocker = compute.job(user, "selftest", {"steps": 200, "step_s": 0.05}, dataset_id="ds-a")
    assert compute.wait_status(blocker, "running").node_id == home
    second = compute.wait_status(compute.job(user, "selftest", {"steps": 2, "step_s": 0.05}, dataset_id="ds-a"),
                                 "succeeded")
    assert second.node_id == home, "a second job for the same dataset goes to the node that cached it"

    # Drained: no new work there, running work finishes; the next job for the dataset runs elsewhere.
    with compute.sessions() as db:
        nodes.set_draining(db, home, True)
        db.commit()
    third = compute.wait_status(compute.job(user, "selftest", {"steps": 2, "step_s": 0.05}, dataset_id="ds-a"),
                                "succeeded")
    assert third.node_id == other
    assert compute.get(blocker).status == "running", "draining lets running work finish"
    with compute.sessions() as db:
        cached = nodes.cached_on(db, {"dataset:ds-a"})["dataset:ds-a"]
        assert cached == {home, other}
        assert db.get(ComputeNode, home).draining
        nodes.set_draining(db, home, False)
        db.commit()


def test_a_busy_cache_holder_is_waited_for_only_up_to_the_setting(compute) -> None:
    user = compute.user("affinity@example.com")
    compute.start_dispatcher()
    # The worker itself reports what it cached (here a key other than the job's own affinity key).
    home = compute.wait_status(compute.job(user, "selftest", {"steps": 1, "step_s": 0, "cache_key": "dataset:ds-b"}),
                               "succeeded").node_id
    assert (compute.settings.resolved_cache_dir / "compute" / "selftest" / "dataset_ds-b").exists()
    with compute.sessions() as db:
        assert nodes.cached_on(db, {"dataset:ds-b"}) == {"dataset:ds-b": {home}}
    fillers = [compute.job(user, "selftest", {"steps": 400, "step_s": 0.05}, dataset_id="ds-b") for _ in range(2)]
    for job_id in fillers:
        assert compute.wait_status(job_id, "running").node_id == home
    queued_at = time.monotonic()
    waiting = compute.job(user, "selftest", {"steps": 1, "step_s": 0}, dataset_id="ds-b")
    compute.wait_for(lambda: compute.get(waiting).stage == "waiting for the node that holds its data", 5,
                     "the job to wait for its cache holder")
    done = compute.wait_status(waiting, "succeeded", timeout_s=20)
    assert done.node_id != home
    assert time.monotonic() - queued_at >= compute.settings.affinity_wait_s - 0.5
