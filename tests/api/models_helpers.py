"""Helpers for model tests: a trainable dataset, and versions recorded as a finished training would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from pigeonhole.compute.handlers import handler_for
from pigeonhole.db.tables import Job, Model
from pigeonhole.ids import new_id
from pigeonhole.learn.export import read_input_spec
from pigeonhole.models.service import record_version
from tests.api.conftest import Account
from tests.api.datasets_helpers import upload
from tests.model_factories import dark_bright_onnx, dark_bright_version, grey_png


def trainable_dataset(owner: Account, per_class: int = 5) -> str:
    dataset_id = owner.client.post("/api/v1/datasets", json={"name": "shades"}).json()["id"]
    upload(owner, dataset_id, [(f"d{i}.png", grey_png(40, i)) for i in range(per_class)], label="dark")
    upload(owner, dataset_id, [(f"b{i}.png", grey_png(210, 100 + i)) for i in range(per_class)], label="bright")
    return dataset_id


def add_version(app: FastAPI, model_id: str, *, activate: bool = True, growable: bool = False,
                lineage: dict[str, Any] | None = None) -> int:
    """Store an exported classifier and record it as a new version, as the training job does.

    ``growable``: with head statistics and the features output, so classes can be added to it.
    """
    onnx, head = dark_bright_version() if growable else (dark_bright_onnx(), None)
    version_id = new_id()
    key = f"models/{model_id}/{version_id}/model.onnx"
    app.state.blob_store.put_bytes(key, onnx)
    head_key = f"models/{model_id}/{version_id}/head.npz" if head else None
    if head and head_key:
        app.state.blob_store.put_bytes(head_key, head)
    spec = read_input_spec(onnx) or {}
    with app.state.session_factory() as db, db.begin():
        model = db.get(Model, model_id)
        assert model is not None
        row = record_version(db, model, classes=["dark", "bright"], metrics={"accuracy": 1.0}, input_spec=spec,
                             threshold=0.5, size_bytes=len(onnx), onnx_key=key, head_key=head_key, card_key=None,
                             lineage={"change": "trained", "note": json.dumps("test"), **(lineage or {})},
                             latency_ms=1.0,
                             throughput=100.0, job_id=None, activate=activate, version_id=version_id)
        return row.v


class Ctx:
    """What a Ray worker gets, minus Ray: enough to run a handler's ``run`` in the test process."""

    def __init__(self, tmp: Path, blob_url: str):
        self.job_id, self.attempt, self.node_id = "job", 1, "local"
        self.cache_dir, self.cache_max_bytes, self.blob_url = tmp / "cache", 1 << 28, blob_url
        self.reports: list[dict[str, Any]] = []

    def report(self, **kwargs: Any) -> None:
        self.reports.append(kwargs)

    def cancelled(self) -> bool:
        return False

    def emit(self, event: dict[str, Any]) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        pass

    def load_checkpoint(self) -> None:
        return None

    def cached(self, key: str) -> None:
        pass


def run_job(app: FastAPI, job_id: str, tmp: Path) -> dict[str, Any]:
    """prepare (dispatcher) -> run (worker) -> on_success (dispatcher), as the dispatcher would, in-process."""
    with app.state.session_factory() as db:
        job = db.get(Job, job_id)
        assert job is not None
        handler = handler_for(job.kind)(app.state.settings)  # type: ignore[misc]
        payload = handler.prepare(db, job)
    ctx = Ctx(tmp, app.state.settings.resolved_blob_url)
    ctx.job_id = job_id
    result = handler.run(ctx, payload)
    with app.state.session_factory() as db, db.begin():
        job = db.get(Job, job_id)
        handler.on_success(db, job, result)
        job.status, job.result = "succeeded", result
    return result
