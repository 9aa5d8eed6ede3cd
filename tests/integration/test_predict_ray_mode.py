"""``ray`` prediction mode answers the same as ``inline`` mode.

A real ``pigeonhole serve`` runs with ``PIGEONHOLE_PREDICT_MODE=ray``: its dispatcher starts a local Ray
runtime and deploys the Ray Serve application, and its API forwards decoded pixels there. An in-process
API in ``inline`` mode shares its database and blob store. The same requests, sent to both, must give
the same labels, confidences and top-k, for several versions (multiplexing loads each one, and with one
model per replica it unloads and reloads them), and ray mode must still meter every call.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from pigeonhole.api.app import create_app
from pigeonhole.auth.secrets import DISPLAY_PREFIX_LENGTH
from pigeonhole.db.tables import ApiToken, Model, UsageRecord
from pigeonhole.serving import wire
from pigeonhole.settings import Settings
from tests.api.models_helpers import add_version
from tests.integration.live_server import LiveServer, free_port, start_live_server
from tests.model_factories import grey_png

pytestmark = pytest.mark.slow

PREDICT_ROUTE = "/api/v1/models/{model_id}/predict"


@dataclass
class Modes:
    ray: LiveServer
    inline: FastAPI
    serve_url: str
    model_id: str
    token: str

    def both(self, **request: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The same prediction request, answered by the ray-mode server and by the inline-mode app."""
        url = f"/api/v1/models/{self.model_id}/predict"
        headers = {"Authorization": f"Bearer {self.token}"}
        remote = httpx.post(f"{self.ray.base}{url}", headers=headers, timeout=60, **request)
        with TestClient(self.inline, headers=headers) as client:
            local = client.post(url, **request)
        assert remote.status_code == 200, f"{remote.text}; versions: {self.versions()}"
        assert local.status_code == 200, local.text
        return remote.json(), local.json()

    def versions(self) -> object:
        """What the ray-mode server sees, for failure messages."""
        listed = httpx.get(f"{self.ray.base}/api/v1/models/{self.model_id}/versions", timeout=10,
                           headers={"Authorization": f"Bearer {self.token}"})
        return listed.status_code, [(v.get("v"), v.get("active")) for v in listed.json().get("items", [])]


def wait_for_serve(server: LiveServer, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    checks: dict[str, Any] = {}
    while time.monotonic() < deadline:
        checks = httpx.get(f"{server.base}/readyz", timeout=5).json()["checks"]
        if checks.get("predictions") == "ok":
            return
        time.sleep(0.5)
    raise AssertionError(f"Ray Serve did not start: {checks}")


@pytest.fixture(scope="module")
def modes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Modes]:
    data_dir: Path = tmp_path_factory.mktemp("predict-modes")
    serve_port = free_port()
    server = start_live_server(data_dir, extra_env={
        "PIGEONHOLE_PREDICT_MODE": "ray", "PIGEONHOLE_SERVE_PORT": str(serve_port),
        "PIGEONHOLE_SERVE_MODELS_PER_REPLICA": "1",  # two versions in turn: LRU unloads and reloads them
        "PIGEONHOLE_SERVE_MAX_REPLICAS": "1", "PIGEONHOLE_RAY_NUM_CPUS": "2",
        "PIGEONHOLE_USAGE_FLUSH_INTERVAL_S": "0.1"})
    try:
        token = server.signup_token("owner@example.com")
        user_id = httpx.get(f"{server.base}/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()["id"]
        # Same data dir (database, blob store, generated secret key), inline mode: a second API replica.
        inline = create_app(Settings(data_dir=data_dir, predict_mode="inline", usage_flush_interval_s=0.1))
        with inline.state.session_factory() as db, db.begin():
            model = Model(owner_id=user_id, name="Shades", status="ready", time_budget_s=60, preference="balanced")
            db.add(model)
            db.flush()
            model_id = model.id
        add_version(inline, model_id)  # v1: probabilities only
        add_version(inline, model_id, growable=True)  # v2 (active): other weights, a features output too
        wait_for_serve(server)
        yield Modes(server, inline, f"http://127.0.0.1:{serve_port}", model_id, token)
    finally:
        assert server.stop() == 0
    # The dispatcher took its Ray runtime and Serve down with it: nothing listens on the proxy's port.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{serve_port}/-/routes", timeout=1)
        except httpx.HTTPError:
            return
        time.sleep(0.5)
    raise AssertionError("Ray Serve still answers after the server stopped")


def assert_same(remote: dict[str, Any], local: dict[str, Any]) -> None:
    assert remote["version"] == local["version"]
    assert len(remote["predictions"]) == len(local["predictions"])
    for ours, theirs in zip(remote["predictions"], local["predictions"], strict=True):
        assert ours["label"] == theirs["label"] and ours.get("name") == theirs.get("name")
        assert abs(ours["confidence"] - theirs["confidence"]) <= 1e-6
        assert [t["label"] for t in ours["top"]] == [t["label"] for t in theirs["top"]]
        for a, b in zip(ours["top"], theirs["top"], strict=True):
            assert abs(a["confidence"] - b["confidence"]) <= 1e-6


def images(levels: list[int], seed: int = 0) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (f"img{i}.png", grey_png(level, seed + i))) for i, level in enumerate(levels)]


def test_ray_mode_answers_the_same_as_inline_mode(modes: Modes) -> None:
    # multipart, several images, both classes and the uncertain middle; top 2
    remote, local = modes.both(params={"top_k": 2, "version": 1}, files=images([30, 90, 128, 160, 220]))
    assert_same(remote, local)
    assert remote["predictions"][0]["label"] == "dark" and remote["predictions"][-1]["label"] == "bright"
    # JSON with base64, and a threshold that makes the answer "unknown"
    body = {"images": [{"base64": base64.b64encode(grey_png(level, 7)).decode()} for level in (40, 200)]}
    assert_same(*modes.both(params={"version": 1}, json=body))
    unsure = {"images": [{"base64": base64.b64encode(grey_png(level, 8)).decode()} for level in (120, 128)]}
    remote, local = modes.both(params={"version": 1, "threshold": 1.0}, json=unsure)
    assert_same(remote, local)
    assert all(p["label"] is None for p in remote["predictions"])
    # a larger batch (one ONNX call per batch on the replica, as inline micro-batches)
    assert_same(*modes.both(params={"version": 1, "top_k": 1}, files=images(list(range(0, 256, 8)), seed=100)))
    # the active version (v2), then v1 again: with one model per replica each switch unloads and reloads
    remote, local = modes.both(params={"top_k": 2}, files=images([35, 215], seed=300))
    assert remote["version"] == 2
    assert_same(remote, local)
    assert_same(*modes.both(params={"version": 1}, files=images([35, 215], seed=300)))


def test_ray_mode_meters_every_call(modes: Modes) -> None:
    token = modes.ray.signup_token("owner@example.com")  # a token of its own: no other test's calls
    with modes.inline.state.session_factory() as db:
        token_id = db.scalar(select(ApiToken.id).where(ApiToken.prefix == token[:DISPLAY_PREFIX_LENGTH]))

    def recorded() -> list[UsageRecord]:
        with modes.inline.state.session_factory() as db:
            return list(db.scalars(select(UsageRecord).where(UsageRecord.token_id == token_id,
                                                               UsageRecord.route == PREDICT_ROUTE)))

    headers = {"Authorization": f"Bearer {token}"}
    url = f"{modes.ray.base}/api/v1/models/{modes.model_id}/predict"
    for count in (1, 3):
        answer = httpx.post(url, headers=headers, files=images([50] * count), timeout=60)
        assert answer.status_code == 200, f"{answer.text}; versions: {modes.versions()}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(recorded()) < 2:
        time.sleep(0.1)
    new = recorded()
    assert sorted(r.images for r in new) == [1, 3] and {r.model_id for r in new} == {modes.model_id}
    assert {r.status for r in new} == {200}


def test_the_serve_endpoint_runs_only_model_version_files(modes: Modes) -> None:
    """Serve's port bypasses the API, so it is bound to loopback by default, and a replica refuses to open
    any blob but a model version file."""
    body, headers = wire.encode(np.zeros((1, 1, 28, 28), dtype=np.uint8))
    headers[wire.MODEL_HEADER] = "datasets/x/../../secret_key"
    refused = httpx.post(f"{modes.serve_url}{wire.ROUTE_PREFIX}", content=body, headers=headers, timeout=30)
    assert refused.status_code == 400
