"""Batch prediction: a zip of images (folders ignored) or a list of URLs, classified by a job.

The API stores the upload in the blob store and queues the job; the worker reads the model file and
the images, predicts in batches with ONNX Runtime, and writes the results to the blob store as JSON
and CSV (one row per image: name, label or empty for unknown, confidence, familiarity, top classes, and
with ``neighbours`` the training images each looks like, by sha256: the API names them by image id when
the results are downloaded, since workers do not read the database). Params, payload and result are typed in
``models/job_contracts.py``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from pigeonhole.compute.handlers import JobContext, JobFailed, JobHandler, Placement, Resources, register
from pigeonhole.learn.neighbours import NeighbourIndex
from pigeonhole.models.job_contracts import BatchPredictJobResult, BatchPredictPayload
from pigeonhole.serving.model import load_model, split_answers
from pigeonhole.serving.preprocess import pixels_for, top_k
from pigeonhole.storage.archives import ArchiveLimits, ArchiveRejected, RejectedEntry, iter_zip
from pigeonhole.storage.blobs import BlobStore
from pigeonhole.storage.fetch import FetchRefused, fetch
from pigeonhole.storage.images import ImageLimits, ImageRejected

BATCH = 32


def results_keys(job_id: str) -> dict[str, str]:
    return {"json": f"batch/{job_id}/results.json", "csv": f"batch/{job_id}/results.csv"}


def results_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV; a ``looks_like`` column when they carry neighbours (image ids, or sha256 where unnamed)."""
    with_neighbours = any("neighbours" in row for row in rows)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["name", "label", "confidence", "familiarity", "top", "error"]
                    + (["looks_like"] if with_neighbours else []))
    for row in rows:
        top = "; ".join(f"{t['label']}={t['confidence']:.4f}" for t in row["top"])
        familiar = row.get("familiarity")
        line = [row["name"], row["label"] or "", "" if row["confidence"] is None else f"{row['confidence']:.6f}",
                "" if familiar is None else f"{familiar:.6f}", top, row.get("error", "")]
        if with_neighbours:
            line.append("; ".join(f"{n.get('image_id') or n.get('sha256')}={n['similarity']:.4f}"
                                  for n in row.get("neighbours") or []))
        writer.writerow(line)
    return out.getvalue()


def _inputs(payload: BatchPredictPayload, blobs: BlobStore,
            limits: ImageLimits) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(name, bytes or None, refusal or None) for every input, read lazily."""
    if payload.zip_sha256:
        with blobs.open_blob(payload.zip_sha256, payload.zip_size) as archive:
            try:
                for entry in iter_zip(archive, limits=ArchiveLimits(max_entry_bytes=limits.max_bytes or 50 << 20),
                                      default_label="-"):
                    if isinstance(entry, RejectedEntry):
                        yield entry.name, None, entry.reason
                    else:
                        yield entry.name, entry.stream.read(), None
            except ArchiveRejected as exc:
                raise JobFailed(exc.sentence) from exc
    for url in payload.urls:
        try:
            fetched = fetch(url, payload.policy)
            with fetched.body:
                yield url, fetched.body.read(), None
        except FetchRefused as exc:
            yield url, None, exc.sentence


@register
class BatchPredictHandler(JobHandler):
    kind = "batch-predict"
    resources = Resources(num_cpus=1)
    placement = Placement.CPU
    affinity = "model"
    description = "predict many images with a model"

    def run(self, ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        task = BatchPredictPayload.model_validate(payload)
        blobs = BlobStore(ctx.blob_url)
        model = load_model(blobs.read_bytes(task.onnx_key), threads=1)
        limits = task.limits
        wanted = task.neighbours
        index = NeighbourIndex.read(task.neighbours_key, blobs.map_bytes) if wanted else None
        rows: list[dict[str, Any]] = []
        pending: list[tuple[str, np.ndarray]] = []

        def flush() -> None:
            if pending:
                probs, familiar, features = split_answers(model, model.run(np.stack([p for _, p in pending])))
                answers = top_k(model, probs, familiar, task.top_k)
                if index is not None:
                    near = index.nearest(features, [model.classes[int(i)] for i in probs.argmax(axis=1)], wanted)
                    for answer, found in zip(answers, near, strict=True):
                        answer["neighbours"] = [{"sha256": n.sha256, "label": n.label, "similarity": n.similarity}
                                                for n in found]
                for (name, _), answer in zip(pending, answers, strict=True):
                    rows.append({"name": name, **answer})
                pending.clear()
                ctx.report(progress=None, stage=f"Classified {len(rows)} images")

        for name, data, refusal in _inputs(task, blobs, limits):
            if ctx.cancelled():
                break
            if refusal is None and data is not None:
                try:
                    pending.append((name, pixels_for(model, data, limits)))
                except ImageRejected as exc:
                    refusal = exc.sentence
            if refusal is not None:
                rows.append({"name": name, "label": None, "confidence": None, "top": [], "error": refusal})
            if len(pending) >= BATCH:
                flush()
        flush()
        keys = results_keys(ctx.job_id)
        blobs.put_bytes(keys["json"], json.dumps({"model_id": task.model_id, "version": task.version,
                                                  "predictions": rows}, indent=1).encode())
        blobs.put_bytes(keys["csv"], results_csv(rows).encode())
        return BatchPredictJobResult(images=len(rows), errors=sum(1 for r in rows if r.get("error")),
                                     results=keys).model_dump()
