"""Feedback from production: a wrong or unsure answer sent back with its image, by a predict-only token."""

from __future__ import annotations

from tests.api.conftest import Account
from tests.api.models_helpers import add_version, trainable_dataset
from tests.factories import png_bytes
from tests.model_factories import grey_png


def _send(client, model_id: str, image: bytes, **form: str):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/models/{model_id}/feedback", data=form, files={"file": ("x.png", image, "image/png")})


def test_feedback_joins_the_dataset_or_the_pool_and_grows_the_model_on_schedule(app, alice: Account, bob: Account,
                                                                                new_client) -> None:
    dataset_id = trainable_dataset(alice)
    created = alice.client.post("/api/v1/models", json={"name": "m", "dataset_id": dataset_id}).json()
    model_id = created["id"]
    assert alice.client.post(f"/api/v1/jobs/{created['job_id']}/cancel").status_code == 200  # no training here
    add_version(app, model_id, growable=True)
    program = new_client(alice.token(["predict"]))
    answer = program.post(f"/api/v1/models/{model_id}/predict",
                          files=[("files", ("a.png", grey_png(45, 900), "image/png"))]).json()["predictions"][0]
    assert answer["prediction_id"].startswith("v1-")

    wrong = _send(program, model_id, grey_png(45, 900), label="bright", prediction_id=answer["prediction_id"])
    assert wrong.status_code == 201, wrong.text
    assert wrong.json() == {"destination": "dataset", "duplicate": False, "grow_job_id": None}
    images = alice.client.get(f"/api/v1/datasets/{dataset_id}/images", params={"label": "bright"}).json()["items"]
    sent = [i for i in images if i["origin"] == "feedback"]
    assert len(sent) == 1 and sent[0]["original_name"] == f"feedback-{answer['prediction_id']}"
    assert _send(program, model_id, grey_png(45, 900), label="bright").json()["duplicate"] is True

    unsure = _send(program, model_id, grey_png(128, 901), unsure="true")
    assert unsure.status_code == 201 and unsure.json()["destination"] == "pool"
    pool = alice.client.get(f"/api/v1/datasets/{dataset_id}/pool").json()["items"]
    assert [p["source"] for p in pool] == ["feedback"]

    # the predict-only token adds but cannot read the dataset
    assert program.get(f"/api/v1/datasets/{dataset_id}/images").status_code == 403
    # the owner's schedule: grow after 2 labelled images since the active version (one is there already)
    assert alice.client.patch(f"/api/v1/models/{model_id}", json={"grow_after_feedback": 2}).json()[
        "grow_after_feedback"] == 2
    grown = _send(program, model_id, grey_png(215, 902), label="bright").json()
    assert grown["grow_job_id"] is not None
    job = alice.client.get(f"/api/v1/jobs/{grown['grow_job_id']}").json()
    assert job["kind"] == "expand" and job["model_id"] == model_id

    # bad calls
    assert _send(program, model_id, grey_png(50, 903)).status_code == 422  # neither label nor unsure
    both = _send(program, model_id, grey_png(50, 903), label="dark", unsure="true")
    assert both.status_code == 422 and "one of the two" in both.json()["detail"]
    broken = _send(program, model_id, b"not an image", label="dark")
    assert broken.status_code == 422
    assert _send(bob.client, model_id, png_bytes(seed=4), label="dark").status_code == 404
    reader = new_client(alice.token(["read"]))
    assert _send(reader, model_id, png_bytes(seed=5), label="dark").status_code == 403
