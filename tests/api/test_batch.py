"""Batch prediction: a zip of images classified by a job, results as CSV and JSON."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tests.api.conftest import Account
from tests.api.models_helpers import add_version, run_job, trainable_dataset
from tests.factories import make_zip
from tests.model_factories import grey_png


def test_batch_prediction_of_a_zip(app, alice: Account, bob: Account, tmp_path: Path) -> None:
    model_id = alice.client.post("/api/v1/models", json={"name": "m", "dataset_id": trainable_dataset(alice)}
                                 ).json()["id"]
    url = f"/api/v1/models/{model_id}/batch-predictions"
    assert alice.client.post(url, files={"file": ("a.zip", make_zip({}), "application/zip")}).json()["code"] == \
        "no_version"
    add_version(app, model_id)
    archive = make_zip({"photos/dark1.png": grey_png(40, 1), "photos/deep/bright1.png": grey_png(210, 2),
                        "photos/dark2.png": grey_png(45, 3), "photos/notes.png": b"not an image"})
    queued = alice.client.post(url, files={"file": ("photos.zip", archive, "application/zip")})
    assert queued.status_code == 202 and queued.json()["kind"] == "batch-predict"
    job_id = queued.json()["id"]
    assert alice.client.get(f"{url}/{job_id}").json()["code"] == "not_finished"
    result = run_job(app, job_id, tmp_path)
    assert result["images"] == 4 and result["errors"] == 1

    as_json = alice.client.get(f"{url}/{job_id}", params={"format": "json"}).json()
    labels = {p["name"].rsplit("/", 1)[-1]: p["label"] for p in as_json["predictions"]}
    assert labels == {"dark1.png": "dark", "bright1.png": "bright", "dark2.png": "dark", "notes.png": None}
    as_csv = alice.client.get(f"{url}/{job_id}")
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert len(rows) == 4 and any(r["error"] for r in rows)
    assert bob.client.get(f"{url}/{job_id}").status_code == 404
    assert alice.client.post(url).json()["code"] == "no_images"
