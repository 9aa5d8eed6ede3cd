"""Drift guard: classes added to a model whose extractor was fine-tuned on the original classes are
measured against those classes; a clear gap suggests (or, with auto_retrain, starts) a retrain, whose
result serves only if it beats the active version."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import update

from pigeonhole.db.tables import DatasetImage, Job, Model, ModelVersion
from pigeonhole.ids import new_id
from pigeonhole.learn.evaluate import recall_gap
from pigeonhole.models.drift import suggestion_for
from pigeonhole.models.job_contracts import VersionEvent, VersionKeys
from pigeonhole.models.training import RetrainHandler, TrainHandler, event_extractor_classes
from pigeonhole.settings import Settings
from tests.api.conftest import Account
from tests.api.datasets_helpers import upload
from tests.api.models_helpers import add_version, run_job, trainable_dataset
from tests.model_factories import grey_png

FINE_TUNED_ON = ["dark", "bright"]


def _set_split(app: FastAPI, dataset_id: str, images: list[bytes], split: str) -> None:
    shas = [hashlib.sha256(b).hexdigest() for b in images]
    with app.state.session_factory() as db, db.begin():
        db.execute(update(DatasetImage).where(DatasetImage.dataset_id == dataset_id, DatasetImage.sha256.in_(shas))
                   .values(split=split))


def _model(app: FastAPI, alice: Account, *, lagging: bool, **create: Any) -> str:
    """A served version whose extractor was fine-tuned on dark and bright, and a class 'new' to add.

    'new' is learnt from mid-grey images; with ``lagging`` three of its four validation images are
    dark-grey ones, so the head recognises them poorly while the original classes stay perfect: a real,
    large gap (no test images: the figures come from validation images, which is what the guard uses).
    """
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "shades"}).json()["id"]
    for label, level, seed in (("dark", 40, 0), ("bright", 210, 100), ("new", 128, 700)):
        train = [grey_png(level, seed + i) for i in range(12)]
        val = [grey_png(40 if lagging and label == "new" and i else level, seed + 50 + i) for i in range(4)]
        upload(alice, dataset_id, [(f"{label}{i}.png", b) for i, b in enumerate(train + val)], label=label)
        _set_split(app, dataset_id, train, "train")
        _set_split(app, dataset_id, val, "val")
    model_id = alice.client.post("/api/v1/models", json={"name": "m", "dataset_id": dataset_id,
                                                         "classes": ["dark", "bright"], **create}).json()["id"]
    add_version(app, model_id, growable=True)
    with app.state.session_factory() as db, db.begin():
        row = db.query(ModelVersion).filter_by(model_id=model_id, v=1).one()
        row.lineage = {**row.lineage, "extractor_classes": FINE_TUNED_ON}
        db.execute(update(Job).where(Job.model_id == model_id).values(status="succeeded"))  # training is over
    return model_id


def _add_new(app: FastAPI, alice: Account, model_id: str, tmp_path: Path) -> dict[str, Any]:
    added = alice.client.post(f"/api/v1/models/{model_id}/classes", json={"names": ["new"]})
    assert added.status_code == 202, added.text
    run_job(app, added.json()["job_id"], tmp_path)
    return alice.client.get(f"/api/v1/models/{model_id}").json()


def _jobs(alice: Account, model_id: str, kind: str) -> list[dict[str, Any]]:
    return [j for j in alice.client.get("/api/v1/jobs", params={"model_id": model_id}).json()["items"]
            if j["kind"] == kind]


def _hand_over(app: FastAPI, model_id: str, job_id: str, accuracy: float, like: int | None = None) -> int:
    """The (re)training job reports a version with this test accuracy, and the files and classes of version
    ``like`` (default: the active one)."""
    with app.state.session_factory() as db, db.begin():
        model = db.get(Model, model_id)
        active = db.query(ModelVersion).filter_by(model_id=model_id, v=like or model.active_version).one()
        job = db.get(Job, job_id)
        event = {"type": "version", "version_id": new_id(), "classes": list(active.classes),
                 "metrics": {"accuracy": accuracy}, "input": active.input_spec, "threshold": active.threshold,
                 "size_bytes": active.size_bytes, "keys": {"model": active.onnx_key, "head": active.head_key},
                 "lineage": {"candidate": {"config": {"kind": "finetune", "extractor": "smallcnn_l", "size": 28}}}}
        (RetrainHandler if job.kind == "retrain" else TrainHandler)(app.state.settings).on_event(db, job, event)
        return max(v.v for v in db.query(ModelVersion).filter_by(model_id=model_id))


def test_the_gap_is_the_mean_recall_of_known_minus_added_classes() -> None:
    true = ["a", "a", "a", "a", "b", "b", "c", "c"]
    predicted = ["a", "a", "a", "c", "b", "b", "c", "a"]  # recall a 0.75, b 1.0 (known); c 0.5 (added)
    assert recall_gap(true, predicted, known=["a", "b"], added=["c"]) == {
        "gap_points": 37.5, "known": ["a", "b"], "added": ["c"], "val_images": 8}
    assert recall_gap(true, predicted, known=["a", "b"], added=["d"]) is None  # no validation image of 'd'
    assert recall_gap(true, predicted, known=[], added=["c"]) is None
    settings = Settings(database_url="sqlite://", secret_key="x" * 40)
    assert suggestion_for({"drift": {"gap_points": 2.0}}, settings) is None  # "exceeds" the 2-point default
    assert suggestion_for({"drift": {"gap_points": 2.6}}, settings)["reason"].startswith(
        "Classes added since the last training are recognised less well (about 3 points)")
    assert suggestion_for({"accuracy": 1.0}, settings) is None


def test_training_versions_record_what_their_extractor_was_fine_tuned_on() -> None:
    def event(lineage: dict[str, Any]) -> VersionEvent:
        return VersionEvent(version_id="v", keys=VersionKeys(model="m.onnx"), classes=["x", "y"], metrics={},
                            input={}, threshold=0.5, size_bytes=1, lineage=lineage)

    def of_kind(kind: str) -> VersionEvent:
        return event({"candidate": {"config": {"kind": kind, "extractor": "smallcnn_l", "size": 28}}})

    assert event_extractor_classes(of_kind("finetune")) == ["x", "y"]
    assert event_extractor_classes(of_kind("scratch")) == ["x", "y"]  # a from-scratch CNN learnt these classes too
    assert event_extractor_classes(of_kind("frozen")) is None  # a pretrained extractor favours none of them
    assert event_extractor_classes(event({"extractor_classes": ["x"]})) == ["x"]


def test_a_lagging_added_class_suggests_a_retrain_until_one_exists(app, alice: Account, tmp_path: Path) -> None:
    model_id = _model(app, alice, lagging=True)
    model = _add_new(app, alice, model_id, tmp_path)
    v2 = alice.client.get(f"/api/v1/models/{model_id}/versions/2").json()
    assert v2["lineage"]["extractor_classes"] == FINE_TUNED_ON  # inherited from the version it grew from
    drift = v2["metrics"]["drift"]
    assert drift["known"] == ["dark", "bright"] and drift["added"] == ["new"] and drift["val_images"] >= 6
    assert drift["gap_points"] > 50
    assert model["active_version"] == 2 and model["auto_retrain"] is False
    assert model["retrain_suggested"]["gap_points"] == drift["gap_points"]
    assert model["retrain_suggested"]["reason"] == (
        f"Classes added since the last training are recognised less well (about {round(drift['gap_points'])} "
        "points) than the original ones; retraining on all classes would fix that.")
    assert _jobs(alice, model_id, "retrain") == []  # only suggested: auto_retrain is off

    # renaming keeps the figure (under the new name) and what the extractor knows follows the name
    renamed = alice.client.patch(f"/api/v1/models/{model_id}/classes/dark", json={"name": "black"})
    run_job(app, renamed.json()["job_id"], tmp_path)
    v3 = alice.client.get(f"/api/v1/models/{model_id}/versions/3").json()
    assert v3["lineage"]["extractor_classes"] == ["black", "bright"]
    assert v3["metrics"]["drift"]["known"] == ["black", "bright"] and v3["metrics"]["drift"]["added"] == ["new"]
    assert alice.client.get(f"/api/v1/models/{model_id}").json()["retrain_suggested"] is not None

    retrain = alice.client.post(f"/api/v1/models/{model_id}/retrain")
    _hand_over(app, model_id, retrain.json()["job_id"], accuracy=1.0)
    model = alice.client.get(f"/api/v1/models/{model_id}").json()
    assert model["retrain_suggested"] is None  # a newer training version exists
    newest = alice.client.get(f"/api/v1/models/{model_id}/versions/{model['active_version']}").json()
    assert newest["lineage"]["extractor_classes"] == ["black", "bright", "new"]


def test_no_suggestion_when_the_added_class_is_recognised_as_well(app, alice: Account, tmp_path: Path) -> None:
    model_id = _model(app, alice, lagging=False)
    model = _add_new(app, alice, model_id, tmp_path)
    assert model["active_version"] == 2
    drift = alice.client.get(f"/api/v1/models/{model_id}/versions/2").json()["metrics"]["drift"]
    assert drift["gap_points"] <= 2.0
    assert model["retrain_suggested"] is None


def test_no_suggestion_below_the_setting(app, alice: Account, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(app.state, "settings", app.state.settings.model_copy(update={"drift_retrain_gap_points": 150}))
    model_id = _model(app, alice, lagging=True, auto_retrain=True)
    model = _add_new(app, alice, model_id, tmp_path)
    assert alice.client.get(f"/api/v1/models/{model_id}/versions/2").json()["metrics"]["drift"]["gap_points"] > 50
    assert model["retrain_suggested"] is None and _jobs(alice, model_id, "retrain") == []


def test_no_drift_figure_for_a_pretrained_extractor(app, alice: Account, tmp_path: Path) -> None:
    model_id = _model(app, alice, lagging=True)
    with app.state.session_factory() as db, db.begin():
        row = db.query(ModelVersion).filter_by(model_id=model_id, v=1).one()
        row.lineage = {**row.lineage, "extractor_classes": None}
    model = _add_new(app, alice, model_id, tmp_path)
    assert "drift" not in alice.client.get(f"/api/v1/models/{model_id}/versions/2").json()["metrics"]
    assert model["retrain_suggested"] is None


def test_auto_retrain_starts_exactly_one_retrain(app, alice: Account, tmp_path: Path) -> None:
    model_id = _model(app, alice, lagging=True)
    patched = alice.client.patch(f"/api/v1/models/{model_id}", json={"auto_retrain": True})
    assert patched.status_code == 200 and patched.json()["auto_retrain"] is True
    model = _add_new(app, alice, model_id, tmp_path)
    [retrain] = _jobs(alice, model_id, "retrain")
    assert retrain["status"] == "queued" and model["job_id"] == retrain["id"]
    assert model["retrain_suggested"] is not None and model["active_version"] == 2  # the current one keeps serving
    # another class change with the same gap while the retrain waits: no second retrain
    refresh = alice.client.post(f"/api/v1/models/{model_id}/refresh", json={"classes": ["new"]})
    run_job(app, refresh.json()["id"], tmp_path)
    assert alice.client.get(f"/api/v1/models/{model_id}").json()["active_version"] == 3
    assert len(_jobs(alice, model_id, "retrain")) == 1


def test_a_retrain_serves_only_if_it_is_at_least_as_accurate(app, alice: Account, tmp_path: Path) -> None:
    model_id = _model(app, alice, lagging=True, auto_retrain=True)
    model = _add_new(app, alice, model_id, tmp_path)
    accuracy = alice.client.get(f"/api/v1/models/{model_id}/versions/2").json()["metrics"]["accuracy"]
    assert accuracy < 1.0
    worse = _hand_over(app, model_id, model["job_id"], accuracy=accuracy - 0.1)
    model = alice.client.get(f"/api/v1/models/{model_id}").json()
    assert model["active_version"] == 2 and model["status"] == "ready"
    versions = [v["v"] for v in alice.client.get(f"/api/v1/models/{model_id}/versions").json()["items"]]
    assert worse in versions  # kept in the history: it can still be activated by hand
    assert all(j["status"] == "succeeded" for j in _jobs(alice, model_id, "expand"))  # nothing follows it
    better = _hand_over(app, model_id, model["job_id"], accuracy=accuracy + 0.01)
    assert alice.client.get(f"/api/v1/models/{model_id}").json()["active_version"] == better


def test_a_first_training_still_activates_every_candidate(app, alice: Account) -> None:
    dataset_id = trainable_dataset(alice)
    model = alice.client.post("/api/v1/models", json={"name": "m", "dataset_id": dataset_id}).json()
    assert model["auto_retrain"] is False and model["retrain_suggested"] is None
    add_version(app, model["id"], growable=True)  # accuracy 1.0
    lower = _hand_over(app, model["id"], model["job_id"], accuracy=0.5)
    assert alice.client.get(f"/api/v1/models/{model['id']}").json()["active_version"] == lower


def test_models_can_be_renamed_and_their_auto_retrain_switched(alice: Account) -> None:
    dataset_id = trainable_dataset(alice)
    model = alice.client.post("/api/v1/models", json={"name": "m", "dataset_id": dataset_id,
                                                      "auto_retrain": True}).json()
    assert model["auto_retrain"] is True
    url = f"/api/v1/models/{model['id']}"
    renamed = alice.client.patch(url, json={"name": "  Garden birds "})
    assert renamed.json()["name"] == "Garden birds" and renamed.json()["auto_retrain"] is True
    assert alice.client.patch(url, json={"auto_retrain": False}).json()["auto_retrain"] is False
    assert alice.client.patch(url, json={"name": " "}).json()["code"] == "invalid_name"
    assert alice.client.patch(url, json={"auto_retrain": "sometimes"}).status_code == 422
    assert alice.client.get(url).json()["name"] == "Garden birds"


@pytest.mark.parametrize("kind", ["train", "retrain"])
def test_training_in_progress_is_seen_for_both_kinds(app, alice: Account, kind: str) -> None:
    from pigeonhole.models.repository import training_in_progress

    model_id = _model(app, alice, lagging=False)
    with app.state.session_factory() as db:
        assert not training_in_progress(db, model_id)
    with app.state.session_factory() as db, db.begin():
        db.execute(update(Job).where(Job.model_id == model_id).values(status="running", kind=kind))
    with app.state.session_factory() as db:
        assert training_in_progress(db, model_id)


def test_a_retrain_result_brought_up_to_date_must_still_beat_the_active_version(app, alice: Account,
                                                                              tmp_path: Path) -> None:
    """A class removed while the retrain runs: its result gets the change first (an expand job), and that
    version too serves only if it is at least as accurate as the active one (here: the same figures)."""
    model_id = _model(app, alice, lagging=True, auto_retrain=True)
    retrain_job = _add_new(app, alice, model_id, tmp_path)["job_id"]  # v2 serves, a retrain is queued
    run_job(app, alice.client.delete(f"/api/v1/models/{model_id}/classes/bright").json()["job_id"], tmp_path)  # v3
    handed = _hand_over(app, model_id, retrain_job, accuracy=1.0, like=2)  # trained with 'bright'
    assert alice.client.get(f"/api/v1/models/{model_id}").json()["active_version"] == 3
    [follow] = [j["id"] for j in _jobs(alice, model_id, "expand") if j["status"] == "queued"]
    with app.state.session_factory() as db:
        params = db.get(Job, follow).params
    assert params["base_version"] == handed and params["guarded"] is True
    run_job(app, follow, tmp_path)
    model = alice.client.get(f"/api/v1/models/{model_id}").json()
    assert model["classes"] == ["dark", "new"] and model["active_version"] == handed + 1
