"""``pigeonhole doctor`` finds and repairs disagreements between the database and the blob store."""

from __future__ import annotations

import io

from pigeonhole.db.tables import ModelVersion
from pigeonhole.doctor import check
from tests.api.conftest import Account
from tests.api.datasets_helpers import all_images, snapshot, upload
from tests.api.models_helpers import add_version, trainable_dataset
from tests.factories import png_bytes


def test_doctor_reports_then_repairs(app, alice: Account) -> None:
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "d"}).json()["id"]
    upload(alice, dataset_id, [(f"{i}.png", png_bytes(seed=i)) for i in range(3)], label="a")
    blobs = app.state.blob_store
    lost = all_images(alice, dataset_id)[0]
    blobs.delete(lost["sha256"])  # a file lost behind the database's back
    orphan = blobs.put_stream(io.BytesIO(png_bytes(seed=99)))  # a file nothing references
    model_id = alice.client.post("/api/v1/models", json={"name": "m", "dataset_id": trainable_dataset(alice)}
                                 ).json()["id"]
    add_version(app, model_id)
    add_version(app, model_id)
    with app.state.session_factory() as db:
        old = db.query(ModelVersion).filter_by(model_id=model_id, v=1).one()
        blobs.delete_key(old.onnx_key)

    report = check(app.state.session_factory, blobs, fix=False, grace_s=0)
    assert report.missing_images == [lost["id"]] and report.broken_versions == [(model_id, 1, False)]
    assert not report.healthy and "Run with --fix" in report.lines()[-1]

    repaired = check(app.state.session_factory, blobs, fix=True, grace_s=0)
    assert repaired.orphan_blobs_deleted >= 1 and not blobs.exists(orphan.sha256)
    assert len(all_images(alice, dataset_id)) == 2 and snapshot(alice, dataset_id)
    assert [v["v"] for v in alice.client.get(f"/api/v1/models/{model_id}/versions").json()["items"]] == [2]
    assert check(app.state.session_factory, blobs, fix=False, grace_s=0).healthy
