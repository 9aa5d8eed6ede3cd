"""Growing a model of a hundred classes: one class in a hundred changes, so the chosen settings carry over
(``models/expand_settings.py`` ``keeps_settings``), and the new head file points at the rows it did not change, as
the file of test images' features points at the classes whose test images did not change."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pigeonhole.datasets.splits import hash_split
from pigeonhole.db.tables import ModelVersion
from pigeonhole.learn.features import ImageItem, compute_features
from pigeonhole.learn.grow import extractor_of
from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.held_out import HeldOutFeatures
from tests.api.conftest import Account
from tests.api.datasets_helpers import all_images, upload
from tests.api.growth_helpers import add_then_remove, trained_like_version
from tests.api.models_helpers import run_job
from tests.model_factories import grey_png

CLASSES = [f"k{k:03d}" for k in range(100)]


def test_a_change_to_one_class_in_a_hundred_keeps_the_settings_and_gives_back_the_version(
    app, alice: Account, tmp_path: Path
) -> None:
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "many"}).json()["id"]
    for k, name in enumerate(CLASSES):
        upload(alice, dataset_id, [(f"{name}-{i}.png", grey_png(10 + 2 * k, 1000 * k + i)) for i in range(6)],
               label=name)
    upload(alice, dataset_id, [(f"new-{i}.png", grey_png(250, 500_000 + i)) for i in range(12)], label="new")
    model_id = alice.client.post("/api/v1/models", json={"name": "m", "dataset_id": dataset_id,
                                                          "classes": CLASSES}).json()["id"]
    trained_like_version(app, alice, model_id, dataset_id, classes=CLASSES)  # v1
    rows, heads, model_bytes = add_then_remove(app, alice, model_id, "new", tmp_path)  # v2, v3
    blobs = app.state.blob_store

    base, grown, back = heads[1], heads[2], heads[3]
    assert rows[2].metrics["settings_kept_from"] == 1 and rows[3].metrics["settings_kept_from"] == 2
    assert "accuracy" in rows[2].metrics  # measured on the test images all the same
    for head in (grown, back):
        assert (head.alpha, head.temperature, head.threshold) == (base.alpha, base.temperature, base.threshold)
        np.testing.assert_array_equal(head.detector.knots, base.detector.knots)

    # the grown head equals one refit from scratch, at the kept settings, on the images it holds
    images = [i for i in all_images(alice, dataset_id) if i["split"] in ("train", "val")]
    extractor = extractor_of(model_bytes)
    refit = RidgeHead(grown.input_dim)
    for name in grown.classes:
        mine = [i for i in images if i["label"] == name]
        if name == "new":
            features = compute_features([ImageItem(i["sha256"], (lambda s=i["sha256"], n=i["size_bytes"]:
                                                                 blobs.read_blob(s, n))) for i in mine], extractor)
        else:
            features = np.asarray(base._stats[name].rows, dtype=np.float32)
        refit.add(features, [name] * len(features))
    refit.solve(base.alpha)
    assert refit.counts == grown.counts
    np.testing.assert_allclose(grown.weights, refit.weights, rtol=1e-7, atol=1e-9)

    # removing the class again gives back the first version's head, and its file holds no rows of its own:
    # every class points into the first version's file (rows held in the file itself would name their own)
    assert back.classes == base.classes
    np.testing.assert_allclose(back.weights, base.weights, rtol=1e-7, atol=1e-9)
    assert {back._stats[c].origin.key for c in back.classes} == {rows[1].head_key}

    # the test images' features go with each version: the first has none, the grown one computed them, and the
    # removal took every class's from the grown one's file; they are the extractor's features of those images
    assert rows[1].lineage.get("held_out_key") is None
    grown_held = rows[2].lineage["held_out_key"]
    held = HeldOutFeatures.read(rows[3].lineage["held_out_key"], blobs.map_bytes)
    assert {block.origins[1].key for _, block in held.blocks.items()} == {grown_held}
    tests = [i for i in all_images(alice, dataset_id) if i["split"] == "test" and i["label"] in back.classes]
    expected = compute_features([ImageItem(i["sha256"], (lambda s=i["sha256"], n=i["size_bytes"]:
                                                         blobs.read_blob(s, n))) for i in tests], extractor)
    by_sha = {i["sha256"]: expected[k] for k, i in enumerate(tests)}
    assert len(held) == len(tests)
    for _, block in held.blocks.items():
        np.testing.assert_array_equal(block.features, [by_sha[s.decode()] for s in block.shas])

    # a class whose test images changed is measured on its images as they are now: a test image more for k000,
    # then a removal; every other class still comes from the file
    support = rows[3].metrics["per_class"]["classes"]["k000"]["support"]
    extra = next(png for seed in range(200) if hash_split(hashlib.sha256(png := grey_png(10, 90_000 + seed))
                                                            .hexdigest()) == "test")
    upload(alice, dataset_id, [("k000-extra.png", extra)], label="k000")
    run_job(app, alice.client.delete(f"/api/v1/models/{model_id}/classes/k099").json()["job_id"], tmp_path)
    with app.state.session_factory() as db:
        rows[4] = db.query(ModelVersion).filter_by(model_id=model_id, v=4).one()
    assert rows[4].metrics["per_class"]["classes"]["k000"]["support"] == support + 1
    fourth = rows[4].lineage["held_out_key"]
    origins = {name: block.origins[1].key for name, block in HeldOutFeatures.read(fourth, blobs.map_bytes)
               .blocks.items()}
    assert origins.pop("k000") == fourth and "k099" not in origins and set(origins.values()) == {grown_held}

    # deleting the model deletes every version's files (a grown version's point into the others')
    assert alice.client.delete(f"/api/v1/models/{model_id}").status_code == 204
    for row in rows.values():
        for key in (row.onnx_key, row.head_key, row.lineage["manifest_key"], row.lineage.get("held_out_key")):
            assert key is None or not blobs.key_exists(key)
