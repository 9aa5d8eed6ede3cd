"""Operational endpoints and the OpenAPI document."""

from __future__ import annotations

import shutil

from fastapi.testclient import TestClient


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["checks"]["database"] == "ok" and body["checks"]["storage"] == "ok"
    # no dispatcher runs in API tests: reported, but the API is still ready
    assert body["status"] == "degraded" and "dispatcher" in body["checks"]["compute"]


def test_compute_is_ready_only_once_a_node_has_checked_in(app, client: TestClient) -> None:
    from pigeonhole.compute import lease, nodes

    with app.state.session_factory() as db:
        assert lease.try_acquire(db, "dispatcher-1", ttl_s=60)
    starting = client.get("/readyz").json()
    assert starting["status"] == "degraded" and "no compute node has checked in" in starting["checks"]["compute"]
    with app.state.session_factory() as db, db.begin():
        nodes.sync_nodes(db, [{"NodeID": "n1", "Alive": True, "NodeManagerAddress": "127.0.0.1",
                               "Resources": {"CPU": 2.0}}], "gpu_node")
    ready = client.get("/readyz").json()
    assert ready["status"] == "ok" and ready["checks"]["compute"] == "ok"


def test_readiness_reports_a_broken_blob_store(app, client: TestClient, settings) -> None:
    blobs = settings.data_dir / "blobs"
    shutil.rmtree(blobs)
    blobs.write_text("a file where the blob directory should be")
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "ok" and ready.json()["checks"]["storage"] != "ok"


def test_metrics_count_requests_per_route_template(alice, client: TestClient) -> None:
    alice.client.get("/api/v1/me")
    alice.client.delete("/api/v1/tokens/01aaaaaaaaaaaaaaaaaaaaaaaa")
    client.get("/no/such/page")
    text = client.get("/metrics").text
    assert 'pigeonhole_http_requests_total{method="GET",route="/api/v1/me",status="200"}' in text
    assert 'route="/api/v1/tokens/{token_id}",status="404"' in text
    assert 'route="unmatched",status="404"' in text
    assert "pigeonhole_http_request_duration_seconds_bucket" in text


def test_openapi_has_stable_unique_operation_ids(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    assert {"auth-login", "auth-signup", "tokens-create_token", "tokens-list_tokens", "usage-usage"} <= set(ids)
    assert client.get("/docs").status_code == 200


def test_landing_page(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "Pigeonhole" in page.text
