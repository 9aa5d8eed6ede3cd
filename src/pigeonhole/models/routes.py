"""HTTP routes for models: train, inspect, versions, activate, export, predict (thin)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile, status
from starlette.background import BackgroundTask

from pigeonhole.api.deps import DbSession, Reader, SettingsDep, Writer
from pigeonhole.api.schemas import ListPage
from pigeonhole.auth.scopes import Principal
from pigeonhole.db.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, paginate
from pigeonhole.db.tables import Model, ModelVersion
from pigeonhole.errors import Conflict, NotFound, Unprocessable
from pigeonhole.jobs.schemas import JobPublic, job_public
from pigeonhole.jobs.service import create_job, get_job
from pigeonhole.learn.neighbours import MAX_NEIGHBOURS
from pigeonhole.models import repository as repo
from pigeonhole.models.batch import results_csv, results_keys
from pigeonhole.models.job_contracts import BatchPredictJobParams
from pigeonhole.models.predict_routes import name_neighbours
from pigeonhole.models.schemas import (
    CautionRequest,
    ClassChange,
    ClassesAdd,
    InputSpecPublic,
    ModelClassRename,
    ModelCreate,
    ModelPublic,
    ModelUpdate,
    RefreshRequest,
    RetrainSuggestion,
    VersionPublic,
)
from pigeonhole.models.service import (
    ModelService,
    TrainingRequest,
)
from pigeonhole.storage.fetch import FetchPolicy
from pigeonhole.storage.images import ImageLimits

router = APIRouter(prefix="/api/v1/models", tags=["models"])


def _service(db: DbSession, principal: Principal, settings: SettingsDep) -> ModelService:
    return ModelService(db, principal.user_id, settings)


def _write_service(db: DbSession, principal: Writer, settings: SettingsDep) -> ModelService:
    return _service(db, principal, settings)


def _read_service(db: DbSession, principal: Reader, settings: SettingsDep) -> ModelService:
    return _service(db, principal, settings)


WriteService = Annotated[ModelService, Depends(_write_service)]
ReadService = Annotated[ModelService, Depends(_read_service)]


def _writable(model_id: str, service: WriteService) -> Model:
    return service.get(model_id)


def _readable(model_id: str, service: ReadService) -> Model:
    return service.get(model_id)


WritableModel = Annotated[Model, Depends(_writable)]
ReadableModel = Annotated[Model, Depends(_readable)]


def model_public(model: Model, active: ModelVersion | None, training: bool = False) -> ModelPublic:
    # "training" is derived: the job's own status says when it runs (a worker never writes the model row).
    status_ = "training" if training and model.status == "queued" else model.status
    suggestion = RetrainSuggestion(**model.retrain_suggested) if model.retrain_suggested else None
    return ModelPublic(id=model.id, name=model.name, dataset_id=model.dataset_id, status=status_,
                       active_version=model.active_version,
                       classes=active.classes if active else (model.requested_classes or []),
                       requested_classes=model.requested_classes or (active.classes if active else []),
                       metrics=active.metrics if active else None, target_accuracy=model.target_accuracy,
                       time_budget_s=model.time_budget_s, preference=model.preference,  # type: ignore[arg-type]
                       job_id=model.job_id, auto_retrain=bool(model.auto_retrain),
                       grow_after_feedback=model.grow_after_feedback or 0,
                       retrain_suggested=suggestion, notes=list((active.lineage or {}).get("notes") or []) if active
                       else [], created_at=model.created_at, updated_at=model.updated_at)


def version_public(row: ModelVersion, model: Model) -> VersionPublic:
    spec = row.input_spec
    return VersionPublic(v=row.v, classes=row.classes, metrics=row.metrics, size_bytes=row.size_bytes,
                         latency_ms=row.latency_ms, throughput=row.throughput, threshold=row.threshold,
                         lineage=row.lineage, created_at=row.created_at, active=row.v == model.active_version,
                         pretrained=(row.lineage.get("extractor") or {}).get("pretrained"),
                         notes=list(row.lineage.get("notes") or []),
                         input=InputSpecPublic(height=spec["height"], width=spec["width"], layout=spec.get("layout",
                                               "NCHW"), dtype=spec.get("dtype", "uint8"), color=spec["color"],
                                               mean=spec.get("mean"), std=spec.get("std"),
                                               crop=spec.get("crop", "center_crop")))


def _public(service: ModelService, model: Model) -> ModelPublic:
    return model_public(model, repo.active_versions(service.db, [model]).get(model.id),
                        model.id in repo.running_jobs(service.db, [model]))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelPublic)
def create_model(body: ModelCreate, service: WriteService) -> ModelPublic:
    """Train a model on a dataset. The first version usually serves within a minute; better ones follow."""
    model = service.create(TrainingRequest(name=body.name, dataset_id=body.dataset_id, classes=body.classes,
                                           target_accuracy=body.target_accuracy, time_budget_s=body.time_budget_s,
                                           preference=body.preference, auto_retrain=bool(body.auto_retrain)))
    return _public(service, model)


@router.get("", response_model=ListPage[ModelPublic])
def list_models(principal: Reader, db: DbSession, cursor: str | None = None,
                limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)) -> ListPage[ModelPublic]:
    """Your models, newest first, with their status and the metrics of the version that serves."""
    page = paginate(db, repo.models_readable_by(principal.user_id), Model.id, cursor=cursor, limit=limit)
    active = repo.active_versions(db, page.items)
    running = repo.running_jobs(db, page.items)
    return ListPage(items=[model_public(m, active.get(m.id), m.id in running) for m in page.items],
                    next_cursor=page.next_cursor)


@router.get("/{model_id}", response_model=ModelPublic)
def get_model(model: ReadableModel, service: ReadService) -> ModelPublic:
    """A model with its status, classes and the metrics of the version that serves."""
    return _public(service, model)


@router.patch("/{model_id}", response_model=ModelPublic)
def update_model(model: WritableModel, body: ModelUpdate, service: WriteService) -> ModelPublic:
    """Rename the model, turn the automatic retrain on or off (``auto_retrain``), or say after how many labelled
    images from production (``POST …/feedback``) it grows by itself (``grow_after_feedback``, 0: never)."""
    return _public(service, service.update(model, name=body.name, auto_retrain=body.auto_retrain,
                                           grow_after_feedback=body.grow_after_feedback))


@router.delete("/{model_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(model: WritableModel, request: Request, service: WriteService) -> Response:
    """Delete a model, all its versions and their files (a running training is cancelled)."""
    keys = service.delete(model)
    blobs = request.app.state.blob_store

    def remove() -> None:
        for key in keys:
            blobs.delete_key(key)

    return Response(status_code=status.HTTP_204_NO_CONTENT, background=BackgroundTask(remove))


@router.post("/{model_id}/retrain", status_code=status.HTTP_202_ACCEPTED, response_model=ModelPublic)
def retrain(model: WritableModel, service: WriteService) -> ModelPublic:
    """Train again from scratch on the dataset as it is now; the current version serves until a better one wins."""
    return _public(service, service.retrain(model))


@router.post("/{model_id}/classes", status_code=status.HTTP_202_ACCEPTED, response_model=ClassChange)
def add_classes(model: WritableModel, body: ClassesAdd, service: WriteService) -> ClassChange:
    """Add classes that exist in the model's dataset: a new version serves them within seconds.

    No retraining: only the new classes' images pass through the model's frozen extractor.
    Follow ``job_id`` (``GET /api/v1/jobs/{id}``) to see when the new version is active.
    """
    job = service.change_classes(model, add=list(body.names), remove=[])
    return ClassChange(model=_public(service, model), job_id=job.id if job else None)


@router.delete("/{model_id}/classes/{name}", status_code=status.HTTP_202_ACCEPTED, response_model=ClassChange)
def remove_class(model: WritableModel, name: str, service: WriteService) -> ClassChange:
    """Remove a class: a new version without it serves within seconds (no retraining)."""
    job = service.change_classes(model, add=[], remove=[name])
    return ClassChange(model=_public(service, model), job_id=job.id if job else None)


@router.patch("/{model_id}/classes/{name}", status_code=status.HTTP_202_ACCEPTED, response_model=ClassChange)
def rename_class(model: WritableModel, name: str, body: ModelClassRename, service: WriteService) -> ClassChange:
    """Rename a class, in the model and in its dataset: a label change only, predictions stay the same.

    A new version with the new name serves within a second or two (follow ``job_id``). Refused while
    the model is training (409): rename once the training has finished.
    """
    job = service.rename_class(model, name, body.name)
    return ClassChange(model=_public(service, model), job_id=job.id if job else None)


@router.post("/{model_id}/batch-predictions", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def batch_predict(model: WritableModel, request: Request, service: WriteService,
                  file: UploadFile | None = File(None, description="a zip of images (any folders)"),
                  urls: str | None = Form(None, description="image addresses, one per line"),
                  top_k: int = Query(3, ge=1, le=100), version: int | None = Query(None, ge=1),
                  neighbours: int = Query(0, ge=0, le=MAX_NEIGHBOURS, description="also list this many training "
                                          "images each image looks like")) -> JobPublic:
    """Classify a whole zip of images or a list of URLs in the background.

    Follow the job; then download the results with ``GET …/batch-predictions/{job_id}?format=csv|json``.
    """
    settings = service.settings
    row = service.serving_version(model, version)
    neighbours_key = (row.lineage or {}).get("neighbours_key")
    if neighbours and neighbours_key is None:
        raise Unprocessable("This version keeps no features of its training images, so it cannot show the images "
                            "an answer looks like. Retrain the model, or ask without 'neighbours'.",
                            code="no_neighbours")
    params = BatchPredictJobParams(
        model_id=model.id, version=row.v, onnx_key=row.onnx_key, top_k=top_k,
        limits=ImageLimits(max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes),
        policy=FetchPolicy(allow_private=settings.fetch_allow_private, timeout_s=settings.fetch_timeout_s,
                           max_bytes=settings.max_image_bytes))
    if neighbours:
        params.neighbours, params.neighbours_key = neighbours, neighbours_key
    if file is not None and file.filename:
        ref = request.app.state.blob_store.put_stream(file.file)
        params.zip_sha256, params.zip_size = ref.sha256, ref.size
    lines = [u.strip() for u in (urls or "").splitlines() if u.strip()]
    if lines:
        if len(lines) > settings.fetch_max_items:
            raise Unprocessable(f"Send at most {settings.fetch_max_items} addresses at a time.", code="too_many_items")
        params.urls = lines
    if params.zip_sha256 is None and not lines:
        raise Unprocessable("Send a zip file of images ('file') or image addresses ('urls').", code="no_images")
    job = create_job(service.db, service.owner_id, "batch-predict", params.model_dump(mode="json"), model_id=model.id,
                     settings=settings)
    return job_public(job)


@router.get("/{model_id}/batch-predictions/{job_id}", response_class=Response,
            responses={200: {"content": {"text/csv": {}, "application/json": {}}}})
def batch_results(model: ReadableModel, job_id: str, request: Request, service: ReadService,
                  format: str = Query("csv", pattern="^(csv|json)$")) -> Response:
    """The results of a finished batch prediction, as CSV or JSON."""
    job = get_job(service.db, service.owner_id, job_id)
    if job.kind != "batch-predict" or job.model_id != model.id:
        raise NotFound("There is no such batch prediction for this model.", code="job_not_found")
    if job.status != "succeeded":
        raise Conflict(f"This batch prediction is {job.status}; results come when it has succeeded.",
                       code="not_finished")
    data = request.app.state.blob_store.read_bytes(results_keys(job.id)[format])
    if BatchPredictJobParams.model_validate(job.params).neighbours:  # name the images it looks like by their ids now
        results = json.loads(request.app.state.blob_store.read_bytes(results_keys(job.id)["json"]))
        name_neighbours(request.app.state.session_factory, model.dataset_id, results["predictions"])
        data = (results_csv(results["predictions"]) if format == "csv" else json.dumps(results, indent=1)).encode()
    media = "text/csv; charset=utf-8" if format == "csv" else "application/json"
    return Response(data, media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="predictions-{job.id}.{format}"'})


@router.post("/{model_id}/refresh", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def refresh(model: WritableModel, service: WriteService, body: RefreshRequest | None = None) -> JobPublic:
    """Use the images added to (or deleted from) the model's classes since its version was made.

    Not automatic: datasets change in many small steps, so you choose when to update; it takes
    seconds and only new images pass through the extractor (the others come from the cache).
    """
    return job_public(service.refresh(model, body.classes if body else None))


@router.post("/{model_id}/caution", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def set_caution(model: WritableModel, service: WriteService, body: CautionRequest) -> JobPublic:
    """Answer "unknown" more or less often: a new version with the same model and another caution, measured again
    on the test images (seconds; no retraining). The model page's figures preview each choice."""
    return job_public(service.set_caution(model, body.caution))


@router.get("/{model_id}/versions", response_model=ListPage[VersionPublic])
def list_versions(model: ReadableModel, service: ReadService, cursor: str | None = None,
                  limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)) -> ListPage[VersionPublic]:
    """Every version of the model, newest first."""
    page = paginate(service.db, repo.versions_of(model.id), ModelVersion.id, cursor=cursor, limit=limit)
    return ListPage(items=[version_public(v, model) for v in page.items], next_cursor=page.next_cursor)


@router.get("/{model_id}/versions/{v}", response_model=VersionPublic)
def get_version(model: ReadableModel, v: int, service: ReadService) -> VersionPublic:
    """One version: classes, metrics (accuracy, per-class figures, confusion matrix), size, speed, lineage."""
    return version_public(service.version(model, v), model)


@router.post("/{model_id}/versions/{v}/activate", response_model=ModelPublic)
def activate_version(model: WritableModel, v: int, service: WriteService) -> ModelPublic:
    """Serve this version from now on (roll back or forward)."""
    return _public(service, service.activate(model, v))


@router.get("/{model_id}/versions/{v}/export", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def export_version(model: ReadableModel, v: int, request: Request, service: ReadService,
                   format: str = Query("onnx", description="only 'onnx' for now")) -> Response:
    """Download the version as one ONNX file (uint8 NCHW pixels in, probabilities out; see the version's input)."""
    if format != "onnx":
        raise Unprocessable("Only format=onnx is available.", code="unsupported_format")
    row = service.version(model, v)
    data = request.app.state.blob_store.read_bytes(row.onnx_key)
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{model.id}-v{v}.onnx"'})
