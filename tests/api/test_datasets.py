"""Datasets: create, list, inspect, rename; classes and images; health in plain words."""

from __future__ import annotations

import hashlib

import pytest

from pigeonhole.datasets.splits import MIN_FOR_TEST, MIN_FOR_VALIDATION, assign_split, hash_split
from tests.api.conftest import Account
from tests.api.datasets_helpers import all_images, upload
from tests.factories import jpeg_bytes, make_zip, png_bytes


@pytest.fixture
def dataset_id(alice: Account) -> str:
    response = alice.client.post("/api/v1/datasets", json={"name": "Pets"})
    assert response.status_code == 201
    return response.json()["id"]


def test_create_list_get_rename_delete(alice: Account, dataset_id: str) -> None:
    detail = alice.client.get(f"/api/v1/datasets/{dataset_id}").json()
    assert detail["name"] == "Pets" and detail["classes"] == [] and detail["image_count"] == 0
    assert not detail["health"]["ready_to_train"] and "empty" in detail["health"]["messages"][0]
    upload(alice, dataset_id, [("a.png", png_bytes(seed=1)), ("b.png", png_bytes(seed=2))], label="cats")
    listed = alice.client.get("/api/v1/datasets").json()["items"]
    assert [(d["id"], d["image_count"], d["class_count"]) for d in listed] == [(dataset_id, 2, 1)]
    renamed = alice.client.patch(f"/api/v1/datasets/{dataset_id}", json={"name": " Garden pets "})
    assert renamed.json()["name"] == "Garden pets"
    assert alice.client.post("/api/v1/datasets", json={"name": "   "}).status_code == 422
    assert alice.client.delete(f"/api/v1/datasets/{dataset_id}").status_code == 204
    assert alice.client.get(f"/api/v1/datasets/{dataset_id}").status_code == 404
    assert alice.client.get("/api/v1/datasets").json()["items"] == []


def test_upload_single_images_and_zip_with_class_folders(alice: Account, dataset_id: str) -> None:
    single = upload(alice, dataset_id, [("x.jpg", jpeg_bytes(seed=1)), ("y.png", png_bytes(seed=2))], label="dogs")
    assert single.status_code == 201 and single.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    archive = make_zip({"photos/cats/1.png": png_bytes(seed=3), "photos/cats/2.png": png_bytes(seed=4),
                        "photos/birds/1.jpg": jpeg_bytes(seed=5), "__MACOSX/photos/._1.png": b"junk",
                        "photos/.DS_Store": b"junk", "photos/Thumbs.db": b"junk"})
    zipped = upload(alice, dataset_id, [("photos.zip", archive)])
    assert zipped.json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    classes = alice.client.get(f"/api/v1/datasets/{dataset_id}").json()["classes"]
    assert classes == [{"name": "birds", "count": 1}, {"name": "cats", "count": 2}, {"name": "dogs", "count": 2}]


def test_duplicates_and_label_conflicts(alice: Account, dataset_id: str) -> None:
    image = png_bytes(seed=7)
    first = upload(alice, dataset_id, [("a.png", image), ("again.png", image)], label="cats")
    assert first.json()["accepted"] == 1 and first.json()["duplicates"] == 1
    assert upload(alice, dataset_id, [("a.png", image)], label="cats").json()["duplicates"] == 1
    other_class = upload(alice, dataset_id, [("a.png", image)], label="dogs")
    assert other_class.json()["accepted"] == 1  # same image in two classes: stored, flagged in health
    health = alice.client.get(f"/api/v1/datasets/{dataset_id}").json()["health"]
    assert health["label_conflicts"] == 1
    assert any("more than one class" in m for m in health["messages"])


def test_health_report_in_plain_words(alice: Account, dataset_id: str) -> None:
    upload(alice, dataset_id, [(f"c{i}.png", png_bytes(seed=100 + i)) for i in range(25)], label="cats")
    upload(alice, dataset_id, [(f"d{i}.png", png_bytes(seed=200 + i)) for i in range(2)], label="dogs")
    health = alice.client.get(f"/api/v1/datasets/{dataset_id}").json()["health"]
    assert health["below_minimum"] == ["dogs"] and not health["ready_to_train"]
    assert "Class 'dogs' has only 2 image(s); add at least 3 more to train." in health["messages"]
    assert health["imbalance_ratio"] == 12.5
    assert any("unbalanced" in m for m in health["messages"])
    upload(alice, dataset_id, [(f"e{i}.png", png_bytes(seed=300 + i)) for i in range(3)], label="dogs")
    health = alice.client.get(f"/api/v1/datasets/{dataset_id}").json()["health"]
    assert health["ready_to_train"] and health["below_recommended"] == ["dogs"]


def test_rename_move_and_delete_classes_and_images(alice: Account, dataset_id: str) -> None:
    upload(alice, dataset_id, [(f"c{i}.png", png_bytes(seed=i)) for i in range(3)], label="cats")
    upload(alice, dataset_id, [("d.png", png_bytes(seed=50))], label="dogs")
    base = f"/api/v1/datasets/{dataset_id}"
    renamed = alice.client.patch(f"{base}/classes/cats", json={"name": "kittens"})
    assert {c["name"] for c in renamed.json()["classes"]} == {"kittens", "dogs"}
    assert alice.client.patch(f"{base}/classes/kittens", json={"name": "dogs"}).status_code == 409
    assert alice.client.patch(f"{base}/classes/nope", json={"name": "x"}).status_code == 404
    assert alice.client.patch(f"{base}/classes/kittens", json={"name": "a/b"}).status_code == 422

    kitten = all_images(alice, dataset_id)[-1]
    assert kitten["label"] == "kittens"
    moved = alice.client.patch(f"{base}/images/{kitten['id']}", json={"label": "dogs"})
    assert moved.status_code == 200 and moved.json()["label"] == "dogs"
    assert len(all_images(alice, dataset_id)) == 4
    dogs = alice.client.get(f"{base}/images", params={"label": "dogs"}).json()["items"]
    assert len(dogs) == 2 and {i["label"] for i in dogs} == {"dogs"}

    assert alice.client.delete(f"{base}/images/{kitten['id']}").status_code == 204
    assert alice.client.delete(f"{base}/images/{kitten['id']}").status_code == 404
    assert alice.client.delete(f"{base}/classes/kittens").status_code == 204
    assert alice.client.get(base).json()["classes"] == [{"name": "dogs", "count": 1}]


def test_thumbnails_are_small_previews(alice: Account, dataset_id: str) -> None:
    from io import BytesIO

    from PIL import Image

    upload(alice, dataset_id, [("big.jpg", jpeg_bytes(640, 480, seed=1))], label="cats")
    image = all_images(alice, dataset_id)[0]
    response = alice.client.get(image["thumbnail_url"])
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/")
    assert max(Image.open(BytesIO(response.content)).size) == 128


def test_splits_are_deterministic_and_small_classes_get_validation() -> None:
    sha = "ab" * 32
    assert hash_split(sha) == hash_split(sha)
    counts = {s: 0 for s in ("train", "val", "test")}
    for i in range(2000):
        counts[hash_split(hashlib.sha256(str(i).encode()).hexdigest())] += 1
    assert 1500 < counts["train"] < 1700 and 140 < counts["val"] < 260 and 140 < counts["test"] < 260
    train_sha = "00000000" + "0" * 56  # hashes into train
    test_sha = "ff" * 32  # hashes into test
    assert assign_split(train_sha, class_count_before=MIN_FOR_VALIDATION - 1, class_has_val=False,
                        class_has_test=False) == "val"
    assert assign_split(train_sha, class_count_before=MIN_FOR_VALIDATION - 1, class_has_val=True,
                        class_has_test=True) == "train"
    assert assign_split(train_sha, class_count_before=1, class_has_val=False, class_has_test=False) == "train"
    # A test image is never taken for validation: the next training image is.
    assert assign_split(test_sha, class_count_before=MIN_FOR_VALIDATION - 1, class_has_val=False,
                        class_has_test=False) == "test"
    assert assign_split(train_sha, class_count_before=MIN_FOR_TEST - 1, class_has_val=True,
                        class_has_test=False) == "test"
    assert assign_split(train_sha, class_count_before=MIN_FOR_TEST - 1, class_has_val=True,
                        class_has_test=True) == "train"


def test_every_class_of_six_or_more_has_validation_and_test_images(alice: Account, dataset_id: str) -> None:
    upload(alice, dataset_id, [(f"c{i}.png", png_bytes(seed=400 + i)) for i in range(5)], label="cats")
    splits = [i["split"] for i in all_images(alice, dataset_id)]
    assert "val" in splits
    upload(alice, dataset_id, [("c5.png", png_bytes(seed=405))], label="cats")
    splits = [i["split"] for i in all_images(alice, dataset_id)]
    assert "test" in splits and "val" in splits
    before = {i["id"]: i["split"] for i in all_images(alice, dataset_id)}
    upload(alice, dataset_id, [(f"n{i}.png", png_bytes(seed=500 + i)) for i in range(10)], label="cats")
    after = {i["id"]: i["split"] for i in all_images(alice, dataset_id)}
    assert all(after[k] == v for k, v in before.items())  # adding images never reshuffles
