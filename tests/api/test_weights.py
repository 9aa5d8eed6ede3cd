"""The server's pretrained extractors as the admin page and a dataset's health report show them."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from pigeonhole.api.app import create_app
from pigeonhole.extractors import NO_EXTRACTOR_MESSAGE
from pigeonhole.settings import Settings
from tests.api.conftest import Account


def test_the_admin_sees_what_is_present_missing_and_how_to_get_it(admin: Account, alice: Account) -> None:
    answer = admin.client.get("/api/v1/admin/weights")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    rows = {r["name"]: r for r in body["items"]}
    lite = rows["efficientnet_lite0-imagenet"]
    assert lite["present"] and lite["origin"] == "package" and lite["size_bytes"] == 18_826_032
    assert lite["license"] == "Apache-2.0" and lite["how_to_get"] is None
    dino = rows["dinov2_vits14"]
    assert not dino["present"] and dino["origin"] == "publisher" and dino["recommended"]
    assert "pigeonhole weights fetch dinov2_vits14" in dino["how_to_get"]
    assert body["fetch_allowed"] is False  # the tests' environment says so (PIGEONHOLE_WEIGHTS_FETCH=false)
    assert body["items"][0]["present"]  # present ones first
    assert alice.client.get("/api/v1/admin/weights").status_code == 403


def test_fetching_is_on_for_the_embedded_install_and_off_in_production(monkeypatch) -> None:
    monkeypatch.delenv("PIGEONHOLE_WEIGHTS_FETCH")
    assert Settings().resolved_weights_fetch is True
    assert Settings(env="production", secret_key="x" * 40).resolved_weights_fetch is False
    assert Settings(env="production", secret_key="x" * 40, weights_fetch=True).resolved_weights_fetch is True


def test_a_datasets_health_report_names_the_extractors_or_says_there_is_none(
    alice: Account, settings: Settings, new_client: Callable[..., TestClient]
) -> None:
    dataset = alice.client.post("/api/v1/datasets", json={"name": "birds"}).json()
    assert any("EfficientNet-Lite0" in t for t in dataset["health"]["pretrained_extractors"])
    assert NO_EXTRACTOR_MESSAGE not in dataset["health"]["messages"]

    bare = settings.model_copy(update={"builtin_weights": False})  # only weights.json, and it has none
    with TestClient(create_app(bare)) as client:
        token = alice.token()
        health = client.get(f"/api/v1/datasets/{dataset['id']}",
                            headers={"Authorization": f"Bearer {token}"}).json()["health"]
    assert health["pretrained_extractors"] == [] and NO_EXTRACTOR_MESSAGE in health["messages"]


def test_a_model_built_without_a_pretrained_extractor_says_so_on_the_model_and_the_version(
    app, alice: Account
) -> None:
    from pigeonhole.learn.planner import NO_PRETRAINED
    from tests.api.models_helpers import add_version, trainable_dataset

    dataset_id = trainable_dataset(alice)
    model_id = alice.client.post("/api/v1/models", json={"name": "Shades", "dataset_id": dataset_id}).json()["id"]
    add_version(app, model_id, lineage={"extractor": {"id": "smallcnn_rgb", "pretrained": False, "weights": None},
                                        "notes": [NO_PRETRAINED]})
    model = alice.client.get(f"/api/v1/models/{model_id}").json()
    assert model["notes"] == [NO_PRETRAINED]
    version = alice.client.get(f"/api/v1/models/{model_id}/versions/1").json()
    assert version["pretrained"] is False and version["notes"] == [NO_PRETRAINED]
    add_version(app, model_id, lineage={"extractor": {"id": "efficientnet_lite0", "pretrained": True}, "notes": []})
    assert alice.client.get(f"/api/v1/models/{model_id}").json()["notes"] == []
    assert alice.client.get(f"/api/v1/models/{model_id}/versions/2").json()["pretrained"] is True
