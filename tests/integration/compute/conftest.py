"""One simulated Ray cluster for the whole test session (a head with no CPUs, a GPU-class node and a
CPU node, all on this machine), and a harness that runs dispatchers against a test database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from pigeonhole.compute import runtime

runtime.prepare_environment()

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from pigeonhole.compute.dispatcher import Dispatcher  # noqa: E402
from pigeonhole.db.engine import create_db_engine, create_session_factory  # noqa: E402
from pigeonhole.db.migrate import upgrade  # noqa: E402
from pigeonhole.db.tables import Job, JobEvent, User  # noqa: E402
from pigeonhole.jobs.service import create_job  # noqa: E402
from pigeonhole.settings import Settings  # noqa: E402
from tests.integration.compute import handlers  # noqa: E402, F401  (registers the test kinds)

GPU_NODE = dict(num_cpus=2, resources={"gpu_node": 1})
CPU_NODE = dict(num_cpus=2)
NAMESPACE = "pigeonhole-test"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Cluster]:
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, include_dashboard=False))
    try:
        cluster.add_node(**GPU_NODE)
        cluster.add_node(**CPU_NODE)
        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def node_ids_by_class() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"gpu": [], "cpu": []}
    for node in ray.nodes():
        if node["Alive"] and node["Resources"].get("CPU", 0) > 0:
            found["gpu" if node["Resources"].get("gpu_node") else "cpu"].append(node["NodeID"])
    return found


@dataclass
class Compute:
    settings: Settings
    sessions: sessionmaker[Session]
    dispatchers: list[tuple[Dispatcher, threading.Thread]] = field(default_factory=list)

    def user(self, email: str) -> str:
        with self.sessions() as db:
            user = User(email=email, password_hash="x")
            db.add(user)
            db.commit()
            return user.id

    def job(self, owner_id: str, kind: str = "selftest", params: dict[str, Any] | None = None, **kw: Any) -> str:
        with self.sessions() as db:
            job = create_job(db, owner_id, kind, params or {}, settings=self.settings, **kw)
            db.commit()
            return job.id

    def get(self, job_id: str) -> Job:
        with self.sessions() as db:
            job = db.get(Job, job_id)
            assert job is not None
            return job

    def events(self, job_id: str) -> list[JobEvent]:
        with self.sessions() as db:
            return list(db.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.created_at)))

    def start_dispatcher(self) -> Dispatcher:
        dispatcher = Dispatcher(self.settings, self.sessions, namespace=NAMESPACE)
        ready = threading.Event()
        thread = threading.Thread(target=dispatcher.run, kwargs={"on_ready": ready.set}, daemon=True)
        thread.start()
        assert ready.wait(30), "the dispatcher did not start"
        self.dispatchers.append((dispatcher, thread))
        return dispatcher

    def stop_dispatchers(self) -> None:
        for dispatcher, thread in self.dispatchers:
            dispatcher.stop()
            thread.join(30)
        self.dispatchers.clear()

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float = 30, what: str = "condition",
                 state: Callable[[], str] | None = None) -> Any:
        """``state``: what to say about the system when it times out (so a rare failure tells its cause)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}" + (f"; {state()}" if state is not None else ""))

    def describe(self, job_id: str) -> str:
        """A job's state, its events and the dispatchers' view of the cluster, for a failure message."""
        job = self.get(job_id)
        events = [(e.type, e.attempt, e.seq) for e in self.events(job_id)]
        tracked = [sorted(d.tracked) for d, _ in self.dispatchers]
        return (f"job {job.status}, attempt {job.attempt}, node {job.node_id}, stage {job.stage!r}, "
                f"started {job.started_at}, events {events}; dispatchers track {tracked}; "
                f"Ray has {ray.available_resources()} of {ray.cluster_resources()}")

    def wait_status(self, job_id: str, *statuses: str, timeout_s: float = 30) -> Job:
        try:
            return self.wait_for(lambda: (job := self.get(job_id)).status in statuses and job, timeout_s,
                                 f"job {job_id} to be {statuses}")
        except AssertionError as exc:
            job = self.get(job_id)
            raise AssertionError(f"{exc}; it is {job.status} (attempt {job.attempt}, stage {job.stage!r}, "
                                 f"node {job.node_id}, error {job.error!r}, log {job.log_tail!r})") from None


def compute_settings(settings: Settings, **overrides: Any) -> Settings:
    values = dict(affinity_wait_s=3.0, node_sync_interval_s=0.5, dispatcher_poll_interval_s=0.05,
                  dispatcher_lease_ttl_s=3.0, cancel_grace_s=2.0, jobs_max_running_per_user=4)
    values.update(overrides)
    return settings.model_copy(update=values)


@pytest.fixture
def compute(settings: Settings, ray_cluster: Cluster) -> Iterator[Compute]:
    engine = create_db_engine(settings.resolved_database_url)
    upgrade(engine)
    harness = Compute(compute_settings(settings), create_session_factory(engine))
    try:
        yield harness
    finally:
        harness.stop_dispatchers()
        engine.dispose()
