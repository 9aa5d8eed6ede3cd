"""HTTP routes for datasets, their classes and images (thin: rules live in the service and ingest)."""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile, status
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from pigeonhole.api.deps import DbSession, Reader, SettingsDep, Writer
from pigeonhole.api.schemas import ListPage
from pigeonhole.datasets import repository as repo
from pigeonhole.datasets.imports import import_params
from pigeonhole.datasets.ingest import Ingestor
from pigeonhole.datasets.pool import discard_pool_image, label_pool_image, pool_image, pool_of
from pigeonhole.datasets.schemas import (
    ClassCount,
    ClassRename,
    DatasetCreate,
    DatasetDetail,
    DatasetSummary,
    DatasetUpdate,
    Health,
    ImageMove,
    ImagePublic,
    ImportRequest,
    PoolImagePublic,
    PoolLabel,
    UploadRejection,
    UploadResult,
)
from pigeonhole.datasets.service import DatasetService, export_zip
from pigeonhole.datasets.thumbnails import MEDIA_TYPE
from pigeonhole.db.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, paginate
from pigeonhole.db.tables import Dataset, DatasetImage, PoolImage
from pigeonhole.errors import Unprocessable
from pigeonhole.extractors import present_extractors
from pigeonhole.jobs.schemas import JobPublic, job_public
from pigeonhole.jobs.service import create_job

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])


def _service(db: DbSession, principal: Writer, settings: SettingsDep) -> DatasetService:
    return DatasetService(db, principal.user_id, partial(present_extractors, settings))


def _reader_service(db: DbSession, principal: Reader, settings: SettingsDep) -> DatasetService:
    return DatasetService(db, principal.user_id, partial(present_extractors, settings))


WriteService = Annotated[DatasetService, Depends(_service)]
ReadService = Annotated[DatasetService, Depends(_reader_service)]


# Resolving the dataset in a dependency answers 404 for another user's id before the body is validated.
def _writable_dataset(dataset_id: str, service: WriteService) -> Dataset:
    return service.get(dataset_id)


def _readable_dataset(dataset_id: str, service: ReadService) -> Dataset:
    return service.get(dataset_id)


WritableDataset = Annotated[Dataset, Depends(_writable_dataset)]
ReadableDataset = Annotated[Dataset, Depends(_readable_dataset)]


def _summary(dataset: Dataset, counts: tuple[int, int]) -> DatasetSummary:
    return DatasetSummary(id=dataset.id, name=dataset.name, created_at=dataset.created_at,
                          updated_at=dataset.updated_at, image_count=counts[0], class_count=counts[1])


def _detail(service: DatasetService, dataset: Dataset) -> DatasetDetail:
    detail = service.detail(dataset)
    counts = (sum(c.count for c in detail.classes), len(detail.classes))
    return DatasetDetail(**_summary(detail.dataset, counts).model_dump(),
                         classes=[ClassCount(name=c.name, count=c.count) for c in detail.classes],
                         health=Health(**detail.health.as_dict()))


def _image_public(image: DatasetImage) -> ImagePublic:
    return ImagePublic(id=image.id, label=image.label, sha256=image.sha256, width=image.width, height=image.height,
                       format=image.format, size_bytes=image.size_bytes, split=image.split,
                       original_name=image.original_name, source_url=image.source_url, created_at=image.created_at,
                       thumbnail_url=f"/api/v1/datasets/{image.dataset_id}/images/{image.id}/thumbnail",
                       label_kept=image.label_kept, origin=image.origin)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetDetail)
def create_dataset(body: DatasetCreate, service: WriteService) -> DatasetDetail:
    """Create an empty dataset; then upload images to it."""
    return _detail(service, service.create(body.name))


@router.get("", response_model=ListPage[DatasetSummary])
def list_datasets(principal: Reader, db: DbSession, cursor: str | None = None,
                  limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)) -> ListPage[DatasetSummary]:
    """Your datasets, newest first, with image and class counts."""
    page = paginate(db, repo.datasets_readable_by(principal.user_id), Dataset.id, cursor=cursor, limit=limit)
    counts = repo.image_counts(db, [d.id for d in page.items])
    return ListPage(items=[_summary(d, counts.get(d.id, (0, 0))) for d in page.items], next_cursor=page.next_cursor)


@router.get("/{dataset_id}", response_model=DatasetDetail)
def get_dataset(dataset: ReadableDataset, service: ReadService) -> DatasetDetail:
    """A dataset with its classes (name and count) and its health report."""
    return _detail(service, dataset)


@router.patch("/{dataset_id}", response_model=DatasetDetail)
def update_dataset(dataset: WritableDataset, body: DatasetUpdate, service: WriteService) -> DatasetDetail:
    """Rename a dataset."""
    return _detail(service, service.rename(dataset, body.name))


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(dataset: WritableDataset, request: Request, service: WriteService) -> Response:
    """Delete a dataset and its images. Stored files nothing else uses are removed afterwards."""
    service.delete(dataset)
    return Response(status_code=status.HTTP_204_NO_CONTENT,
                    background=BackgroundTask(request.app.state.blob_sweeper.run_in_background))


@router.post("/{dataset_id}/uploads", status_code=status.HTTP_201_CREATED, response_model=UploadResult)
def upload(dataset: WritableDataset, request: Request, service: WriteService,
           files: list[UploadFile] = File(description="images, or zip files with one folder per class"),
           label: str | None = Form(None, description="the class of the uploaded images (not needed for zips)"),
           unlabelled: bool = Form(False, description="images to label later: they wait in the dataset's to-label "
                                                      "pool (zip folders are ignored)"),
           ) -> UploadResult:
    """Add images: single images with a ``label``, or zip archives holding one folder per class; or, with
    ``unlabelled``, images to label later.

    Every file is either accepted, reported as a duplicate, or rejected with a reason; files
    accepted before a rejected one are kept.
    """
    if unlabelled and label:
        raise Unprocessable("Images to label later have no class yet: leave out 'label', or 'unlabelled'.",
                            code="label_and_unlabelled")
    state = request.app.state
    ingestor = Ingestor(service.db, dataset, settings=state.settings, blobs=state.blob_store,
                        thumbnails=state.thumbnails, pool="upload" if unlabelled else None)
    for upload_file in files:
        ingestor.add_upload(upload_file.file, upload_file.filename or "upload", label)
    report = ingestor.finish()
    return UploadResult(accepted=report.accepted, duplicates=report.duplicates,
                        rejected=[UploadRejection(name=r.name, reason=r.reason, code=r.code) for r in report.rejected])


@router.post("/{dataset_id}/imports", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def import_images(dataset: WritableDataset, body: ImportRequest, principal: Writer, service: WriteService,
                  settings: SettingsDep) -> JobPublic:
    """Fetch images from web addresses into the dataset, in the background.

    Follow the returned job (``GET /api/v1/jobs/{id}``); its result lists what was accepted and why
    anything was refused.
    """
    params = import_params([(item.url, item.label) for item in body.items], settings)
    job = create_job(service.db, principal.user_id, "import", params, dataset_id=dataset.id, settings=settings)
    return job_public(job)


@router.get("/{dataset_id}/images", response_model=ListPage[ImagePublic])
def list_images(dataset: ReadableDataset, principal: Reader, service: ReadService, label: str | None = None,
                cursor: str | None = None, limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
                ) -> ListPage[ImagePublic]:
    """Browse a dataset's images, newest first, optionally one class only."""
    statement = repo.images_of(principal.user_id, dataset.id)
    if label is not None:
        statement = statement.where(DatasetImage.label == label)
    page = paginate(service.db, statement, DatasetImage.id, cursor=cursor, limit=limit)
    return ListPage(items=[_image_public(i) for i in page.items], next_cursor=page.next_cursor)


@router.patch("/{dataset_id}/images/{image_id}", response_model=ImagePublic)
def move_image(dataset: WritableDataset, image_id: str, body: ImageMove, service: WriteService) -> ImagePublic:
    """Move an image to another class (relabel it)."""
    return _image_public(service.move_image(dataset, image_id, body.label))


@router.post("/{dataset_id}/images/{image_id}/keep-label", response_model=ImagePublic)
def keep_label(dataset: WritableDataset, image_id: str, service: WriteService) -> ImagePublic:
    """The image's label is right although it was flagged as suspect: it is not flagged again unless the label
    changes."""
    return _image_public(service.keep_label(dataset, image_id))


@router.delete("/{dataset_id}/images/{image_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_image(dataset: WritableDataset, image_id: str, request: Request, service: WriteService) -> Response:
    """Delete one image."""
    service.delete_image(dataset, image_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT,
                    background=BackgroundTask(request.app.state.blob_sweeper.run_in_background))


@router.get("/{dataset_id}/images/{image_id}/thumbnail", response_class=Response,
            responses={200: {"content": {MEDIA_TYPE: {}}}})
def thumbnail(dataset: ReadableDataset, image_id: str, request: Request, service: ReadService) -> Response:
    """A small preview of the image (longer side 128 px)."""
    image = service.image(dataset, image_id)
    data = request.app.state.thumbnails.get(image.sha256, image.size_bytes)
    return Response(data, media_type=MEDIA_TYPE, headers={"Cache-Control": "private, max-age=86400"})


@router.get("/{dataset_id}/images/{image_id}/content", response_class=Response)
def image_content(dataset: ReadableDataset, image_id: str, request: Request, service: ReadService) -> Response:
    """The original file as uploaded."""
    image = service.image(dataset, image_id)
    data = request.app.state.blob_store.read_blob(image.sha256, image.size_bytes)
    media = f"image/{image.format.lower()}"
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=86400",
                                                     "X-Content-Type-Options": "nosniff"})


@router.patch("/{dataset_id}/classes/{name}", response_model=DatasetDetail)
def rename_class(dataset: WritableDataset, name: str, body: ClassRename, service: WriteService) -> DatasetDetail:
    """Rename a class (a label change only)."""
    service.rename_class(dataset, name, body.name)
    return _detail(service, dataset)


@router.delete("/{dataset_id}/classes/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_class(dataset: WritableDataset, name: str, request: Request, service: WriteService) -> Response:
    """Delete a class and all its images."""
    service.delete_class(dataset, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT,
                    background=BackgroundTask(request.app.state.blob_sweeper.run_in_background))


@router.get("/{dataset_id}/export", response_class=StreamingResponse,
            responses={200: {"content": {"application/zip": {}}}})
def export_dataset(dataset: ReadableDataset, request: Request, principal: Reader,
                   service: ReadService) -> StreamingResponse:
    """Download the dataset as a zip with one folder per class (it uploads back as it is)."""
    chunks = export_zip(request.app.state.session_factory, request.app.state.blob_store, principal.user_id,
                        dataset.id)
    filename = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset.name)[:80] or "dataset"
    return StreamingResponse(chunks, media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="{filename}.zip"'})



def _pool_public(row: PoolImage) -> PoolImagePublic:
    base = f"/api/v1/datasets/{row.dataset_id}/pool/{row.id}"
    return PoolImagePublic(id=row.id, sha256=row.sha256, width=row.width, height=row.height,
                           original_name=row.original_name, source=row.source, created_at=row.created_at,
                           thumbnail_url=f"{base}/thumbnail", content_url=f"{base}/content")


@router.get("/{dataset_id}/pool", response_model=ListPage[PoolImagePublic])
def list_pool(dataset: ReadableDataset, principal: Reader, service: ReadService, cursor: str | None = None,
              limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)) -> ListPage[PoolImagePublic]:
    """The images waiting for a label, newest first (``…/queue`` orders them by what a label would teach)."""
    page = paginate(service.db, pool_of(principal.user_id, dataset.id), PoolImage.id, cursor=cursor, limit=limit)
    return ListPage(items=[_pool_public(r) for r in page.items], next_cursor=page.next_cursor)


@router.get("/{dataset_id}/pool/{pool_id}/thumbnail", response_class=Response,
            responses={200: {"content": {MEDIA_TYPE: {}}}})
def pool_thumbnail(dataset: ReadableDataset, pool_id: str, principal: Reader, request: Request,
                   service: ReadService) -> Response:
    """A small preview of a waiting image (longer side 128 px)."""
    row = pool_image(service.db, principal.user_id, dataset, pool_id)
    data = request.app.state.thumbnails.get(row.sha256, row.size_bytes)
    return Response(data, media_type=MEDIA_TYPE, headers={"Cache-Control": "private, max-age=86400"})


@router.get("/{dataset_id}/pool/{pool_id}/content", response_class=Response)
def pool_content(dataset: ReadableDataset, pool_id: str, principal: Reader, request: Request,
                 service: ReadService) -> Response:
    """A waiting image's file as uploaded."""
    row = pool_image(service.db, principal.user_id, dataset, pool_id)
    data = request.app.state.blob_store.read_blob(row.sha256, row.size_bytes)
    return Response(data, media_type=f"image/{row.format.lower()}",
                    headers={"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"})


@router.post("/{dataset_id}/pool/{pool_id}/label", status_code=status.HTTP_201_CREATED, response_model=ImagePublic)
def label_from_pool(dataset: WritableDataset, pool_id: str, body: PoolLabel, principal: Writer,
                    service: WriteService) -> ImagePublic:
    """Give a waiting image its class: it joins the dataset. If someone else labelled it first: 404."""
    return _image_public(label_pool_image(service.db, principal.user_id, dataset, pool_id, body.label))


@router.delete("/{dataset_id}/pool/{pool_id}", status_code=status.HTTP_204_NO_CONTENT)
def discard_from_pool(dataset: WritableDataset, pool_id: str, principal: Writer, request: Request,
                      service: WriteService) -> Response:
    """"None of these": the image shows no class of the dataset and leaves the pool."""
    discard_pool_image(service.db, principal.user_id, dataset, pool_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT,
                    background=BackgroundTask(request.app.state.blob_sweeper.run_in_background))
