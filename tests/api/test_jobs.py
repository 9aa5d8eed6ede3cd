"""Jobs over HTTP (rows only: no Ray is involved in the API) and the admin compute views."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pigeonhole.db.base import utcnow
from pigeonhole.db.tables import ComputeNode, Job, NodeCacheEntry
from pigeonhole.errors import TooManyRequests, Unprocessable
from pigeonhole.jobs.service import create_job


def _job(app, owner_id: str, kind: str = "selftest", **kw) -> str:
    with app.state.session_factory() as db:
        job = create_job(db, owner_id, kind, kw.pop("params", {"steps": 1}), settings=app.state.settings, **kw)
        db.commit()
        return job.id


def _set(app, job_id: str, **values) -> None:
    with app.state.session_factory() as db:
        job = db.get(Job, job_id)
        for name, value in values.items():
            setattr(job, name, value)
        db.commit()


def test_list_detail_and_filter_by_model(app, alice, bob) -> None:
    first = _job(app, alice.id, "train", model_id="01model0000000000000000000", dataset_id="01data00000000000000000000")
    second = _job(app, alice.id)
    _job(app, bob.id)
    listed = alice.client.get("/api/v1/jobs").json()
    assert [j["id"] for j in listed["items"]] == [second, first] and listed["next_cursor"] is None
    only = alice.client.get("/api/v1/jobs", params={"model_id": "01model0000000000000000000"}).json()["items"]
    assert [j["id"] for j in only] == [first]
    detail = alice.client.get(f"/api/v1/jobs/{first}").json()
    assert detail["status"] == "queued" and detail["kind"] == "train" and detail["progress"] == 0
    assert detail["stage"] == "waiting to start" and detail["metrics"] == [] and detail["attempt"] == 0
    assert "owner_id" not in detail and "node_id" not in detail
    page = alice.client.get("/api/v1/jobs", params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    assert alice.client.get("/api/v1/jobs", params={"status": "running"}).json()["items"] == []


def test_progress_written_by_the_dispatcher_is_visible(app, alice) -> None:
    job_id = _job(app, alice.id)
    _set(app, job_id, status="running", progress=0.5, stage="step 5 of 10", eta_s=3.0,
         metrics=[{"t": 1.0, "step": 5}], log_tail="hello\n", started_at=utcnow())
    body = alice.client.get(f"/api/v1/jobs/{job_id}").json()
    assert (body["status"], body["progress"], body["stage"], body["eta_s"]) == ("running", 0.5, "step 5 of 10", 3.0)
    assert body["metrics"] == [{"t": 1.0, "step": 5}] and body["log_tail"] == "hello\n"


def test_cancel(app, alice) -> None:
    queued = _job(app, alice.id)
    body = alice.client.post(f"/api/v1/jobs/{queued}/cancel").json()
    assert body["status"] == "cancelled" and body["finished_at"]
    assert alice.client.post(f"/api/v1/jobs/{queued}/cancel").json()["status"] == "cancelled"

    running = _job(app, alice.id)
    _set(app, running, status="running", attempt=1)
    body = alice.client.post(f"/api/v1/jobs/{running}/cancel").json()
    assert body["status"] == "running" and body["cancel_requested"], "the dispatcher finishes the cancel"

    done = _job(app, alice.id)
    _set(app, done, status="succeeded")
    refused = alice.client.post(f"/api/v1/jobs/{done}/cancel")
    assert refused.status_code == 409
    assert refused.json() == {"detail": "This job has already succeeded; there is nothing to cancel.",
                              "code": "job_finished"}


def test_other_users_jobs_do_not_exist_for_them(app, alice, bob) -> None:
    job_id = _job(app, alice.id)
    for method, path in (("GET", f"/api/v1/jobs/{job_id}"), ("POST", f"/api/v1/jobs/{job_id}/cancel")):
        response = bob.client.request(method, path)
        assert response.status_code == 404 and response.json()["detail"] == "There is no such job."
    assert bob.client.get("/api/v1/jobs").json()["items"] == []
    assert alice.client.get(f"/api/v1/jobs/{job_id}").json()["status"] == "queued"


def test_limits_and_bad_kinds_answer_sentences(app, alice) -> None:
    app.state.settings.jobs_max_queued_per_user = 2
    _job(app, alice.id)
    _job(app, alice.id)
    with pytest.raises(TooManyRequests, match="You already have 2 jobs waiting to run") as raised:
        _job(app, alice.id)
    assert raised.value.status == 429 and raised.value.headers["Retry-After"]
    with pytest.raises(Unprocessable, match="There is no kind of job called 'dance'"):
        _job(app, alice.id, "dance")
    with pytest.raises(Unprocessable, match="plain data"):
        _job(app, alice.id, params={"x": object()})


def test_admin_nodes_drain_and_all_jobs(app, admin, alice) -> None:
    now = utcnow()
    with app.state.session_factory() as db:
        db.add(ComputeNode(id="n" * 56, address="10.0.0.7", hostname="gpu-box", alive=True, draining=False,
                           node_class="gpu", resources_total={"CPU": 8.0, "GPU": 1.0, "memory": 1e9, "gpu_node": 1.0},
                           resources_available={"CPU": 7.0, "GPU": 1.0, "memory": 1e9, "gpu_node": 1.0},
                           cache_used_bytes=1234, cache_free_bytes=10**9, first_seen_at=now, last_seen_at=now))
        db.flush()
        db.add(NodeCacheEntry(node_id="n" * 56, key="dataset:01data00000000000000000000", used_at=now))
        db.add(NodeCacheEntry(node_id="n" * 56, key="model:01model0000000000000000000", used_at=now))
        db.commit()
    job_id = _job(app, alice.id)
    _set(app, job_id, status="running", node_id="n" * 56)

    nodes = admin.client.get("/api/v1/admin/nodes").json()["items"]
    assert len(nodes) == 1
    node = nodes[0]
    assert node["state"] == "alive" and node["node_class"] == "gpu" and not node["draining"]
    assert node["total"] == {"cpus": 8.0, "gpus": 1.0, "memory_bytes": 10**9, "custom": {"gpu_node": 1.0}}
    assert node["available"]["cpus"] == 7.0 and node["cache_used_bytes"] == 1234
    assert node["running_jobs"] == [job_id]
    assert node["cached_datasets"] == ["01data00000000000000000000"]
    assert node["cached_models"] == ["01model0000000000000000000"]

    assert admin.client.post(f"/api/v1/admin/nodes/{'n' * 56}/drain").json()["draining"] is True
    assert admin.client.get("/api/v1/admin/nodes").json()["items"][0]["draining"] is True, "persisted"
    assert admin.client.post(f"/api/v1/admin/nodes/{'n' * 56}/undrain").json()["draining"] is False
    missing = admin.client.post("/api/v1/admin/nodes/nope/drain")
    assert missing.status_code == 404 and missing.json()["detail"] == "There is no compute node with this id."

    all_jobs = admin.client.get("/api/v1/admin/jobs").json()["items"]
    assert [(j["id"], j["owner_id"], j["node_id"]) for j in all_jobs] == [(job_id, alice.id, "n" * 56)]
    assert admin.client.get("/api/v1/admin/jobs", params={"status": "queued"}).json()["items"] == []


def test_admin_selftest_queues_a_diagnostic_job(admin) -> None:
    created = admin.client.post("/api/v1/admin/selftest", json={"steps": 3, "step_s": 0.01})
    assert created.status_code == 202
    body = created.json()
    assert body["kind"] == "selftest" and body["status"] == "queued" and body["params"]["steps"] == 3
    assert admin.client.post("/api/v1/admin/selftest", json={"steps": 0}).status_code == 422


def test_the_api_never_imports_ray() -> None:
    code = ("import sys; from pigeonhole.api.app import create_app; from pigeonhole.settings import Settings; "
            "create_app(Settings(database_url='sqlite://', secret_key='x' * 40)); "
            "import pigeonhole.jobs.service, pigeonhole.compute.handlers, pigeonhole.compute.builtin; "
            "assert 'ray' not in sys.modules, 'the API imported Ray'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_nodes_dead_for_a_day_are_forgotten_unless_a_job_is_recorded_on_them(app, alice) -> None:
    from datetime import timedelta

    from pigeonhole.compute import nodes

    now = utcnow()
    total = {"CPU": 2.0}

    def node(node_id: str, alive: bool, seen_hours_ago: float) -> ComputeNode:
        seen = now - timedelta(hours=seen_hours_ago)
        return ComputeNode(id=node_id, address="10.0.0.1", alive=alive, draining=False, node_class="cpu",
                           resources_total=total, resources_available=total, first_seen_at=seen, last_seen_at=seen)

    with app.state.session_factory() as db:
        db.add_all([node("old-dead", False, 30), node("old-dead-busy", False, 30), node("new-dead", False, 1),
                    node("alive", True, 30)])
        db.flush()
        db.add(NodeCacheEntry(node_id="old-dead", key="dataset:x", used_at=now))
        db.commit()
    _set(app, _job(app, alice.id), status="running", node_id="old-dead-busy")
    ray_says = [{"NodeID": "alive", "Alive": True, "Resources": total},
                {"NodeID": "never-seen-alive", "Alive": False, "Resources": {}}]
    with app.state.session_factory() as db:
        known = {n.id for n in nodes.sync_nodes(db, ray_says, "gpu_node")}
        db.commit()
    assert known == {"old-dead-busy", "new-dead", "alive"}
    with app.state.session_factory() as db:
        assert db.get(NodeCacheEntry, ("old-dead", "dataset:x")) is None
        assert db.get(ComputeNode, "alive").alive


def test_the_queued_job_limit_holds_under_concurrent_requests(app, alice) -> None:
    """Six requests at once against a limit of three: exactly three jobs are queued, the others refused.
    Each request holds its transaction open a moment after counting, which is when a count-then-insert
    without the per-user lock lets every request through."""
    import threading
    import time

    app.state.settings.jobs_max_queued_per_user = 3
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def request() -> None:
        with app.state.session_factory() as db:
            barrier.wait()
            try:
                create_job(db, alice.id, "selftest", {}, settings=app.state.settings)
                time.sleep(0.2)
                db.commit()
                outcomes.append("queued")
            except TooManyRequests:
                db.rollback()
                outcomes.append("refused")

    threads = [threading.Thread(target=request) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["queued"] * 3 + ["refused"] * 3
    with app.state.session_factory() as db:
        assert db.query(Job).filter(Job.owner_id == alice.id, Job.status == "queued").count() == 3
