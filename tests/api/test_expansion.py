"""Adding and removing classes: rules at the API, and the expand job's real work run in-process."""

from __future__ import annotations

import csv
import io
import threading
from pathlib import Path

import numpy as np
import pytest

from pigeonhole.db.tables import Job, Model, ModelVersion
from pigeonhole.ids import new_id
from pigeonhole.learn import head_file
from pigeonhole.learn.features import ImageItem, compute_features
from pigeonhole.learn.finish import LEFT_OUT
from pigeonhole.learn.grow import extractor_of
from pigeonhole.models.training import TrainHandler
from tests.api.conftest import Account
from tests.api.datasets_helpers import all_images, upload
from tests.api.growth_helpers import add_then_remove, left_out_head, reference_head, trained_like_version
from tests.api.models_helpers import add_version, run_job, trainable_dataset
from tests.factories import make_zip
from tests.model_factories import grey_png


@pytest.fixture
def grown_setup(alice: Account) -> tuple[str, str]:
    dataset_id = trainable_dataset(alice, per_class=8)
    upload(alice, dataset_id, [(f"m{i}.png", grey_png(128, 500 + i)) for i in range(8)], label="mid")
    upload(alice, dataset_id, [(f"f{i}.png", grey_png(128, 600 + i)) for i in range(2)], label="few")
    model = alice.client.post("/api/v1/models", json={"name": "m", "dataset_id": dataset_id,
                                                      "classes": ["dark", "bright"]}).json()
    return model["id"], dataset_id


def test_class_changes_are_checked(app, alice: Account, grown_setup: tuple[str, str]) -> None:
    model_id, _ = grown_setup
    url = f"/api/v1/models/{model_id}/classes"
    assert alice.client.post(url, json={"names": ["dark"]}).json()["code"] == "class_exists"
    assert alice.client.post(url, json={"names": ["zebra"]}).json()["code"] == "class_not_found"
    assert alice.client.post(url, json={"names": ["few"]}).json()["code"] == "too_few_images"
    assert alice.client.post(url, json={"names": []}).status_code == 422
    assert alice.client.delete(f"{url}/zebra").status_code == 404
    assert alice.client.delete(f"{url}/dark").json()["code"] == "too_few_classes"
    # before any version exists, only the wanted classes change (training will include them)
    pending = alice.client.post(url, json={"names": ["mid"]})
    assert pending.status_code == 202 and pending.json()["job_id"] is None


def test_adding_then_removing_a_class_makes_new_versions(app, alice: Account, grown_setup: tuple[str, str],
                                                         tmp_path: Path) -> None:
    model_id, _ = grown_setup
    add_version(app, model_id, growable=True)
    added = alice.client.post(f"/api/v1/models/{model_id}/classes", json={"names": ["mid"]})
    assert added.status_code == 202
    job_id = added.json()["job_id"]
    assert alice.client.get(f"/api/v1/jobs/{job_id}").json()["kind"] == "expand"
    run_job(app, job_id, tmp_path)

    model = alice.client.get(f"/api/v1/models/{model_id}").json()
    assert model["active_version"] == 2 and model["classes"] == ["dark", "bright", "mid"]
    v2 = alice.client.get(f"/api/v1/models/{model_id}/versions/2").json()
    assert v2["lineage"]["change"] == "added 'mid'" and v2["lineage"]["parent"] == 1
    assert "mid" in v2["metrics"]["per_class"]["classes"]
    files = [("files", ("m.png", grey_png(128, 999))), ("files", ("d.png", grey_png(40, 998)))]
    answer = alice.client.post(f"/api/v1/models/{model_id}/predict", files=files).json()
    assert answer["version"] == 2 and [p["top"][0]["label"] for p in answer["predictions"]] == ["mid", "dark"]

    removed = alice.client.delete(f"/api/v1/models/{model_id}/classes/bright")
    run_job(app, removed.json()["job_id"], tmp_path)
    model = alice.client.get(f"/api/v1/models/{model_id}").json()
    assert model["active_version"] == 3 and model["classes"] == ["dark", "mid"]
    assert alice.client.post(f"/api/v1/models/{model_id}/versions/1/activate").json()["classes"] == ["dark", "bright"]


def test_without_test_images_the_new_version_is_measured_on_validation_images(
        app, alice: Account, grown_setup: tuple[str, str], tmp_path: Path) -> None:
    """A small dataset may have no test image yet: the grown version still gets per-class figures (the
    new class included), measured on validation images and marked so, rather than none at all."""
    from sqlalchemy import update

    from pigeonhole.db.tables import DatasetImage

    model_id, dataset_id = grown_setup
    add_version(app, model_id, growable=True)
    with app.state.session_factory() as db, db.begin():
        db.execute(update(DatasetImage).where(DatasetImage.dataset_id == dataset_id, DatasetImage.split == "test")
                   .values(split="train"))
    added = alice.client.post(f"/api/v1/models/{model_id}/classes", json={"names": ["mid"]})
    run_job(app, added.json()["job_id"], tmp_path)
    metrics = alice.client.get(f"/api/v1/models/{model_id}/versions/2").json()["metrics"]
    assert metrics["split"] == "val"
    assert set(metrics["per_class"]["classes"]) == {"dark", "bright", "mid"}
    assert sum(c["support"] for c in metrics["per_class"]["classes"].values()) == sum(
        1 for i in all_images(alice, dataset_id) if i["split"] == "val" and i["label"] in ("dark", "bright", "mid"))


def _probs(alice: Account, model_id: str, v: int) -> list[list[float]]:
    files = [("files", (f"{i}.png", grey_png(level, 700 + i))) for i, level in enumerate((40, 128, 210, 90))]
    answer = alice.client.post(f"/api/v1/models/{model_id}/predict", params={"version": v, "top_k": 10},
                               files=files).json()
    return [sorted((t["label"], t["confidence"]) for t in p["top"]) for p in answer["predictions"]]


def test_add_then_remove_gives_back_the_original_predictions(app, alice: Account, grown_setup: tuple[str, str],
                                                             tmp_path: Path) -> None:
    model_id, _ = grown_setup
    add_version(app, model_id, growable=True)
    url = f"/api/v1/models/{model_id}/classes"
    # v2: the original, calibrated on the dataset's validation images like every grown version
    run_job(app, alice.client.post(url, json={"names": ["mid"]}).json()["job_id"], tmp_path)
    run_job(app, alice.client.delete(f"{url}/mid").json()["job_id"], tmp_path)  # v3
    run_job(app, alice.client.post(url, json={"names": ["mid"]}).json()["job_id"], tmp_path)  # v4
    run_job(app, alice.client.delete(f"{url}/mid").json()["job_id"], tmp_path)  # v5
    for original, again in ((3, 5), (2, 4)):
        for a, b in zip(_probs(alice, model_id, original), _probs(alice, model_id, again), strict=True):
            assert [label for label, _ in a] == [label for label, _ in b]
            assert max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True)) <= 1e-6


def test_a_class_added_during_training_is_in_the_jobs_final_version(app, alice: Account,
                                                                     grown_setup: tuple[str, str],
                                                                     tmp_path: Path) -> None:
    model_id, _ = grown_setup
    train_job = alice.client.get(f"/api/v1/models/{model_id}").json()["job_id"]
    # While the training runs (no version yet), the user adds a class: accepted at once.
    assert alice.client.post(f"/api/v1/models/{model_id}/classes", json={"names": ["mid"]}).status_code == 202
    # The search then hands over its candidate, trained on the classes it started with.
    v1 = add_version(app, model_id, growable=True, activate=False)
    with app.state.session_factory() as db:
        row = db.query(ModelVersion).filter_by(model_id=model_id, v=v1).one()
        event = {"type": "version", "version_id": "01bbbbbbbbbbbbbbbbbbbbbbbb", "classes": row.classes,
                 "metrics": row.metrics, "input": row.input_spec, "threshold": row.threshold,
                 "size_bytes": row.size_bytes, "keys": {"model": row.onnx_key, "head": row.head_key},
                 "lineage": {}}
    with app.state.session_factory() as db, db.begin():
        TrainHandler(app.state.settings).on_event(db, db.get(Job, train_job), event)
        model = db.get(Model, model_id)
        assert model.active_version is None  # not served with a class missing
    jobs = alice.client.get("/api/v1/jobs", params={"model_id": model_id}).json()["items"]
    expand = [j for j in jobs if j["kind"] == "expand"]
    assert len(expand) == 1 and [j["kind"] for j in jobs].count("train") == 1  # the training was not restarted
    run_job(app, expand[0]["id"], tmp_path)
    model = alice.client.get(f"/api/v1/models/{model_id}").json()
    assert model["classes"] == ["dark", "bright", "mid"] and model["active_version"] == 3


def _training_hands_over(app, model_id: str, train_job: str) -> None:  # type: ignore[no-untyped-def]
    """The running search reports a better candidate, trained on the classes it started with."""
    v = add_version(app, model_id, growable=True, activate=False)
    with app.state.session_factory() as db, db.begin():
        row = db.query(ModelVersion).filter_by(model_id=model_id, v=v).one()
        event = {"type": "version", "version_id": new_id(), "classes": row.classes, "metrics": row.metrics,
                 "input": row.input_spec, "threshold": row.threshold, "size_bytes": row.size_bytes,
                 "keys": {"model": row.onnx_key, "head": row.head_key}, "lineage": {}}
    with app.state.session_factory() as db, db.begin():
        TrainHandler(app.state.settings).on_event(db, db.get(Job, train_job), event)


def test_a_better_training_result_after_a_class_change_is_brought_up_to_date(
        app, alice: Account, grown_setup: tuple[str, str], tmp_path: Path) -> None:
    """The first candidate serves, the user adds a class (served at once), then the search finds a better
    candidate without it: that candidate gets the class too and serves. A slow change of an older
    candidate finishing last does not replace it."""
    model_id, dataset_id = grown_setup
    upload(alice, dataset_id, [(f"g{i}.png", grey_png(170, 800 + i)) for i in range(6)], label="grey")
    train_job = alice.client.get(f"/api/v1/models/{model_id}").json()["job_id"]
    add_version(app, model_id, growable=True)  # v1: the first candidate, serving
    run_job(app, alice.client.post(f"/api/v1/models/{model_id}/classes", json={"names": ["mid"]}).json()["job_id"],
            tmp_path)  # v2 = v1 + mid
    assert alice.client.get(f"/api/v1/models/{model_id}").json()["active_version"] == 2

    def expand_jobs() -> list[dict]:
        jobs = alice.client.get("/api/v1/jobs", params={"model_id": model_id}).json()["items"]
        return sorted((j for j in jobs if j["kind"] == "expand" and j["status"] == "queued"), key=lambda j: j["id"])

    _training_hands_over(app, model_id, train_job)  # v4 (v3 is the stored file of add_version): no 'mid'
    [older] = expand_jobs()
    _training_hands_over(app, model_id, train_job)  # an even better one arrives before that change ran
    newer = [j for j in expand_jobs() if j["id"] != older["id"]][0]
    run_job(app, newer["id"], tmp_path)
    model = alice.client.get(f"/api/v1/models/{model_id}").json()
    serving = alice.client.get(f"/api/v1/models/{model_id}/versions/{model['active_version']}").json()
    assert serving["classes"] == ["dark", "bright", "mid"]
    versions = alice.client.get(f"/api/v1/models/{model_id}/versions").json()["items"]
    newest_trained = max(v["v"] for v in versions if v["lineage"].get("change") == "trained")
    assert serving["lineage"]["source"] == newest_trained and serving["lineage"]["parent"] == newest_trained
    run_job(app, older["id"], tmp_path)  # the older candidate's change finishes last
    assert alice.client.get(f"/api/v1/models/{model_id}").json()["active_version"] == model["active_version"]
    jobs = alice.client.get("/api/v1/jobs", params={"model_id": model_id}).json()["items"]
    assert [j["kind"] for j in jobs].count("train") == 1


def test_concurrent_class_changes_are_serial_and_none_is_lost(app, alice: Account, grown_setup: tuple[str, str],
                                                              tmp_path: Path) -> None:
    model_id, dataset_id = grown_setup
    upload(alice, dataset_id, [(f"g{i}.png", grey_png(170, 800 + i)) for i in range(6)], label="grey")
    add_version(app, model_id, growable=True)
    answers: list[int] = []
    barrier = threading.Barrier(2)

    def add(name: str) -> None:
        barrier.wait()
        answers.append(alice.client.post(f"/api/v1/models/{model_id}/classes", json={"names": [name]}).status_code)

    threads = [threading.Thread(target=add, args=(n,)) for n in ("mid", "grey")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [202, 202]
    jobs = [j for j in alice.client.get("/api/v1/jobs", params={"model_id": model_id}).json()["items"]
            if j["kind"] == "expand"]
    for job in reversed(jobs):  # finish them in either order: the result converges on both classes
        run_job(app, job["id"], tmp_path)
    pending = [j for j in alice.client.get("/api/v1/jobs", params={"model_id": model_id}).json()["items"]
               if j["kind"] == "expand" and j["status"] == "queued"]
    for job in pending:
        run_job(app, job["id"], tmp_path)
    model = alice.client.get(f"/api/v1/models/{model_id}").json()
    assert sorted(model["classes"]) == ["bright", "dark", "grey", "mid"]
    versions = [v["v"] for v in alice.client.get(f"/api/v1/models/{model_id}/versions").json()["items"]]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)


def test_refresh_uses_new_images_of_existing_classes(app, alice: Account, grown_setup: tuple[str, str],
                                                     tmp_path: Path) -> None:
    model_id, dataset_id = grown_setup
    assert alice.client.post(f"/api/v1/models/{model_id}/refresh").json()["code"] == "no_version"
    add_version(app, model_id, growable=True)
    upload(alice, dataset_id, [(f"extra{i}.png", grey_png(35, 900 + i)) for i in range(6)], label="dark")
    job = alice.client.post(f"/api/v1/models/{model_id}/refresh", json={"classes": ["dark"]})
    assert job.status_code == 202
    run_job(app, job.json()["id"], tmp_path)
    version = alice.client.get(f"/api/v1/models/{model_id}/versions/2").json()
    assert version["lineage"]["change"] == "updated images of 'dark'"
    assert sorted(version["classes"]) == ["bright", "dark"]
    head_counts = version["metrics"]  # test metrics recomputed for the new version
    assert "accuracy" in head_counts
    assert alice.client.post(f"/api/v1/models/{model_id}/refresh", json={"classes": ["zebra"]}).status_code == 404


def test_on_a_small_set_growing_chooses_as_training_does_and_gives_back_the_original(
    app, alice: Account, grown_setup: tuple[str, str], tmp_path: Path
) -> None:
    """Training scores a small set's frozen candidates on every train+val image left out; a class change of such
    a version chooses ridge strength, temperature and threshold the same way, so it equals a refit, and adding
    a class then removing it gives back the user's original probabilities."""
    model_id, dataset_id = grown_setup
    trained_like_version(app, alice, model_id, dataset_id, left_out=True)
    rows_by_v, heads, model_bytes = add_then_remove(app, alice, model_id, "mid", tmp_path)  # v2, v3
    blobs = app.state.blob_store
    assert rows_by_v[2].metrics["val_measured_on"] == LEFT_OUT
    extractor = extractor_of(model_bytes)
    rows = [(i["sha256"], i["label"], i["split"], i["size_bytes"]) for i in all_images(alice, dataset_id)]
    reference = left_out_head(blobs, extractor, rows, ["dark", "bright", "mid"])
    assert heads[2].counts == reference.counts and heads[2].alpha == reference.alpha
    probe = compute_features([ImageItem(f"p{i}", (lambda i=i: grey_png(30 + 25 * i, 5000 + i)))
                              for i in range(8)], extractor)
    np.testing.assert_allclose(heads[2].predict_proba(probe), reference.predict_proba(probe), atol=1e-6)
    assert heads[3].classes == heads[1].classes and heads[3].alpha == heads[1].alpha
    assert heads[3].threshold == pytest.approx(heads[1].threshold, abs=1e-6)
    np.testing.assert_allclose(heads[3].predict_proba(probe), heads[1].predict_proba(probe), atol=1e-6)
    np.testing.assert_allclose(heads[2].familiarity(probe), reference.familiarity(probe), atol=1e-6)
    np.testing.assert_allclose(heads[3].familiarity(probe), heads[1].familiarity(probe), atol=1e-6)
    original, again = _probs(alice, model_id, 1), _probs(alice, model_id, 3)
    for a, b in zip(original, again, strict=True):
        assert [label for label, _ in a] == [label for label, _ in b]
        assert max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True)) <= 1e-6


def test_growing_a_trained_version_equals_a_refit_from_scratch(app, alice: Account, grown_setup: tuple[str, str],
                                                               tmp_path: Path) -> None:
    model_id, dataset_id = grown_setup
    trained_like_version(app, alice, model_id, dataset_id)
    run_job(app, alice.client.post(f"/api/v1/models/{model_id}/classes", json={"names": ["mid"]}).json()["job_id"],
            tmp_path)
    blobs = app.state.blob_store
    with app.state.session_factory() as db:
        grown_row = db.query(ModelVersion).filter_by(model_id=model_id, v=2).one()
        grown = head_file.read(grown_row.head_key, blobs.read_bytes)
        model_bytes = blobs.read_bytes(grown_row.onnx_key)
    extractor = extractor_of(model_bytes)
    rows = [(i["sha256"], i["label"], i["split"], i["size_bytes"]) for i in all_images(alice, dataset_id)]
    reference = reference_head(blobs, extractor, rows, ["dark", "bright", "mid"])
    assert grown.classes == reference.classes and grown.counts == reference.counts
    assert grown.alpha == reference.alpha
    probe = compute_features([ImageItem(f"p{i}", (lambda i=i: grey_png(30 + 25 * i, 5000 + i)))
                              for i in range(8)], extractor)
    np.testing.assert_allclose(grown.predict_proba(probe), reference.predict_proba(probe), atol=1e-6)
    assert grown.detector.kind == reference.detector.kind  # the unknown detector grows exactly too
    np.testing.assert_allclose(grown.familiarity(probe), reference.familiarity(probe), atol=1e-6)


def test_a_new_caution_is_a_new_version_without_retraining(app, alice: Account, grown_setup: tuple[str, str],
                                                           tmp_path: Path) -> None:
    model_id, dataset_id = grown_setup
    trained_like_version(app, alice, model_id, dataset_id)
    refused = alice.client.post(f"/api/v1/models/{model_id}/caution", json={"caution": 0.2})
    assert refused.status_code == 422 and refused.json()["code"] == "caution_unavailable"  # made before cautions
    run_job(app, alice.client.post(f"/api/v1/models/{model_id}/classes", json={"names": ["mid"]}).json()["job_id"],
            tmp_path)  # v2, measured with its caution curve
    assert alice.client.post(f"/api/v1/models/{model_id}/caution", json={"caution": 0.9}).status_code == 422
    job = alice.client.post(f"/api/v1/models/{model_id}/caution", json={"caution": 0.2})
    assert job.status_code == 202
    run_job(app, job.json()["id"], tmp_path)
    versions = {v["v"]: v for v in alice.client.get(f"/api/v1/models/{model_id}/versions").json()["items"]}
    before, after = versions[2], versions[3]
    assert after["active"] and after["threshold"] == 0.2 and "caution set to 20 %" in after["lineage"]["change"]
    blobs = app.state.blob_store
    with app.state.session_factory() as db:
        rows = {r.v: r for r in db.query(ModelVersion).filter_by(model_id=model_id)}
        heads = {v: head_file.read(rows[v].head_key, blobs.read_bytes) for v in (2, 3)}
    np.testing.assert_array_equal(heads[2].weights, heads[3].weights)  # the same model, another cut
    # the figures the model page previews for 20 % (v2's curve) are what the new version measures
    point = next(p for p in before["metrics"]["caution_curve"] if p["caution"] == 0.2)
    assert after["metrics"]["coverage"] == pytest.approx(point["answered"])
    assert after["metrics"]["selective_accuracy"] == pytest.approx(point["right_when_answered"])
    assert after["metrics"]["accuracy_with_unknown"] == pytest.approx(point["right_overall"])
    images = [grey_png(30 + 25 * i, 7000 + i) for i in range(8)]
    answers = alice.client.post(f"/api/v1/models/{model_id}/predict", params={"top_k": 1},
                                files=[("files", (f"{i}.png", d)) for i, d in enumerate(images)]).json()
    assert answers["version"] == 3
    assert all((p["label"] is None) == (p["familiarity"] < 0.2) for p in answers["predictions"])


def test_a_prediction_shows_the_training_images_it_looks_like(app, alice: Account,
                                                              grown_setup: tuple[str, str], tmp_path: Path) -> None:
    model_id, dataset_id = grown_setup
    trained_like_version(app, alice, model_id, dataset_id)
    url = f"/api/v1/models/{model_id}/predict"
    probe = [("files", ("p.png", grey_png(128, 9001)))]
    refused = alice.client.post(url, params={"neighbours": 3}, files=probe)
    assert refused.status_code == 422 and refused.json()["code"] == "no_neighbours"  # v1 keeps no features
    trained_like_version(app, alice, model_id, dataset_id, neighbours=True)  # v2
    run_job(app, alice.client.post(f"/api/v1/models/{model_id}/classes", json={"names": ["mid"]}).json()["job_id"],
            tmp_path)  # v3: the index grows with the class
    answer = alice.client.post(url, params={"neighbours": 3, "top_k": 1}, files=probe).json()
    assert answer["version"] == 3
    prediction = answer["predictions"][0]
    assert prediction["top"][0]["label"] == "mid"
    near = prediction["neighbours"]
    mids = {i["id"]: i for i in all_images(alice, dataset_id) if i["label"] == "mid" and i["split"] != "test"}
    assert len(near) == 3 and all(n["label"] == "mid" and n["image_id"] in mids for n in near)
    assert [n["similarity"] for n in near] == sorted((n["similarity"] for n in near), reverse=True)
    thumbnail = alice.client.get(near[0]["thumbnail_url"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"].startswith("image/")
    assert "neighbours" not in alice.client.post(url, files=probe).json()["predictions"][0] or \
        alice.client.post(url, files=probe).json()["predictions"][0]["neighbours"] is None  # opt-in
    # batch predictions list them too, named by image id when the results are downloaded
    batch = f"/api/v1/models/{model_id}/batch-predictions"
    archive = make_zip({"a/p.png": grey_png(128, 9001), "a/q.png": grey_png(40, 9002)})
    job = alice.client.post(batch, params={"neighbours": 2}, files={"file": ("p.zip", archive, "application/zip")})
    run_job(app, job.json()["id"], tmp_path)
    rows = alice.client.get(f"{batch}/{job.json()['id']}", params={"format": "json"}).json()["predictions"]
    assert all(len(r["neighbours"]) == 2 and all(n["image_id"] for n in r["neighbours"]) for r in rows)
    table = list(csv.DictReader(io.StringIO(alice.client.get(f"{batch}/{job.json()['id']}").text)))
    assert all(r["looks_like"].count("=") == 2 and r["looks_like"].split("=")[0] in
               {n["image_id"] for row in rows for n in row["neighbours"]} for r in table)
    # removing the class takes its images out of the index
    run_job(app, alice.client.delete(f"/api/v1/models/{model_id}/classes/mid").json()["job_id"], tmp_path)
    again = alice.client.post(url, params={"neighbours": 2}, files=probe).json()["predictions"][0]
    assert again["neighbours"] and all(n["label"] in ("dark", "bright") for n in again["neighbours"])


def _finish_training(app, model_id: str) -> None:  # type: ignore[no-untyped-def]
    """The model's training job is over (in these tests it never runs: versions are recorded directly)."""
    from sqlalchemy import update

    with app.state.session_factory() as db, db.begin():
        db.execute(update(Job).where(Job.model_id == model_id, Job.kind.in_(("train", "retrain")))
                   .values(status="succeeded"))


def _manifest_matches_head(app, model_id: str, v: int) -> bool:  # type: ignore[no-untyped-def]
    from pigeonhole.models.expansion import _load_manifest

    blobs = app.state.blob_store
    with app.state.session_factory() as db:
        row = db.query(ModelVersion).filter_by(model_id=model_id, v=v).one()
        key, head = row.lineage.get("manifest_key"), head_file.read(row.head_key, blobs.read_bytes)
    return key is not None and _load_manifest(blobs, key, head) is not None


def test_renaming_a_class_changes_its_label_only(app, alice: Account, grown_setup: tuple[str, str],
                                                 tmp_path: Path) -> None:
    model_id, dataset_id = grown_setup
    trained_like_version(app, alice, model_id, dataset_id)  # v1, with a manifest
    url = f"/api/v1/models/{model_id}/classes"
    refused = alice.client.patch(f"{url}/dark", json={"name": "black"})
    assert refused.status_code == 409 and refused.json()["code"] == "training_in_progress"
    assert "Wait for the training to finish" in refused.json()["detail"]
    _finish_training(app, model_id)
    assert alice.client.patch(f"{url}/zebra", json={"name": "black"}).status_code == 404
    assert alice.client.patch(f"{url}/dark", json={"name": "bright"}).json()["code"] == "class_exists"
    in_dataset = alice.client.patch(f"{url}/dark", json={"name": "mid"})  # not in the model, but in its dataset
    assert in_dataset.status_code == 409 and "dataset already has a class named 'mid'" in in_dataset.json()["detail"]
    assert alice.client.patch(f"{url}/dark", json={"name": "a/b"}).json()["code"] == "invalid_label"
    assert alice.client.patch(f"{url}/dark", json={"name": " "}).status_code == 422

    renamed = alice.client.patch(f"{url}/dark", json={"name": "black"})
    assert renamed.status_code == 202, renamed.text
    assert renamed.json()["model"]["requested_classes"] == ["black", "bright"]
    result = run_job(app, renamed.json()["job_id"], tmp_path)
    assert "new_classes" not in result["stage_seconds"] and "val_features" not in result["stage_seconds"]
    model = alice.client.get(f"/api/v1/models/{model_id}").json()
    assert model["active_version"] == 2 and model["classes"] == ["black", "bright"]
    v1, v2 = (alice.client.get(f"/api/v1/models/{model_id}/versions/{v}").json() for v in (1, 2))
    assert v2["lineage"]["change"] == "renamed 'dark' to 'black'" and v2["lineage"]["parent"] == 1
    assert v2["threshold"] == v1["threshold"]
    swap = {"dark": "black"}
    for before, after in zip(_probs(alice, model_id, 1), _probs(alice, model_id, 2), strict=True):
        expected = sorted((swap.get(label, label), p) for label, p in before)
        assert [label for label, _ in after] == [label for label, _ in expected]
        assert max(abs(x - y) for (_, x), (_, y) in zip(expected, after, strict=True)) <= 1e-6
    # the dataset's images moved to the new name, and the manifest still describes the head
    labels = {i["label"] for i in all_images(alice, dataset_id)}
    assert "black" in labels and "dark" not in labels
    assert _manifest_matches_head(app, model_id, 2)

    # adding a class afterwards is still exact (the renamed manifest is accepted), and removing works
    run_job(app, alice.client.post(url, json={"names": ["mid"]}).json()["job_id"], tmp_path)  # v3
    assert _manifest_matches_head(app, model_id, 3)
    blobs = app.state.blob_store
    with app.state.session_factory() as db:
        row = db.query(ModelVersion).filter_by(model_id=model_id, v=3).one()
        grown, model_bytes = head_file.read(row.head_key, blobs.read_bytes), blobs.read_bytes(row.onnx_key)
    extractor = extractor_of(model_bytes)
    rows = [(i["sha256"], i["label"], i["split"], i["size_bytes"]) for i in all_images(alice, dataset_id)]
    reference = reference_head(blobs, extractor, rows, ["black", "bright", "mid"])
    assert grown.classes == reference.classes and grown.counts == reference.counts
    probe = compute_features([ImageItem(f"p{i}", (lambda i=i: grey_png(30 + 25 * i, 5000 + i))) for i in range(8)],
                             extractor)
    np.testing.assert_allclose(grown.predict_proba(probe), reference.predict_proba(probe), atol=1e-6)
    run_job(app, alice.client.delete(f"{url}/bright").json()["job_id"], tmp_path)
    assert alice.client.get(f"/api/v1/models/{model_id}").json()["classes"] == ["black", "mid"]


def test_renamed_metrics_name_the_new_class_everywhere() -> None:
    from pigeonhole.learn.evaluate import rename_classes

    metrics = {"accuracy": 0.5, "per_class": {"classes": {"a": {"recall": 1.0}, "b": {"recall": 0.0}}, "macro": {}},
               "confusion": {"labels": ["a", "b"], "columns": ["a", "b", "unknown"], "matrix": [[1, 0, 0], [1, 0, 0]]},
               "confident_mistakes": [{"image": "x", "true": "b", "predicted": "a", "confidence": 0.9}],
               "drift": {"gap_points": 3.0, "known": ["a"], "added": ["b"], "val_images": 2}}
    out = rename_classes(metrics, {"a": "z"})
    assert list(out["per_class"]["classes"]) == ["z", "b"] and out["accuracy"] == 0.5
    assert out["confusion"]["labels"] == ["z", "b"] and out["confusion"]["columns"] == ["z", "b", "unknown"]
    assert out["confident_mistakes"][0]["predicted"] == "z" and out["drift"]["known"] == ["z"]
    assert metrics["per_class"]["classes"].keys() == {"a", "b"}  # the base version's metrics are left alone
