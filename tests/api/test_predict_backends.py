"""Prediction backends without Ray: ``ray`` mode with no Serve running answers 503 with a sentence (never a
500), readiness says why, and the API still never imports Ray. The live Ray Serve comparison is in
``tests/integration/test_predict_ray_mode.py``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pigeonhole.api.app import create_app
from pigeonhole.db.tables import UsageRecord
from pigeonhole.serving.backends import BUSY, InlineBackend, RayServeBackend
from pigeonhole.settings import Settings
from tests.api.conftest import Account
from tests.api.models_helpers import add_version, trainable_dataset
from tests.integration.live_server import free_port
from tests.model_factories import grey_png


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    """An API in ray mode whose Ray Serve endpoint has nothing listening (not started yet, or gone)."""
    return create_app(settings.model_copy(update={"predict_mode": "ray", "serve_port": free_port(),
                                                  "serve_timeout_s": 2.0}))


def test_ray_mode_without_serve_answers_503_and_still_meters(app: FastAPI, alice: Account, client: TestClient) -> None:
    assert isinstance(app.state.predictions.backend, RayServeBackend)
    dataset_id = trainable_dataset(alice)
    model_id = alice.client.post("/api/v1/models", json={"name": "Shades", "dataset_id": dataset_id}).json()["id"]
    add_version(app, model_id)
    answer = alice.client.post(f"/api/v1/models/{model_id}/predict", files=[("files", ("a.png", grey_png(40, 1)))])
    assert answer.status_code == 503, answer.text
    assert answer.json() == {"detail": BUSY, "code": "predictions_unavailable"}
    assert int(answer.headers["Retry-After"]) >= 1
    # the API did its part (authorised, decoded, read the version's contract) before forwarding
    assert app.state.predictions.backend.contracts.loads == 1
    bad = alice.client.post(f"/api/v1/models/{model_id}/predict", files=[("files", ("x.png", b"not an image"))])
    assert bad.status_code == 422  # input errors are found in the API, before Ray Serve is asked

    ready = client.get("/readyz").json()
    assert ready["status"] == "degraded" and "Ray Serve" in ready["checks"]["predictions"]
    app.state.usage_recorder.flush()
    with app.state.session_factory() as db:
        rows = db.query(UsageRecord).filter(UsageRecord.route == "/api/v1/models/{model_id}/predict").all()
    assert sorted(r.status for r in rows) == [422, 503]


def test_inline_is_the_default_and_reports_no_serve_check(settings: Settings) -> None:
    assert settings.predict_mode == "inline"
    inline = create_app(settings)  # this module's ``app`` fixture is in ray mode
    assert isinstance(inline.state.predictions.backend, InlineBackend)
    with TestClient(inline) as client:
        assert "predictions" not in client.get("/readyz").json()["checks"]


def test_the_api_never_imports_ray_in_ray_mode() -> None:
    code = ("import sys; from pigeonhole.api.app import create_app; from pigeonhole.settings import Settings; "
            "create_app(Settings(database_url='sqlite://', secret_key='x' * 40, predict_mode='ray')); "
            "import pigeonhole.serving.backends, pigeonhole.serving.wire; "
            "assert 'ray' not in sys.modules, 'the API imported Ray'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
