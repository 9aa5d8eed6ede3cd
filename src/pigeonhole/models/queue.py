"""The labelling queue job: the images waiting for a label, ordered by what a label would teach the model
(``learn/labelling.py``), each with the model's guess so the labeller can take it with one key.

The worker passes the waiting images through the chosen version (its extractor and head: the same features are
cached per node as for growing), orders them and writes the list to the blob store; the API reads it back and
drops the images labelled or removed since.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pigeonhole.compute.handlers import JobContext, JobFailed, JobHandler, Placement, Resources, register
from pigeonhole.db.tables import Job, PoolImage
from pigeonhole.learn import head_file
from pigeonhole.learn.features import ImageItem, compute_features, node_feature_cache
from pigeonhole.learn.grow import extractor_of
from pigeonhole.learn.labelling import labelling_order
from pigeonhole.models import repository as repo
from pigeonhole.models.job_contracts import AnalysisJobParams, AnalysisJobResult, QueuePayload
from pigeonhole.storage.blobs import BlobStore

GUESSES = 3  # the model's top classes shown with each image


def result_key(job_id: str) -> str:
    return f"queue/{job_id}.json"


@register
class QueueHandler(JobHandler):
    kind = "queue"
    resources = Resources(num_cpus=1)
    placement = Placement.ANY
    affinity = "dataset"
    description = "order the images waiting for a label"

    def prepare(self, db: Session, job: Job) -> dict[str, Any]:
        params = AnalysisJobParams.model_validate(job.params)
        version = repo.version(db, params.model_id, params.version)
        if version is None or version.head_key is None:
            raise JobFailed("The model version to order the images with was deleted or keeps no head statistics.")
        rows = db.execute(select(PoolImage.id, PoolImage.sha256, PoolImage.size_bytes)
                          .where(PoolImage.dataset_id == params.dataset_id).order_by(PoolImage.id))
        return QueuePayload(**params.model_dump(), onnx_key=version.onnx_key, head_key=version.head_key,
                            images=[(pool_id, sha, size) for pool_id, sha, size in rows]).model_dump(mode="json")

    def run(self, ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        task = QueuePayload.model_validate(payload)
        started = time.monotonic()
        blobs = BlobStore(ctx.blob_url)
        items: list[dict[str, Any]] = []
        if task.images:
            ctx.report(progress=0.05, stage="Loading the model")
            extractor = extractor_of(blobs.read_bytes(task.onnx_key), threads=2)
            head = head_file.read(task.head_key, blobs.map_bytes)
            if head.weights is None:
                head.solve()
            cache = node_feature_cache(Path(ctx.cache_dir) / "learn", int(ctx.cache_max_bytes))
            ctx.report(progress=0.1, stage=f"Reading {len(task.images)} images waiting for a label")
            try:
                features = compute_features([ImageItem(sha, (lambda s=sha, n=size: blobs.read_blob(s, n)))
                                             for _, sha, size in task.images], extractor, cache)
            finally:
                cache.close()
            ctx.report(progress=0.9, stage="Ordering them by what a label would teach")
            probs = head.predict_proba(features)
            order, doubt = labelling_order(probs, features)
            for i in order.tolist():
                best = probs[i].argsort()[::-1][:GUESSES]
                items.append({"pool_id": task.images[i][0], "sha256": task.images[i][1],
                              "uncertainty": round(float(doubt[i]), 4),
                              "guesses": [{"label": head.classes[k], "confidence": round(float(probs[i, k]), 4)}
                                          for k in best]})
        key = result_key(ctx.job_id)
        blobs.put_bytes(key, json.dumps({"model_id": task.model_id, "version": task.version,
                                         "dataset_id": task.dataset_id, "items": items}).encode())
        ctx.report(progress=1.0, stage=f"{len(items)} images in order")
        return AnalysisJobResult(images=len(task.images), flagged=len(items), key=key,
                                 seconds=round(time.monotonic() - started, 2)).model_dump()
