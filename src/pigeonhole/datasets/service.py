"""Dataset rules: create, inspect, rename, prune, export. Uploads go through ``ingest``."""

from __future__ import annotations

import io
import logging
import os
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pigeonhole.datasets import repository as repo
from pigeonhole.datasets.health import SMALL_IMAGE_SIDE, HealthReport, health_report
from pigeonhole.datasets.labels import clean_label
from pigeonhole.db.base import utcnow
from pigeonhole.db.tables import Dataset, DatasetImage
from pigeonhole.errors import Conflict, NotFound, Unprocessable
from pigeonhole.storage.blob_types import BlobError
from pigeonhole.storage.blobs import BlobStore

log = logging.getLogger(__name__)
MAX_NAME_LENGTH = 200


def clean_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise Unprocessable(f"Give the dataset a name of 1 to {MAX_NAME_LENGTH} characters.", code="invalid_name")
    return name


@dataclass(frozen=True)
class DatasetDetail:
    dataset: Dataset
    classes: list[repo.ClassStats]
    health: HealthReport


class DatasetService:
    def __init__(self, db: Session, owner_id: str, extractors: Callable[[], list[str]] | None = None):
        self.db = db
        self.owner_id = owner_id
        # the server's pretrained extractors, read only when a health report is made (None: unknown)
        self.extractors = extractors

    def create(self, name: str) -> Dataset:
        dataset = Dataset(owner_id=self.owner_id, name=clean_name(name))
        self.db.add(dataset)
        self.db.flush()
        return dataset

    def get(self, dataset_id: str) -> Dataset:
        dataset = repo.dataset_readable_by(self.db, self.owner_id, dataset_id)
        if dataset is None:
            raise NotFound("There is no such dataset.", code="dataset_not_found")
        return dataset

    def detail(self, dataset: Dataset) -> DatasetDetail:
        stats = repo.class_stats(self.db, dataset.id)
        health = health_report(stats, label_conflicts=repo.label_conflicts(self.db, dataset.id),
                               small_images=repo.small_image_count(self.db, dataset.id, SMALL_IMAGE_SIDE),
                               unreadable_urls=repo.unreadable_urls(self.db, dataset.id),
                               pretrained_extractors=self.extractors() if self.extractors else None)
        return DatasetDetail(dataset=dataset, classes=stats, health=health)

    def rename(self, dataset: Dataset, name: str) -> Dataset:
        dataset.name = clean_name(name)
        dataset.updated_at = utcnow()
        return dataset

    def delete(self, dataset: Dataset) -> None:
        self.db.delete(dataset)  # images cascade; their blobs are swept once unreferenced

    # --- classes -------------------------------------------------------------------------------
    def _require_class(self, dataset: Dataset, name: str) -> None:
        if not any(s.name == name for s in repo.class_stats(self.db, dataset.id)):
            raise NotFound(f"This dataset has no class named '{name}'.", code="class_not_found")

    def rename_class(self, dataset: Dataset, old: str, new: str) -> int:
        self._require_class(dataset, old)
        new = clean_label(new)
        if new == old:
            return 0
        if any(s.name == new for s in repo.class_stats(self.db, dataset.id)):
            raise Conflict(f"A class named '{new}' already exists. Move its images or pick another name.",
                           code="class_exists")
        dataset.updated_at = utcnow()
        return repo.rename_label(self.db, dataset.id, old, new)

    def delete_class(self, dataset: Dataset, name: str) -> int:
        self._require_class(dataset, name)
        dataset.updated_at = utcnow()
        return repo.delete_label(self.db, dataset.id, name)

    # --- images --------------------------------------------------------------------------------
    def image(self, dataset: Dataset, image_id: str) -> DatasetImage:
        image = repo.image_readable_by(self.db, self.owner_id, dataset.id, image_id)
        if image is None:
            raise NotFound("There is no such image in this dataset.", code="image_not_found")
        return image

    def delete_image(self, dataset: Dataset, image_id: str) -> None:
        self.db.delete(self.image(dataset, image_id))
        dataset.updated_at = utcnow()

    def move_image(self, dataset: Dataset, image_id: str, label: str) -> DatasetImage:
        image = self.image(dataset, image_id)
        label = clean_label(label)
        if label == image.label:
            return image
        if repo.image_exists(self.db, image.dataset_id, label, image.sha256):
            raise Conflict(f"Class '{label}' already holds this same image.", code="duplicate_image")
        image.label = label
        image.label_kept = False  # a new label has not been looked at
        dataset.updated_at = utcnow()
        return image

    def keep_label(self, dataset: Dataset, image_id: str) -> DatasetImage:
        """The owner has looked at a suspected label and it is right: stop flagging it (until it changes)."""
        image = self.image(dataset, image_id)
        image.label_kept = True
        return image


class _Spout(io.RawIOBase):
    """A write-only stream whose bytes are taken away as they are written: a zip written into it can be sent
    while it is being made (``zipfile`` writes entries with data descriptors when it cannot seek)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


EXPORT_ROWS_PER_FETCH = 1000
MISSING_FILE = "MISSING-FILES.txt"


def export_zip(session_factory: sessionmaker[Session], blobs: BlobStore, owner_id: str,
               dataset_id: str) -> Iterator[bytes]:
    """A zip with one folder per class, made while it is sent: the first bytes leave at once and memory stays
    bounded, whatever the dataset's size (a million images: the rows are read a thousand at a time, in their own
    session, as the response streams).

    File names keep the original name, made unique by a short hash, so exporting and uploading
    again gives the same classes and the same image bytes.
    """
    spout = _Spout()
    missing: list[str] = []
    statement = (select(DatasetImage.label, DatasetImage.original_name, DatasetImage.sha256, DatasetImage.size_bytes)
                 .where(DatasetImage.owner_id == owner_id, DatasetImage.dataset_id == dataset_id)
                 .order_by(DatasetImage.label, DatasetImage.id).execution_options(yield_per=EXPORT_ROWS_PER_FETCH))
    with session_factory() as db, zipfile.ZipFile(spout, "w", compression=zipfile.ZIP_STORED,
                                                  allowZip64=True) as archive:
        for label, original_name, sha256, size in db.execute(statement):
            stem = PurePosixPath(original_name.replace("\\", "/")).name or "image"
            base, ext = os.path.splitext(stem)
            arcname = f"{label}/{base[:80]}-{sha256[:10]}{ext[:8] or '.img'}"
            try:
                source = blobs.open_blob(sha256, size)
            except BlobError as exc:  # the download has started: say so inside the archive instead of breaking it
                log.warning("export of dataset %s: %s", dataset_id, exc)
                missing.append(arcname)
                continue
            with source, archive.open(arcname, "w") as target:
                while chunk := source.read(1024 * 1024):
                    target.write(chunk)
                    if (part := spout.take()):
                        yield part
            if (part := spout.take()):
                yield part
        if missing:
            archive.writestr(MISSING_FILE, "These images of the dataset could not be read from storage and are not "
                             "in this archive (an administrator can check with `pigeonhole doctor`):\n"
                             + "\n".join(missing) + "\n")
    yield spout.take()


class ReferencedShas:
    """A live view of which blobs rows still reference, for :meth:`BlobStore.sweep`."""

    def __init__(self, session_factory: sessionmaker[Session]):
        self.session_factory = session_factory

    def __contains__(self, sha256: object) -> bool:
        with self.session_factory() as db:
            return isinstance(sha256, str) and repo.sha_is_referenced(db, sha256)


class BlobSweeper:
    """Deletes unreferenced blobs in the background (after dataset or image deletions, at most one run at a time)."""

    def __init__(self, session_factory: sessionmaker[Session], blobs: BlobStore, grace_s: float):
        self.referenced = ReferencedShas(session_factory)
        self.blobs = blobs
        self.grace_s = grace_s
        self._lock = threading.Lock()

    def run(self) -> int:
        with self._lock:
            result = self.blobs.sweep(self.referenced, min_age_s=self.grace_s)
            self.blobs.cleanup_temp()
        if result.deleted:
            log.info("swept %d unreferenced blob(s), %d bytes", result.deleted, result.freed_bytes)
        return result.deleted

    def run_in_background(self) -> None:
        if self._lock.locked():
            return
        threading.Thread(target=self._safe_run, name="blob-sweep", daemon=True).start()

    def _safe_run(self) -> None:
        try:
            self.run()
        except Exception:
            log.exception("blob sweep failed")
