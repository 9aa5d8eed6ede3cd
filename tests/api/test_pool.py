"""The to-label pool: images uploaded without a label wait apart from the dataset until someone labels them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from pigeonhole.datasets.service import BlobSweeper
from tests.api.conftest import Account
from tests.api.datasets_helpers import upload
from tests.factories import make_zip, png_bytes


def _pool(owner: Account, dataset_id: str) -> list[dict]:
    return owner.client.get(f"/api/v1/datasets/{dataset_id}/pool", params={"limit": 100}).json()["items"]


def test_unlabelled_uploads_wait_apart_and_join_the_dataset_when_labelled(app, alice: Account, bob: Account) -> None:
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "later"}).json()["id"]
    upload(alice, dataset_id, [("known.png", png_bytes(seed=1))], label="cats")
    url = f"/api/v1/datasets/{dataset_id}/uploads"
    files = [("files", (f"p{i}.png", png_bytes(seed=10 + i), "image/png")) for i in range(3)]
    files += [("files", ("same.png", png_bytes(seed=10), "image/png")),  # the same bytes twice: a duplicate
              ("files", ("known-again.png", png_bytes(seed=1), "image/png")),  # already labelled: a duplicate
              ("files", ("photos.zip", make_zip({"dogs/z.png": png_bytes(seed=20)}), "application/zip"))]
    result = alice.client.post(url, data={"unlabelled": "true"}, files=files).json()
    assert (result["accepted"], result["duplicates"], result["rejected"]) == (4, 2, [])
    refused = alice.client.post(url, data={"unlabelled": "true", "label": "cats"}, files=files[:1])
    assert refused.status_code == 422 and "leave out" in refused.json()["detail"]

    waiting = _pool(alice, dataset_id)
    assert len(waiting) == 4 and {w["source"] for w in waiting} == {"upload"}
    detail = alice.client.get(f"/api/v1/datasets/{dataset_id}").json()
    assert detail["image_count"] == 1 and [c["name"] for c in detail["classes"]] == ["cats"]  # the zip's folder
    assert alice.client.get(waiting[0]["thumbnail_url"]).status_code == 200
    assert alice.client.get(waiting[0]["content_url"]).content[:4] == b"\x89PNG"

    first = waiting[0]
    labelled = alice.client.post(f"/api/v1/datasets/{dataset_id}/pool/{first['id']}/label", json={"label": " dogs "})
    assert labelled.status_code == 201 and labelled.json()["label"] == "dogs"
    assert labelled.json()["sha256"] == first["sha256"] and labelled.json()["split"] in ("train", "val", "test")
    assert len(_pool(alice, dataset_id)) == 3
    again = alice.client.post(f"/api/v1/datasets/{dataset_id}/pool/{first['id']}/label", json={"label": "cats"})
    assert again.status_code == 404 and "someone has labelled or removed it" in again.json()["detail"]
    assert alice.client.post(f"/api/v1/datasets/{dataset_id}/pool/{waiting[1]['id']}/label",
                             json={"label": "  "}).status_code == 422
    assert alice.client.delete(f"/api/v1/datasets/{dataset_id}/pool/{waiting[1]['id']}").status_code == 204
    assert len(_pool(alice, dataset_id)) == 2
    counts = {c["name"]: c["count"] for c in alice.client.get(f"/api/v1/datasets/{dataset_id}").json()["classes"]}
    assert counts == {"cats": 1, "dogs": 1}

    # the files of waiting images are kept by the sweep of unreferenced files
    BlobSweeper(app.state.session_factory, app.state.blob_store, grace_s=0).run()
    for w in _pool(alice, dataset_id):
        assert alice.client.get(w["content_url"]).status_code == 200

    # another user sees none of it
    assert bob.client.get(f"/api/v1/datasets/{dataset_id}/pool").status_code == 404
    assert bob.client.post(f"/api/v1/datasets/{dataset_id}/pool/{waiting[2]['id']}/label",
                           json={"label": "x"}).status_code == 404


def test_two_people_labelling_one_image_at_once_add_it_once(app, alice: Account, new_client) -> None:
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "race"}).json()["id"]
    alice.client.post(f"/api/v1/datasets/{dataset_id}/uploads", data={"unlabelled": "true"},
                      files=[("files", ("p.png", png_bytes(seed=3), "image/png"))])
    pool_id = _pool(alice, dataset_id)[0]["id"]
    tokens = [new_client(alice.token(["read", "write"])) for _ in range(2)]
    url = f"/api/v1/datasets/{dataset_id}/pool/{pool_id}/label"
    with ThreadPoolExecutor(2) as workers:
        answers = list(workers.map(lambda pair: pair[0].post(url, json={"label": pair[1]}).status_code,
                                   zip(tokens, ["cats", "dogs"], strict=True)))
    assert sorted(answers) == [201, 404], answers
    images = alice.client.get(f"/api/v1/datasets/{dataset_id}/images").json()["items"]
    assert len(images) == 1 and _pool(alice, dataset_id) == []
