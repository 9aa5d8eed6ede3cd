"""Every token call is recorded off the request path and aggregated per day, token and model."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

from pigeonhole.db.tables import UsageRecord
from pigeonhole.usage.buckets import bucket_upper_ms, latency_bucket, percentile_from_buckets
from pigeonhole.usage.recorder import UsageEvent
from tests.api.conftest import Account


def _flush(app) -> None:
    app.state.usage_recorder.flush()


def test_token_calls_are_recorded_with_route_template_and_status(app, alice: Account, new_client) -> None:
    token = alice.token()
    program = new_client(token)
    for _ in range(3):
        assert program.get("/api/v1/me").status_code == 200
    assert program.delete("/api/v1/tokens/01aaaaaaaaaaaaaaaaaaaaaaaa").status_code == 404
    alice.client.get("/api/v1/me")  # browser session calls are not metered
    _flush(app)
    with app.state.session_factory() as db:
        rows = db.query(UsageRecord).all()
    assert sorted((r.method, r.route, r.status) for r in rows) == [
        ("DELETE", "/api/v1/tokens/{token_id}", 404),
        ("GET", "/api/v1/me", 200), ("GET", "/api/v1/me", 200), ("GET", "/api/v1/me", 200),
    ]
    assert all(r.user_id == alice.id and r.token_id and r.latency_ms > 0 for r in rows)


def test_usage_aggregates_by_day_token_and_model(app, alice: Account, bob: Account, new_client) -> None:
    first, second = alice.token(), alice.token()
    for _ in range(4):
        new_client(first).get("/api/v1/me")
    new_client(second).get("/api/v1/me")
    new_client(second).get("/api/v1/nothing-here")  # unmatched routes are not attributed to a principal
    new_client(second).post("/api/v1/tokens", json={})  # 422: counted as an error
    new_client(bob.token()).get("/api/v1/me")  # another tenant
    _flush(app)

    by_day = alice.client.get("/api/v1/usage").json()
    today = datetime.now(UTC).date().isoformat()
    assert [item["key"] for item in by_day["items"]] == [today]
    assert by_day["total"]["calls"] == 6 and by_day["total"]["errors"] == 1
    assert by_day["total"]["p50_ms"] > 0 and by_day["total"]["p95_ms"] >= by_day["total"]["p50_ms"]
    assert by_day["group_by"] == "day" and by_day["from"] <= today <= by_day["to"]

    by_token = alice.client.get("/api/v1/usage", params={"group_by": "token"}).json()
    calls = {item["label"]: item["calls"] for item in by_token["items"]}
    assert sorted(calls.values()) == [2, 4]

    by_model = alice.client.get("/api/v1/usage", params={"group_by": "model"}).json()
    assert [(i["key"], i["calls"]) for i in by_model["items"]] == [(None, 6)]


def test_usage_range_filters_and_validation(app, alice: Account) -> None:
    recorder = app.state.usage_recorder
    old = datetime.now(UTC) - timedelta(days=40)
    recorder.record(UsageEvent(user_id=alice.id, token_id=None, model_id="m1", method="POST",
                               route="/api/v1/models/{model_id}/predict", status=200, latency_ms=12.0,
                               images=3, at=old))
    _flush(app)
    assert alice.client.get("/api/v1/usage").json()["total"]["calls"] == 0  # default: last 30 days
    day = old.date().isoformat()
    report = alice.client.get("/api/v1/usage", params={"from": day, "to": day, "group_by": "model"}).json()
    assert report["items"][0]["key"] == "m1" and report["items"][0]["images"] == 3
    reversed_range = alice.client.get("/api/v1/usage", params={"from": "2026-02-01", "to": "2026-01-01"})
    assert reversed_range.status_code == 422
    assert alice.client.get("/api/v1/usage", params={"from": "2020-01-01", "to": "2026-01-01"}).status_code == 422
    assert alice.client.get("/api/v1/usage", params={"group_by": "week"}).status_code == 422
    assert alice.client.get("/api/v1/usage", params={"from": "yesterday"}).status_code == 422


def test_latency_buckets_bound_the_percentile_error() -> None:
    for ms in (0.05, 0.3, 1.0, 7.7, 55.0, 1234.5, 99_999.0):
        upper = bucket_upper_ms(latency_bucket(ms))
        assert ms <= upper * 1.0000001 and (ms <= 0.1 or upper <= ms * 1.1 + 1e-9)
    counts = {latency_bucket(float(ms)): 0 for ms in range(1, 101)}
    for ms in range(1, 101):
        counts[latency_bucket(float(ms))] += 1
    p50, p95 = percentile_from_buckets(counts, 0.5), percentile_from_buckets(counts, 0.95)
    assert 50 <= p50 <= 55 and 95 <= p95 <= 104.5
    assert percentile_from_buckets({}, 0.5) is None


def test_recorder_keeps_events_when_the_database_fails(app, alice: Account) -> None:
    recorder = app.state.usage_recorder
    event = UsageEvent(user_id="no-such-user", token_id=None, model_id=None, method="GET", route="/x",
                       status=200, latency_ms=1.0, images=0, at=datetime.now(UTC))
    recorder.record(event)  # violates the foreign key: the batch fails and is kept
    with contextlib.suppress(Exception):
        recorder.flush()
    assert len(recorder._pending) == 1
    recorder._pending.clear()
