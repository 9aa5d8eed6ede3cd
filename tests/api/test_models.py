"""Models: training requests, versions, activation and rollback, export, predictions."""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
import onnxruntime as ort
import pytest

from pigeonhole.db.tables import Job, UsageRecord
from pigeonhole.serving.limits import RateLimiter
from pigeonhole.serving.model import load_model
from pigeonhole.serving.preprocess import pixels_for
from pigeonhole.storage.images import ImageLimits
from tests.api.conftest import Account
from tests.api.datasets_helpers import upload
from tests.api.models_helpers import add_version, trainable_dataset
from tests.model_factories import dark_bright_onnx, grey_png


@pytest.fixture
def model_id(alice: Account) -> str:
    dataset_id = trainable_dataset(alice)
    response = alice.client.post("/api/v1/models", json={"name": "Shades", "dataset_id": dataset_id})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_creating_a_model_queues_its_training(alice: Account, model_id: str) -> None:
    model = alice.client.get(f"/api/v1/models/{model_id}").json()
    assert model["status"] == "queued" and model["active_version"] is None and model["metrics"] is None
    assert model["preference"] == "balanced" and model["time_budget_s"] == 600
    job = alice.client.get(f"/api/v1/jobs/{model['job_id']}").json()
    assert job["kind"] == "train" and job["status"] == "queued"
    assert [m["id"] for m in alice.client.get("/api/v1/models").json()["items"]] == [model_id]


def test_training_requests_are_checked(alice: Account) -> None:
    dataset_id = trainable_dataset(alice)
    post = lambda **body: alice.client.post("/api/v1/models", json={"name": "m", **body})  # noqa: E731
    assert post(dataset_id="01aaaaaaaaaaaaaaaaaaaaaaaa").status_code == 404
    assert post(dataset_id=dataset_id, classes=["dark"]).json()["code"] == "too_few_classes"
    assert post(dataset_id=dataset_id, classes=["dark", "zebra"]).json()["code"] == "class_not_found"
    assert post(dataset_id=dataset_id, preference="fastest").status_code == 422
    assert post(dataset_id=dataset_id, target_accuracy=1.5).status_code == 422
    small = alice.client.post("/api/v1/datasets", json={"name": "tiny"}).json()["id"]
    upload(alice, small, [("a.png", grey_png(40, 1)), ("b.png", grey_png(40, 2))], label="a")
    upload(alice, small, [(f"b{i}.png", grey_png(200, i)) for i in range(5)], label="b")
    refused = post(dataset_id=small)
    assert refused.status_code == 422 and "needs at least 5" in refused.json()["detail"]


def test_no_version_yet_is_a_clear_conflict(alice: Account, model_id: str) -> None:
    response = alice.client.post(f"/api/v1/models/{model_id}/predict", files=[("files", ("a.png", grey_png(40, 1)))])
    assert response.status_code == 409 and response.json()["code"] == "no_version"


def test_versions_activate_rollback_and_export(app, alice: Account, model_id: str) -> None:
    assert add_version(app, model_id) == 1
    assert add_version(app, model_id) == 2
    model = alice.client.get(f"/api/v1/models/{model_id}").json()
    assert model["active_version"] == 2 and model["status"] == "ready" and model["classes"] == ["dark", "bright"]
    versions = alice.client.get(f"/api/v1/models/{model_id}/versions").json()["items"]
    assert [(v["v"], v["active"]) for v in versions] == [(2, True), (1, False)]
    one = alice.client.get(f"/api/v1/models/{model_id}/versions/1").json()
    assert one["input"] == {"height": 28, "width": 28, "layout": "NCHW", "dtype": "uint8", "color": "L",
                            "mean": one["input"]["mean"], "std": one["input"]["std"], "crop": "resize"}
    assert alice.client.post(f"/api/v1/models/{model_id}/versions/1/activate").json()["active_version"] == 1
    assert alice.client.post(f"/api/v1/models/{model_id}/versions/9/activate").status_code == 404
    # a version number past what the database holds is no such version, not a server error (the fuzzer's find)
    huge = 2**63
    for response in (alice.client.get(f"/api/v1/models/{model_id}/versions/{huge}"),
                     alice.client.post(f"/api/v1/models/{model_id}/versions/{huge}/activate"),
                     alice.client.post(f"/api/v1/models/{model_id}/predict", params={"version": huge},
                                       files=[("files", ("a.png", grey_png(40, 1)))])):
        assert response.json() == {"detail": f"This model has no version {huge}.", "code": "version_not_found"}
    exported = alice.client.get(f"/api/v1/models/{model_id}/versions/1/export", params={"format": "onnx"})
    assert exported.status_code == 200 and exported.content == dark_bright_onnx()
    assert alice.client.get(f"/api/v1/models/{model_id}/versions/1/export", params={"format": "tflite"}
                            ).status_code == 422


def test_a_prediction_does_not_wait_for_the_shared_connection_pool(app, alice: Account, model_id: str,
                                                                   new_client) -> None:
    """With SQLite the version is looked up on the event loop; while every connection of the app's pool is held (by
    requests whose sessions the loop itself must close), a lookup from that pool would stall the loop until the
    pool's timeout and then fail. The prediction path has its own engine, so it is answered at once."""
    add_version(app, model_id)
    engine = app.state.engine
    if engine.dialect.name != "sqlite":
        assert not app.state.lookups.on_loop  # off the loop: the executor's thread may wait, the loop does not
        return
    program = new_client(alice.token(["predict"]))
    call = lambda: program.post(f"/api/v1/models/{model_id}/predict", files=[("files", ("a.png", grey_png(40, 1)))])  # noqa: E731
    assert call().status_code == 200  # the token is now remembered: checking it needs no connection either
    held = [engine.connect() for _ in range(engine.pool.size() + engine.pool._max_overflow)]
    try:
        answer = call()
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "dark", answer.text
    finally:
        for connection in held:
            connection.close()


def test_predictions_multipart_and_json(app, alice: Account, model_id: str, new_client) -> None:
    add_version(app, model_id)
    program = new_client(alice.token(["predict"]))
    files = [("files", ("dark.png", grey_png(40, 900))), ("files", ("bright.png", grey_png(210, 901)))]
    result = program.post(f"/api/v1/models/{model_id}/predict", params={"top_k": 2}, files=files)
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["version"] == 1 and [p["label"] for p in body["predictions"]] == ["dark", "bright"]
    assert [p["name"] for p in body["predictions"]] == ["dark.png", "bright.png"]
    assert len(body["predictions"][0]["top"]) == 2 and 0 < body["predictions"][0]["confidence"] <= 1

    as_json = program.post(f"/api/v1/models/{model_id}/predict",
                           json={"images": [{"base64": base64.b64encode(grey_png(210, 5)).decode()}]})
    assert as_json.json()["predictions"][0]["label"] == "bright"
    unsure = program.post(f"/api/v1/models/{model_id}/predict", params={"threshold": 1.0},
                          files=[("files", ("x.png", grey_png(120, 3)))])
    assert unsure.json()["predictions"][0]["label"] is None  # "unknown"
    raw = program.post(f"/api/v1/models/{model_id}/predict", content=grey_png(40, 6),
                       headers={"content-type": "image/png"})  # one image as the body: no form to parse
    assert raw.status_code == 200 and raw.json()["predictions"][0]["label"] == "dark"
    empty = program.post(f"/api/v1/models/{model_id}/predict", content=b"", headers={"content-type": "image/jpeg"})
    assert empty.status_code == 422 and empty.json()["code"] == "no_images"

    app.state.usage_recorder.flush()
    with app.state.session_factory() as db:
        rows = db.query(UsageRecord).filter(UsageRecord.route == "/api/v1/models/{model_id}/predict").all()
    assert sorted(r.images for r in rows if r.status == 200) == [1, 1, 1, 2]
    assert all(r.model_id == model_id for r in rows)


def test_an_overloaded_service_answers_503_with_a_wait(app, alice: Account, model_id: str) -> None:
    add_version(app, model_id)
    url = f"/api/v1/models/{model_id}/predict"
    image = [("files", ("a.png", grey_png(40, 1)))]
    predictions = app.state.predictions
    predictions.in_flight = predictions.max_in_flight  # as if that many calls were under way
    try:
        refused = alice.client.post(url, files=image)
    finally:
        predictions.in_flight = 0
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["code"] == "overloaded" and "try again" in refused.json()["detail"]
    assert refused.headers["x-content-type-options"] == "nosniff"  # refused at the door, still a proper answer
    assert alice.client.post(url, files=image).status_code == 200
    assert predictions.in_flight == 0  # every call admitted is let go, answered or not


def test_bad_prediction_requests_are_4xx(app, alice: Account, model_id: str) -> None:
    add_version(app, model_id)
    url = f"/api/v1/models/{model_id}/predict"
    not_image = alice.client.post(url, files=[("files", ("notes.png", b"hello, not an image"))])
    assert not_image.status_code == 422 and "notes.png" in not_image.json()["detail"]
    assert alice.client.post(url, json={"images": []}).json()["code"] == "no_images"
    assert alice.client.post(url, json={"images": [{"base64": "!!!"}]}).json()["code"] == "invalid_base64"
    assert alice.client.post(url, json={"images": [{}]}).status_code == 422
    assert alice.client.post(url, json={"wrong": 1}).status_code == 422
    assert alice.client.post(url, content=b"raw", headers={"content-type": "text/plain"}).status_code == 422
    private = alice.client.post(url, json={"images": [{"url": "http://127.0.0.1:1/x.png"}]})
    assert private.status_code == 422 and private.json()["code"] == "private_address"
    app.state.settings.predict_max_images = 2
    too_many = alice.client.post(url, files=[("files", (f"{i}.png", grey_png(40, i))) for i in range(3)])
    assert too_many.status_code == 413
    assert alice.client.post(url, params={"version": 7}, files=[("files", ("a.png", grey_png(40, 1)))]
                             ).status_code == 404


def test_a_caller_hanging_up_mid_body_is_no_error(app, alice: Account, model_id: str, caplog) -> None:  # type: ignore[no-untyped-def]
    add_version(app, model_id)
    token = alice.token(["predict"])
    start = b"--b\r\nContent-Disposition: form-data; name=\"files\""  # and then the caller is gone
    body = [{"type": "http.request", "body": start, "more_body": True}, {"type": "http.disconnect"}]
    scope = {"type": "http", "method": "POST", "path": f"/api/v1/models/{model_id}/predict", "raw_path": b"",
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("testserver", 80), "client": ("127.0.0.1", 5000),
             "headers": [(b"authorization", f"Bearer {token}".encode()),
                         (b"content-type", b"multipart/form-data; boundary=b")]}
    sent: list[dict] = []  # type: ignore[type-arg]

    async def receive() -> dict:  # type: ignore[type-arg]
        return body.pop(0) if body else {"type": "http.disconnect"}

    async def send(message: dict) -> None:  # type: ignore[type-arg]
        sent.append(message)

    with caplog.at_level("ERROR"):
        asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 499 and not [r for r in caplog.records if r.levelname == "ERROR"]


def test_models_load_once(app, alice: Account, model_id: str) -> None:
    add_version(app, model_id)
    for i in range(3):
        alice.client.post(f"/api/v1/models/{model_id}/predict", files=[("files", ("a.png", grey_png(40, i)))])
    assert app.state.predictions.cache.loads == 1


def test_delete_model_removes_versions_and_cancels_training(app, alice: Account, model_id: str) -> None:
    add_version(app, model_id)
    job_id = alice.client.get(f"/api/v1/models/{model_id}").json()["job_id"]
    key = alice.client.get(f"/api/v1/models/{model_id}/versions/1")  # exists before
    assert key.status_code == 200
    assert alice.client.delete(f"/api/v1/models/{model_id}").status_code == 204
    assert alice.client.get(f"/api/v1/models/{model_id}").status_code == 404
    assert alice.client.get(f"/api/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_rate_limit_answers_429_with_retry_after(app, alice: Account, model_id: str, new_client) -> None:
    add_version(app, model_id)
    # One token a second: the burst of three below must not refill in between, which a first call that loads
    # the model (several hundred ms on a busy machine) did at 4 a second. The model is loaded first, apart.
    app.state.predict_limiter = RateLimiter(rate_per_s=1, burst=2)
    first, second, warm = (new_client(alice.token(["predict"])) for _ in range(3))
    url = f"/api/v1/models/{model_id}/predict"
    image = [("files", ("a.png", grey_png(40, 1)))]
    assert warm.post(url, files=image).status_code == 200
    assert [first.post(url, files=image).status_code for _ in range(2)] == [200, 200]
    limited = first.post(url, files=image)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["code"] == "rate_limited"
    assert second.post(url, files=image).status_code == 200  # per token
    time.sleep(1.1)
    assert first.post(url, files=image).status_code == 200  # and it recovers
    app.state.usage_recorder.flush()
    with app.state.session_factory() as db:
        rows = db.query(UsageRecord).filter(UsageRecord.route == "/api/v1/models/{model_id}/predict").all()
    assert sorted(r.status for r in rows) == [200, 200, 200, 200, 200, 429]  # every call recorded, once


def test_monthly_quota_counts_images(app, alice: Account, model_id: str, new_client) -> None:
    add_version(app, model_id)
    app.state.settings.predict_monthly_images_per_user = 3
    url = f"/api/v1/models/{model_id}/predict"
    two = [("files", (f"{i}.png", grey_png(40, i))) for i in range(2)]
    assert alice.client.post(url, files=two).status_code == 200  # the web app's calls count too
    app.state.usage_recorder.flush()
    app.state.monthly_quota.forget(alice.id)
    program = new_client(alice.token(["predict"]))
    assert program.post(url, files=two).status_code == 200  # 2 used < 3: allowed
    app.state.usage_recorder.flush()
    app.state.monthly_quota.forget(alice.id)
    refused = program.post(url, files=two)
    assert refused.status_code == 429 and refused.json()["code"] == "monthly_quota"
    assert int(refused.headers["Retry-After"]) > 0


def test_http_predictions_equal_in_process_onnx_outputs(app, alice: Account, model_id: str) -> None:
    add_version(app, model_id)
    images = [grey_png(level, 40 + i) for i, level in enumerate((30, 90, 150, 220))]
    answer = alice.client.post(f"/api/v1/models/{model_id}/predict", params={"top_k": 2},
                               files=[("files", (f"{i}.png", data)) for i, data in enumerate(images)]).json()
    model = load_model(dark_bright_onnx())
    pixels = np.stack([pixels_for(model, data, ImageLimits()) for data in images])
    # The exported file alone, in plain ONNX Runtime, with the caution in its metadata: it refuses exactly the
    # images the service refuses.
    session = ort.InferenceSession(dark_bright_onnx(), providers=["CPUExecutionProvider"])
    probs, familiar = session.run(["probabilities", "familiarity"], {"pixels": pixels})
    caution = float(session.get_modelmeta().custom_metadata_map["pigeonhole.threshold"])
    for row, fam, prediction in zip(probs, familiar, answer["predictions"], strict=True):
        by_label = {t["label"]: t["confidence"] for t in prediction["top"]}
        for label, p in zip(model.classes, row, strict=True):
            assert abs(by_label[label] - float(p)) <= 1e-6
        assert abs(prediction["familiarity"] - float(fam)) <= 1e-6
        assert (prediction["label"] is None) == (float(fam) < caution)
    # a stricter caution than the version's refuses more, through the same rule
    strict = alice.client.post(f"/api/v1/models/{model_id}/predict", params={"threshold": 0.999},
                               files=[("files", (f"{i}.png", data)) for i, data in enumerate(images)]).json()
    assert [p["label"] is None for p in strict["predictions"]] == [float(f) < 0.999 for f in familiar]


def test_status_reads_training_while_the_job_runs(app, alice: Account, model_id: str) -> None:
    job_id = alice.client.get(f"/api/v1/models/{model_id}").json()["job_id"]
    with app.state.session_factory() as db, db.begin():
        db.get(Job, job_id).status = "running"
    assert alice.client.get(f"/api/v1/models/{model_id}").json()["status"] == "training"
    assert alice.client.get("/api/v1/models").json()["items"][0]["status"] == "training"
    add_version(app, model_id)
    assert alice.client.get(f"/api/v1/models/{model_id}").json()["status"] == "ready"
