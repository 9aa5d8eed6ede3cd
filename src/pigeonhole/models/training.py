"""The training job: a thin wrapper that runs the ML core's anytime search on a Ray worker.

Dispatcher side (database): ``prepare`` snapshots the dataset into plain data (sha256, label,
split per image) and the past searches of the model memory; ``on_event`` records each candidate the
search hands over as a new version and activates it at once (the user has a working model within
seconds, better ones replace it); ``on_success`` stores the search in the model memory.
Worker side (no database): ``run`` reads images from the blob store, runs the search, and uploads
each winning candidate's files (ONNX, head statistics, card) to the blob store before emitting it.
The search's last stage, a Ray Tune hyper-parameter search, runs its trials on the job's own cluster.
What crosses between the two (params, payload, the ``version`` event, the result) is typed in
``models/job_contracts.py``.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pigeonhole.compute.handlers import JobContext, JobFailed, JobHandler, Placement, Resources, register
from pigeonhole.db.tables import DatasetImage, Job, Model
from pigeonhole.ids import new_id
from pigeonhole.learn.candidates import CandidateConfig, extractor_classes
from pigeonhole.learn.data import TrainingImage, TrainingSet
from pigeonhole.learn.memory import InMemoryStore, JsonMemoryStore, ModelMemory, SearchRecord
from pigeonhole.learn.search import CandidateResult, SearchConfig, run_search
from pigeonhole.learn.tune import ray_asha_tuner
from pigeonhole.learn.weights import WeightsCatalog
from pigeonhole.learn.weights_fetch import missing_recommended, prefetch
from pigeonhole.models import drift
from pigeonhole.models.job_contracts import (
    ImageRow,
    TrainJobParams,
    TrainJobResult,
    TrainPayload,
    VersionEvent,
    VersionKeys,
)
from pigeonhole.models.manifest import MANIFEST_FILE, Manifest
from pigeonhole.models.service import artifact_prefix, settle_version
from pigeonhole.settings import Settings
from pigeonhole.storage.blobs import BlobStore

MEMORY_FILE = "model_memory.json"


class BlobSource:
    """Image bytes by sha256 from the blob store (sizes checked on read)."""

    def __init__(self, blobs: BlobStore, sizes: dict[str, int]):
        self.blobs = blobs
        self.sizes = sizes

    def open(self, key: str) -> bytes:
        return self.blobs.read_blob(key, self.sizes[key])


def event_extractor_classes(event: VersionEvent) -> list[str] | None:
    """The classes the candidate's extractor was fine-tuned (or trained from scratch) on; None when it is a
    frozen pretrained network. From the search's lineage, else from the candidate's configuration."""
    lineage = event.lineage
    if "extractor_classes" in lineage:
        return lineage["extractor_classes"]
    config = (lineage.get("candidate") or {}).get("config")
    return extractor_classes(CandidateConfig.from_dict(config), event.classes) if config else None


def _memory_store(settings: Settings) -> JsonMemoryStore:
    return JsonMemoryStore(settings.data_dir / MEMORY_FILE)


class _Reporter:
    """Adapts the search's reporter to the job context: progress, cancel, and versions as events."""

    def __init__(self, ctx: JobContext, blobs: BlobStore, model_id: str, manifest: list[ImageRow]):
        self.ctx = ctx
        self.blobs = blobs
        self.model_id = model_id
        self.manifest = Manifest.from_rows(manifest)  # the images a finished candidate's head holds: train and val

    def progress(self, fraction: float, stage: str, eta_s: float | None, metrics: dict[str, Any]) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        self.ctx.report(progress=fraction, stage=stage, eta_s=eta_s, metrics=numbers or None)

    def cancelled(self) -> bool:
        return self.ctx.cancelled()

    def candidate_ready(self, candidate: CandidateResult) -> None:
        version_id = new_id()
        prefix = artifact_prefix(self.model_id, version_id)
        keys: dict[str, str] = {}
        for name in ("model", "head", "card", "neighbours", "held_out"):
            if name not in candidate.artifacts:
                continue
            path = Path(candidate.artifacts[name])
            key = f"{prefix}/{path.name}"
            with path.open("rb") as f:
                self.blobs.put_object(key, f)
            keys[name] = key
        keys["manifest"] = f"{prefix}/{MANIFEST_FILE}"
        self.blobs.put_bytes(keys["manifest"], self.manifest.to_bytes())
        card = candidate.card
        event = VersionEvent(
            version_id=version_id, keys=VersionKeys(**keys), classes=card["classes"], metrics=card["metrics"],
            input=card["input"], threshold=card["unknown_threshold"], size_bytes=candidate.model_size_bytes,
            latency_ms=candidate.latency_ms, throughput=candidate.throughput_img_s, candidate=candidate.name,
            lineage={**card.get("lineage", {}), "candidate": card.get("candidate"),
                     "leaderboard": card.get("leaderboard"), "training": card.get("training"),
                     "extractor": card.get("extractor"), "notes": card.get("notes", [])})
        self.ctx.emit(event.model_dump())


def _fetch_recommended(weights_dir: Path, builtin_weights: bool) -> str | None:
    """Start fetching the recommended publisher extractors that are missing, when the operator allows it (embedded
    installs do by default), beside this training rather than before it: the first version must not wait on a
    download. This training uses what is here; the next ones find the files. A fetch cut short (the job ended, the
    network dropped) leaves its bytes in ``<file>.part`` and the next one resumes; a lock beside each file keeps
    two jobs from fetching it twice."""
    catalog = WeightsCatalog(weights_dir, builtin=builtin_weights, download_timeout_s=10.0)
    missing = missing_recommended(catalog)
    if not missing:
        return None
    threading.Thread(target=prefetch, args=(catalog, missing), name="pigeonhole-weights-fetch", daemon=True).start()
    return f"fetching {', '.join(missing)} from their publishers in the background, for the next trainings"


@register
class TrainHandler(JobHandler):
    kind = "train"
    resources = Resources(num_cpus=1)
    placement = Placement.GPU_PREFERRED
    affinity = "dataset"
    description = "train a model on a dataset (search, fine-tune)"

    def prepare(self, db: Session, job: Job) -> dict[str, Any]:
        params = TrainJobParams.model_validate(job.params)
        if db.get(Model, params.model_id) is None:
            raise JobFailed("The model was deleted before its training started.")
        rows = db.execute(select(DatasetImage.sha256, DatasetImage.label, DatasetImage.split, DatasetImage.size_bytes)
                          .where(DatasetImage.dataset_id == params.dataset_id,
                                 DatasetImage.label.in_(params.classes)).order_by(DatasetImage.id))
        images = [(sha, label, split, size) for sha, label, split, size in rows]
        if not images:
            raise JobFailed("The dataset has no images of the chosen classes any more.")
        settings = self.settings
        payload = TrainPayload(**params.model_dump(), images=images, weights_dir=str(settings.resolved_weights_dir),
                               builtin_weights=settings.builtin_weights, weights_fetch=settings.resolved_weights_fetch,
                               memory=[r.to_json() for r in _memory_store(settings).load()])
        return payload.model_dump(mode="json")

    def run(self, ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        task = TrainPayload.model_validate(payload)
        blobs = BlobStore(ctx.blob_url)
        images = tuple(TrainingImage(key=sha, label=label, split=split, size_bytes=size)
                       for sha, label, split, size in task.images)
        training_set = TrainingSet(images=images, classes=tuple(task.classes))
        source = BlobSource(blobs, {sha: size for sha, _, _, size in task.images})
        work = Path(ctx.cache_dir) / "training" / f"{ctx.job_id}-{ctx.attempt}"
        weights = os.environ.get("PIGEONHOLE_WEIGHTS_DIR") or task.weights_dir
        fetched = _fetch_recommended(Path(weights), task.builtin_weights) if task.weights_fetch else None
        config = SearchConfig(target_accuracy=task.target_accuracy, time_budget_s=float(task.time_budget_s),
                              preference=task.preference, seed=task.seed,
                              weights_dir=Path(weights), builtin_weights=task.builtin_weights,
                              cache_dir=Path(ctx.cache_dir) / "learn",
                              output_dir=work, threads=max(1, int(os.environ.get("PIGEONHOLE_TRAIN_THREADS", "2"))),
                              cache_bytes=int(ctx.cache_max_bytes), job_id=ctx.job_id)
        store = InMemoryStore()
        for record in task.memory:
            store.append(SearchRecord.from_json(record))
        known = len(store.load())
        ctx.cached(f"dataset:{task.dataset_id}")
        try:
            manifest = [row for row in task.images if row[2] != "test"]
            result = run_search(training_set, source, config, _Reporter(ctx, blobs, task.model_id, manifest),
                                memory=ModelMemory(store), tuner=ray_asha_tuner())
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if result.chosen is None and not result.reported and result.stop_reason != "cancelled":
            raise JobFailed("No model could be trained on this data. Check the dataset's health report.")
        outcome = TrainJobResult(stop_reason=result.stop_reason, chosen=result.chosen.name if result.chosen else None,
                                 elapsed_s=round(result.elapsed_s, 2), first_candidate_s=result.first_candidate_s,
                                 leaderboard=result.leaderboard, tuning=result.tuning, mirror_check=result.mirror,
                                 notes=result.notes, weights_fetched=fetched,
                                 memory=[r.to_json() for r in store.load()[known:]])
        return outcome.model_dump()

    def on_event(self, db: Session, job: Job, event: dict[str, Any]) -> None:
        """``event`` is what the worker emitted, as the dispatcher recorded it: parsed here, once."""
        if event.get("type") != "version":
            return
        version = VersionEvent.model_validate(event)
        params = TrainJobParams.model_validate(job.params)
        model = db.get(Model, params.model_id)
        if model is None:  # deleted meanwhile: nothing to record
            return
        keys = version.keys
        spec = {k: v for k, v in version.input.items() if k in ("height", "width", "layout", "dtype", "color",
                                                                "mean", "std", "crop")}
        drift.training_version_recorded(model)
        # A retrain's result serves only if it beats the active version; a first training's always does.
        settle_version(db, model, self.settings, guarded=job.kind == "retrain", classes=version.classes,
                       metrics=version.metrics, input_spec=spec, threshold=version.threshold,
                       size_bytes=version.size_bytes, onnx_key=keys.model, head_key=keys.head, card_key=keys.card,
                       lineage={**version.lineage, "job_id": job.id, "change": "trained", **keys.lineage(),
                                "extractor_classes": event_extractor_classes(version)},
                       latency_ms=version.latency_ms, throughput=version.throughput, job_id=job.id,
                       version_id=version.version_id)

    def on_success(self, db: Session, job: Job, result: dict[str, Any]) -> None:
        """The search's new records go to the model memory file; the dispatcher then stores ``result`` on the job
        row, so they are taken out of that dict (the row keeps what the user is shown)."""
        outcome = TrainJobResult.model_validate(result)
        self._settle_status(db, job, otherwise="failed")
        store = _memory_store(self.settings)
        for record in outcome.memory:
            store.append(SearchRecord.from_json(record))
        result.pop("memory", None)

    def on_failure(self, db: Session, job: Job, reason: str) -> None:
        self._settle_status(db, job, otherwise="failed")

    def on_cancel(self, db: Session, job: Job) -> None:
        self._settle_status(db, job, otherwise="cancelled")

    @staticmethod
    def _settle_status(db: Session, job: Job, *, otherwise: str) -> None:
        """A model with a version is ready whatever became of this job; without one, it is ``otherwise``."""
        model = db.get(Model, TrainJobParams.model_validate(job.params).model_id)
        if model is not None:
            model.status = "ready" if model.active_version is not None else otherwise


@register
class RetrainHandler(TrainHandler):
    """Training again on the dataset as it is now; its versions serve only if they beat the active one."""

    kind = "retrain"
    description = "retrain a model from scratch on its dataset"

