"""The suspects job: every labelled image of a dataset scored by a head that never saw it, to find labels that
look wrong (``learn/suspects.py`` says how).

The worker passes the dataset's images through the chosen version's extractor (the features are cached per
node, as for growing, so checking again after a few fixes costs seconds), ranks them, and writes the suspects
to the blob store. The API reads them back and drops what has changed since: deleted images, images whose label
the user has changed, and labels the user has confirmed (``images.label_kept``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pigeonhole.compute.handlers import JobContext, JobFailed, JobHandler, Placement, Resources, register
from pigeonhole.db.tables import DatasetImage, Job, Model
from pigeonhole.learn import head_file
from pigeonhole.learn.features import ImageItem, compute_features, node_feature_cache
from pigeonhole.learn.grow import extractor_of
from pigeonhole.learn.suspects import find_suspects
from pigeonhole.models import repository as repo
from pigeonhole.models.job_contracts import AnalysisJobParams, AnalysisJobResult, SuspectsPayload
from pigeonhole.storage.blobs import BlobStore


def result_key(job_id: str) -> str:
    return f"suspects/{job_id}.json"


@register
class SuspectsHandler(JobHandler):
    kind = "suspects"
    resources = Resources(num_cpus=1)
    placement = Placement.ANY
    affinity = "dataset"
    description = "find images whose label looks wrong"

    def prepare(self, db: Session, job: Job) -> dict[str, Any]:
        params = AnalysisJobParams.model_validate(job.params)
        model = db.get(Model, params.model_id)
        version = repo.version(db, params.model_id, params.version) if model is not None else None
        if version is None:
            raise JobFailed("The model version to check with was deleted.")
        if version.head_key is None:
            raise JobFailed("This version keeps no head statistics, so it cannot check labels. Retrain the model.")
        rows = db.execute(select(DatasetImage.id, DatasetImage.sha256, DatasetImage.label, DatasetImage.size_bytes)
                          .where(DatasetImage.dataset_id == params.dataset_id).order_by(DatasetImage.id))
        images = [(image_id, sha, label, size) for image_id, sha, label, size in rows]
        if len({label for _, _, label, _ in images}) < 2:
            raise JobFailed("Checking labels needs images of at least two classes in the dataset.")
        return SuspectsPayload(**params.model_dump(), onnx_key=version.onnx_key, head_key=version.head_key,
                               images=images).model_dump(mode="json")

    def run(self, ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        task = SuspectsPayload.model_validate(payload)
        started = time.monotonic()
        blobs = BlobStore(ctx.blob_url)
        ctx.report(progress=0.05, stage="Loading the model")
        extractor = extractor_of(blobs.read_bytes(task.onnx_key), threads=2)
        head = head_file.read(task.head_key, blobs.map_bytes)
        cache = node_feature_cache(Path(ctx.cache_dir) / "learn", int(ctx.cache_max_bytes))
        ctx.report(progress=0.1, stage=f"Reading {len(task.images)} images")
        try:
            features = compute_features([ImageItem(sha, (lambda s=sha, n=size: blobs.read_blob(s, n)))
                                         for _, sha, _, size in task.images], extractor, cache)
        finally:
            cache.close()
        ctx.report(progress=0.9, stage="Looking for labels that look wrong")
        classes = sorted({label for _, _, label, _ in task.images})
        index = {c: i for i, c in enumerate(classes)}
        y = [index[label] for _, _, label, _ in task.images]
        report = find_suspects(head.map(features), y, len(classes), content=[sha for _, sha, _, _ in task.images],
                               alphas=[head.alpha])  # chosen when the version was trained, on these features
        items = [{"image_id": task.images[s.index][0], "sha256": task.images[s.index][1],
                  "label": classes[s.given], "suggested_label": classes[s.suggested],
                  "confidence": round(s.confidence, 4), "label_probability": round(s.given_probability, 4),
                  "conflict": s.conflict} for s in report.suspects]
        key = result_key(ctx.job_id)
        blobs.put_bytes(key, json.dumps({"model_id": task.model_id, "version": task.version,
                                         "dataset_id": task.dataset_id, "images": len(task.images),
                                         "items": items}).encode())
        ctx.report(progress=1.0, stage=f"{len(items)} images to look at")
        return AnalysisJobResult(images=len(task.images), flagged=len(items), key=key,
                                 seconds=round(time.monotonic() - started, 2)).model_dump()
