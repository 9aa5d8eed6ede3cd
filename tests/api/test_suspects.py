"""Suspected mislabels through the API: a check with a model's version, the ranked list, and the owner's decisions."""

from __future__ import annotations

from pathlib import Path

from tests.api.conftest import Account
from tests.api.datasets_helpers import upload
from tests.api.models_helpers import add_version, run_job
from tests.model_factories import grey_png


def _dataset_with_mistakes(owner: Account) -> str:
    """Dark and bright images, 8 of each, plus one dark image labelled "bright", and one bright image uploaded into
    both classes."""
    dataset_id = owner.client.post("/api/v1/datasets", json={"name": "shades"}).json()["id"]
    upload(owner, dataset_id, [(f"d{i}.png", grey_png(40, i)) for i in range(8)], label="dark")
    upload(owner, dataset_id, [(f"b{i}.png", grey_png(210, 100 + i)) for i in range(8)]
           + [("wrong.png", grey_png(35, 500))], label="bright")
    upload(owner, dataset_id, [("twice.png", grey_png(210, 100))], label="dark")  # same bytes as b0.png
    return dataset_id


def _image_ids(owner: Account, dataset_id: str) -> dict[tuple[str, str], str]:
    items = owner.client.get(f"/api/v1/datasets/{dataset_id}/images", params={"limit": 100}).json()["items"]
    return {(i["original_name"], i["label"]): i["id"] for i in items}


def test_a_check_flags_the_wrong_labels_and_remembers_decisions(app, alice: Account, bob: Account,
                                                                 tmp_path: Path) -> None:
    dataset_id = _dataset_with_mistakes(alice)
    model_id = alice.client.post("/api/v1/models", json={"name": "m", "dataset_id": dataset_id}).json()["id"]
    url = f"/api/v1/datasets/{dataset_id}/suspects"
    assert alice.client.post(url, json={"model_id": model_id}).json()["code"] == "no_version"
    add_version(app, model_id, growable=True)
    assert alice.client.get(url, params={"model_id": model_id}).json()["state"] == "none"

    started = alice.client.post(url, json={"model_id": model_id})
    assert started.status_code == 202 and started.json()["kind"] == "suspects"
    again = alice.client.post(url, json={"model_id": model_id})
    assert again.json()["id"] == started.json()["id"], "a check under way is not started twice"
    assert alice.client.get(url, params={"model_id": model_id}).json()["state"] == "checking"
    result = run_job(app, started.json()["id"], tmp_path)
    assert result["images"] == 18

    page = alice.client.get(url, params={"model_id": model_id}).json()
    assert page["state"] == "ready" and page["images_checked"] == 18 and not page["stale"]
    ids = _image_ids(alice, dataset_id)
    items = page["items"]
    # the same bytes in two classes first (both copies), then the dark image labelled "bright"
    assert {(i["image_id"], i["conflict"]) for i in items[:2]} == {(ids[("b0.png", "bright")], True),
                                                                    (ids[("twice.png", "dark")], True)}
    wrong = next(i for i in items if i["image_id"] == ids[("wrong.png", "bright")])
    assert wrong["label"] == "bright" and wrong["suggested_label"] == "dark" and not wrong["conflict"]
    assert wrong["confidence"] > wrong["label_probability"]
    assert alice.client.get(wrong["thumbnail_url"]).status_code == 200
    assert len(items) <= 5, "clean images are not flagged"

    # decisions: keep a label, move an image, delete one: each drops out of the list
    kept = alice.client.post(f"/api/v1/datasets/{dataset_id}/images/{ids[('b0.png', 'bright')]}/keep-label")
    assert kept.status_code == 200 and kept.json()["label_kept"] is True
    moved = alice.client.patch(f"/api/v1/datasets/{dataset_id}/images/{wrong['image_id']}", json={"label": "dark"})
    assert moved.json()["label"] == "dark" and moved.json()["label_kept"] is False
    assert alice.client.delete(f"/api/v1/datasets/{dataset_id}/images/{ids[('twice.png', 'dark')]}"
                               ).status_code == 204
    page = alice.client.get(url, params={"model_id": model_id}).json()
    left = {i["image_id"] for i in page["items"]}
    assert not left & {ids[("b0.png", "bright")], wrong["image_id"], ids[("twice.png", "dark")]}
    assert page["stale"], "the dataset changed since the check"

    # another user sees neither the dataset nor the model, and a reader token may look but not start a check
    assert bob.client.get(url, params={"model_id": model_id}).status_code == 404
    bob_dataset = bob.client.post("/api/v1/datasets", json={"name": "b"}).json()["id"]
    assert bob.client.get(f"/api/v1/datasets/{bob_dataset}/suspects", params={"model_id": model_id}
                          ).status_code == 404
    assert bob.client.post(f"/api/v1/datasets/{bob_dataset}/suspects", json={"model_id": model_id}
                           ).status_code == 404


def test_paging_and_bad_requests(app, alice: Account, new_client, tmp_path: Path) -> None:
    dataset_id = _dataset_with_mistakes(alice)
    model_id = alice.client.post("/api/v1/models", json={"name": "m", "dataset_id": dataset_id}).json()["id"]
    add_version(app, model_id, growable=True)
    url = f"/api/v1/datasets/{dataset_id}/suspects"
    run_job(app, alice.client.post(url, json={"model_id": model_id}).json()["id"], tmp_path)
    everything = alice.client.get(url, params={"model_id": model_id}).json()["items"]
    first = alice.client.get(url, params={"model_id": model_id, "limit": 1}).json()
    second = alice.client.get(url, params={"model_id": model_id, "limit": 1, "cursor": first["next_cursor"]}).json()
    assert [i["image_id"] for i in first["items"] + second["items"]] == [i["image_id"] for i in everything[:2]]
    assert alice.client.get(url).status_code == 422  # which model: required
    assert alice.client.get(url, params={"model_id": "nope"}).status_code == 404
    assert alice.client.post(url, json={}).status_code == 422
    reader = new_client(alice.token(["read"]))
    assert reader.get(url, params={"model_id": model_id}).status_code == 200
    assert reader.post(url, json={"model_id": model_id}).status_code == 403
    no_head = alice.client.post("/api/v1/models", json={"name": "old", "dataset_id": dataset_id}).json()["id"]
    add_version(app, no_head)  # a version made before heads were kept
    refused = alice.client.post(url, json={"model_id": no_head})
    assert refused.status_code == 422 and "Retrain" in refused.json()["detail"]


def test_results_lost_from_the_store_read_as_never_checked(app, alice: Account, tmp_path: Path) -> None:
    dataset_id = _dataset_with_mistakes(alice)
    model_id = alice.client.post("/api/v1/models", json={"name": "m", "dataset_id": dataset_id}).json()["id"]
    add_version(app, model_id, growable=True)
    url = f"/api/v1/datasets/{dataset_id}/suspects"
    result = run_job(app, alice.client.post(url, json={"model_id": model_id}).json()["id"], tmp_path)
    app.state.blob_store.delete_key(result["key"])
    assert alice.client.get(url, params={"model_id": model_id}).json() == {
        **alice.client.get(url, params={"model_id": model_id}).json(), "state": "none", "items": []}
