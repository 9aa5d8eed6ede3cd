"""Versions built the way a training builds them, from the images of a dataset, for the tests of growing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pigeonhole.db.tables import Model, ModelVersion
from pigeonhole.ids import new_id
from pigeonhole.learn import head_file
from pigeonhole.learn.features import ImageItem, compute_features
from pigeonhole.learn.finish import LEFT_OUT
from pigeonhole.learn.grow import extractor_of, rebuild_model
from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.neighbours import NeighbourIndex
from pigeonhole.learn.unknown import choose_unknown
from pigeonhole.models.service import record_version
from tests.api.conftest import Account
from tests.api.datasets_helpers import all_images
from tests.api.models_helpers import run_job
from tests.model_factories import dark_bright_version


def trained_like_version(app, alice: Account, model_id: str, dataset_id: str, *, left_out: bool = False,
                         neighbours: bool = False, classes: Sequence[str] = ("dark", "bright")) -> None:
    """A version built the way training builds one: statistics of train + val, hyperparameters chosen on
    val held out (``left_out``: on every held image left out in turn, as for a small set), and a manifest of
    the images the head holds."""
    model_bytes, _ = dark_bright_version()
    extractor = extractor_of(model_bytes)
    blobs = app.state.blob_store
    rows = [(i["sha256"], i["label"], i["split"], i["size_bytes"]) for i in all_images(alice, dataset_id)
            if i["label"] in classes]
    head = (left_out_head if left_out else reference_head)(blobs, extractor, rows, list(classes))
    version_id = new_id()
    keys = {name: f"models/{model_id}/{version_id}/{name}"
            for name in ("model.onnx", "head.npz", "images.json", "neighbours.npz")}
    blobs.put_bytes(keys["model.onnx"], rebuild_model(model_bytes, head))
    blobs.put_bytes(keys["head.npz"], head.to_bytes())
    held = [r for r in rows if r[2] != "test"]
    blobs.put_bytes(keys["images.json"], json.dumps([list(r) for r in held]).encode())
    if neighbours:
        features = compute_features([ImageItem(sha, (lambda s=sha, n=size: blobs.read_blob(s, n)))
                                     for sha, _, _, size in held], extractor)
        blobs.put_bytes(keys["neighbours.npz"],
                        NeighbourIndex([r[0] for r in held], [r[1] for r in held], features).to_bytes())
    with app.state.session_factory() as db, db.begin():
        record_version(db, db.get(Model, model_id), classes=head.classes,
                       metrics={"val_measured_on": LEFT_OUT} if left_out else {}, input_spec={"height": 28,
                       "width": 28, "color": "L"}, threshold=head.threshold, size_bytes=1,
                       onnx_key=keys["model.onnx"], head_key=keys["head.npz"], card_key=None,
                       lineage={"manifest_key": keys["images.json"],
                                "neighbours_key": keys["neighbours.npz"] if neighbours else None},
                       latency_ms=None, throughput=None,
                       job_id=None, activate=True, version_id=version_id)


def reference_head(blobs, extractor, rows, classes: list[str]) -> RidgeHead:  # type: ignore[no-untyped-def]
    def feats(split: str) -> tuple[np.ndarray, list[str]]:
        chosen = sorted((r for r in rows if r[2] == split and r[1] in classes), key=lambda r: classes.index(r[1]))
        items = [ImageItem(sha, (lambda s=sha, n=size: blobs.read_blob(s, n))) for sha, _, _, size in chosen]
        return compute_features(items, extractor), [r[1] for r in chosen]

    train_f, train_l = feats("train")
    val_f, val_l = feats("val")
    head = RidgeHead(train_f.shape[1])
    head.add(train_f, train_l)
    head.fit(val_f, val_l)
    choose_unknown(head, val_f, val_l, left_out=False)
    head.add(val_f, val_l)
    head.solve()
    return head


def left_out_head(blobs, extractor, rows, classes: list[str]) -> RidgeHead:  # type: ignore[no-untyped-def]
    chosen = sorted((r for r in rows if r[2] in ("train", "val") and r[1] in classes),
                    key=lambda r: classes.index(r[1]))
    feats = compute_features([ImageItem(sha, (lambda s=sha, n=size: blobs.read_blob(s, n)))
                              for sha, _, _, size in chosen], extractor)
    head = RidgeHead(feats.shape[1])
    head.add(feats, [r[1] for r in chosen])
    head.fit_left_out(feats, [r[1] for r in chosen])
    choose_unknown(head, feats, [r[1] for r in chosen], left_out=True)
    return head


def add_then_remove(app, alice: Account, model_id: str, name: str, tmp: Path,
                    ) -> tuple[dict[int, ModelVersion], dict[int, RidgeHead], bytes]:
    """Add class ``name`` to the active version (v2), remove it again (v3); every version's row and head, and the
    grown version's model file."""
    url = f"/api/v1/models/{model_id}/classes"
    run_job(app, alice.client.post(url, json={"names": [name]}).json()["job_id"], tmp)
    run_job(app, alice.client.delete(f"{url}/{name}").json()["job_id"], tmp)
    blobs = app.state.blob_store
    with app.state.session_factory() as db:
        rows = {r.v: r for r in db.query(ModelVersion).filter_by(model_id=model_id)}
        heads = {v: head_file.read(r.head_key, blobs.map_bytes) for v, r in rows.items()}
    return rows, heads, blobs.read_bytes(rows[2].onnx_key)
