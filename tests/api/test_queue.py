"""The labelling queue through the API: images waiting for a label, ordered with a model's version."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tests.api.conftest import Account
from tests.api.datasets_helpers import upload
from tests.api.models_helpers import add_version, run_job
from tests.model_factories import grey_png


def test_the_queue_puts_what_the_model_doubts_first_and_follows_the_labelling(app, alice: Account, bob: Account,
                                                                              tmp_path: Path) -> None:
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "shades"}).json()["id"]
    upload(alice, dataset_id, [(f"d{i}.png", grey_png(40, i)) for i in range(6)], label="dark")
    upload(alice, dataset_id, [(f"b{i}.png", grey_png(210, 100 + i)) for i in range(6)], label="bright")
    waiting = [(f"sure{i}.png", grey_png(30 if i % 2 else 220, 700 + i)) for i in range(6)]
    waiting += [(f"mid{i}.png", grey_png(level, 800 + i)) for i, level in enumerate((118, 125, 132, 139))]
    alice.client.post(f"/api/v1/datasets/{dataset_id}/uploads", data={"unlabelled": "true"},
                      files=[("files", (n, b, "image/png")) for n, b in waiting])
    model_id = alice.client.post("/api/v1/models", json={"name": "m", "dataset_id": dataset_id}).json()["id"]
    add_version(app, model_id, growable=True)
    url = f"/api/v1/datasets/{dataset_id}/queue"
    assert alice.client.get(url, params={"model_id": model_id}).json()["state"] == "none"
    job = alice.client.post(url, json={"model_id": model_id}).json()
    assert job["kind"] == "queue" and alice.client.post(url, json={"model_id": model_id}).json()["id"] == job["id"]
    run_job(app, job["id"], tmp_path)

    page = alice.client.get(url, params={"model_id": model_id}).json()
    assert page["state"] == "ready" and page["waiting"] == 10 and not page["stale"]
    names = {p["id"]: p["original_name"] for p in
             alice.client.get(f"/api/v1/datasets/{dataset_id}/pool", params={"limit": 100}).json()["items"]}
    ranked = [names[i["pool_id"]] for i in page["items"]]
    assert sorted(ranked) == sorted(n for n, _ in waiting)
    doubts = [i["uncertainty"] for i in page["items"]]
    assert doubts[0] == max(doubts) and ranked[0].startswith("mid"), "the image the model doubts most comes first"
    for item in page["items"]:  # the doubt is the gap between the two likeliest classes
        gap = item["guesses"][0]["confidence"] - item["guesses"][1]["confidence"]
        assert abs(item["uncertainty"] - (1 - gap)) < 1e-3
    first = page["items"][0]
    assert [g["label"] for g in first["guesses"]] in (["dark", "bright"], ["bright", "dark"])
    assert alice.client.get(first["thumbnail_url"]).status_code == 200

    # labelling takes an image out of the queue; the CSV export has the rest in order
    assert alice.client.post(f"/api/v1/datasets/{dataset_id}/pool/{first['pool_id']}/label",
                             json={"label": first["guesses"][0]["label"]}).status_code == 201
    after = alice.client.get(url, params={"model_id": model_id, "limit": 4}).json()
    assert first["pool_id"] not in [i["pool_id"] for i in after["items"]] and after["next_cursor"] == "4"
    exported = alice.client.get(f"{url}/export", params={"model_id": model_id})
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert exported.headers["content-type"].startswith("text/csv") and len(rows) == 9
    assert [r["pool_id"] for r in rows[:4]] == [i["pool_id"] for i in after["items"]]

    # new waiting images make the ordering stale; other users see nothing
    alice.client.post(f"/api/v1/datasets/{dataset_id}/uploads", data={"unlabelled": "true"},
                      files=[("files", ("late.png", grey_png(128, 900), "image/png"))])
    assert alice.client.get(url, params={"model_id": model_id}).json()["stale"]
    assert bob.client.get(url, params={"model_id": model_id}).status_code == 404
