"""Turning uploaded files into stored, labelled images, one file at a time with bounded memory.

Each file is copied (hashing as it goes) into a spooled temporary file with a size cap, checked
for duplicates and quota, fully decoded to prove it is a usable image, then stored in the blob
store, thumbnailed and recorded. A file that fails any step is reported with a reason and
leaves nothing behind; files accepted before it are kept (committed in small batches).

Two halves: :func:`store_image` needs no database (an import job's worker runs it next to the
data), :meth:`Ingestor.add_stored` records an already stored image (the dispatcher runs it).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import IO

from sqlalchemy.orm import Session

from pigeonhole.datasets import repository as repo
from pigeonhole.datasets.labels import clean_label
from pigeonhole.datasets.splits import assign_split
from pigeonhole.datasets.thumbnails import Thumbnails
from pigeonhole.db.base import utcnow
from pigeonhole.db.tables import Dataset, DatasetImage, PoolImage
from pigeonhole.errors import STORAGE_FULL_SENTENCE, PigeonholeError, StorageFull, is_storage_full
from pigeonhole.settings import Settings
from pigeonhole.storage.archives import ArchiveLimits, ArchiveRejected, EntryRejected, RejectedEntry, iter_zip
from pigeonhole.storage.blobs import BlobStore
from pigeonhole.storage.images import ImageLimits, ImageRejected, RejectReason, decode_image

SPOOL_IN_MEMORY_BYTES = 4 * 1024 * 1024
COMMIT_EVERY = 50
_CHUNK = 1024 * 1024
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"


@dataclass(frozen=True)
class Rejection:
    name: str
    reason: str
    code: str


@dataclass
class UploadReport:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)  # classes that received images


@dataclass(frozen=True)
class StoredImage:
    """An image proven decodable and written to the blob store: plain data, safe to send between processes."""

    sha256: str
    size: int
    width: int
    height: int
    format: str
    mode: str
    name: str
    source_url: str | None = None


class _FileTooLarge(Exception):
    pass


# Markup that browsers or interpreters would act on, followed by text: a payload is text, while a photo's
# compressed data is near-random bytes. The marker alone is not enough: ``<svg`` in any letter case turns up in
# random bytes once in 540 million positions, so about one 3 MB photo in 170 held it by chance (the 1,000-class
# benchmark lost one of its 100,000 small glyph images to it). Requiring the next 8 bytes to be text too makes that
# about one in 370,000, and a payload that does anything is longer.
_ACTIVE_MARKUP = re.compile(rb"(?:<script|<html|<\?php|<svg|<!doctype html)[\t\n\r\x20-\x7e]{8}", re.IGNORECASE)
_CARRY = 64  # bytes kept from the end of one chunk: a marker and its text may straddle two


def _polyglot_reason(spooled: IO[bytes]) -> str | None:
    """Why a file that decodes as an image is also something else (a zip, a web page), if it is.

    Cameras append harmless trailers after the image, so trailing bytes alone are fine; a complete
    zip archive or active markup inside the file is a polyglot that could be served back as something
    other than a picture.
    """
    spooled.seek(0)
    is_zip = zipfile.is_zipfile(spooled)
    spooled.seek(0)
    if is_zip:
        return "This file is a picture and a zip archive at the same time; upload the two separately."
    tail = b""
    while chunk := spooled.read(1024 * 1024):
        if _ACTIVE_MARKUP.search(tail + chunk):
            spooled.seek(0)
            return "This file hides web page or script code inside the picture, so it is not accepted."
        tail = (tail + chunk)[-_CARRY:]
    spooled.seek(0)
    return None


def store_image(spooled: IO[bytes], sha256: str, size: int, name: str, *, blobs: BlobStore,
                thumbnails: Thumbnails | None, limits: ImageLimits, source_url: str | None = None) -> StoredImage:
    """Decode fully and refuse polyglots (raises ImageRejected), then store the bytes and a thumbnail."""
    decoded = decode_image(spooled, limits=limits)
    polyglot = _polyglot_reason(spooled)
    if polyglot:
        raise ImageRejected(RejectReason.NOT_AN_IMAGE, polyglot)
    spooled.seek(0)
    blobs.put_stream(spooled)
    if thumbnails is not None:
        thumbnails.store(sha256, decoded.image)
    return StoredImage(sha256=sha256, size=size, width=decoded.width, height=decoded.height, format=decoded.format,
                       mode=decoded.mode, name=name[-255:], source_url=source_url)


def spool(stream: IO[bytes], max_bytes: int) -> tuple[IO[bytes], str, int]:
    """Copy into a spooled temp file while hashing; refuses past ``max_bytes`` without reading on."""
    spooled: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115
    digest, size = hashlib.sha256(), 0
    try:
        while chunk := stream.read(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise _FileTooLarge
            digest.update(chunk)
            spooled.write(chunk)
    except BaseException:
        spooled.close()
        raise
    spooled.seek(0)
    return spooled, digest.hexdigest(), size


class Ingestor:
    """Adds files to one dataset. Not thread-safe: one per upload request or import job."""

    def __init__(self, db: Session, dataset: Dataset, *, settings: Settings, blobs: BlobStore | None,
                 thumbnails: Thumbnails | None, autocommit: bool = True, pool: str | None = None,
                 origin: str = "upload"):
        """``blobs`` may be None when only :meth:`add_stored` is used; with ``autocommit`` False the
        caller owns the transaction (the dispatcher ends a job in the same one). With ``pool`` (the source:
        ``upload`` or ``feedback``) images go to the dataset's to-label pool, without a label (zip folders are
        ignored), and an image already in the dataset under any label, or in the pool, is a duplicate."""
        self.pool = pool
        self.origin = origin  # recorded on labelled images: upload, or feedback from production
        self.db = db
        self.dataset = dataset
        self.settings = settings
        self.blobs = blobs
        self.thumbnails = thumbnails
        self.report = UploadReport()
        self.image_limits = ImageLimits(max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes)
        self.archive_limits = ArchiveLimits(max_entry_bytes=settings.max_image_bytes)
        self._used_bytes, self._used_images = repo.owner_usage(db, dataset.owner_id)
        # (count, has a validation image, has a test image) of each class this upload touches, read when the class
        # first comes up: counting every class of a million-image dataset cost 150 ms per upload request.
        self._classes: dict[str, tuple[int, bool, bool]] = {}
        self._uncommitted = 0
        self.autocommit = autocommit
        self.storage_full = False

    # --- entry points ------------------------------------------------------------------------
    def add_upload(self, fileobj: IO[bytes], filename: str, label: str | None) -> None:
        """One uploaded file: a zip archive with a folder per class, or a single image of ``label``."""
        head = fileobj.read(4)
        fileobj.seek(0)
        if head in (ZIP_MAGIC, EMPTY_ZIP_MAGIC) or filename.lower().endswith(".zip"):
            self._add_archive(fileobj, filename, label)
        elif self.pool is not None:
            self.add_image(fileobj, filename, "")
        elif label is None or not label.strip():
            self.reject(filename, "This image has no class: choose a class for it, or upload a zip file with "
                                   "one folder per class.", "no_label")
        else:
            self.add_image(fileobj, filename, label)

    def add_image(self, stream: IO[bytes], name: str, label: str, source_url: str | None = None) -> bool:
        """Store one image under ``label`` (ignored for the pool); returns True when it was accepted."""
        try:
            label = clean_label(label) if self.pool is None else ""
        except PigeonholeError as exc:
            self.reject(name, exc.detail, exc.code)
            return False
        try:
            spooled, sha256, size = spool(stream, self.settings.max_image_bytes)
        except _FileTooLarge:
            mib = self.settings.max_image_bytes / 2**20
            self.reject(name, f"The file is larger than {mib:.0f} MiB.", "file_too_large")
            return False
        except EntryRejected as exc:
            self.reject(name, exc.rejection.reason, exc.rejection.code.value)
            return False
        with spooled:
            return self._store(spooled, sha256, size, name, label, source_url)

    def finish(self) -> UploadReport:
        self._commit()
        return self.report

    # --- steps ---------------------------------------------------------------------------------
    def _add_archive(self, fileobj: IO[bytes], filename: str, label: str | None) -> None:
        entries_seen = 0
        try:
            for entry in iter_zip(fileobj, limits=self.archive_limits, default_label=label or None):
                entries_seen += 1
                if isinstance(entry, RejectedEntry):
                    self.reject(entry.name, entry.reason, entry.code.value)
                else:
                    self.add_image(entry.stream, entry.name, entry.label or "")
        except ArchiveRejected as exc:
            self.reject(filename, exc.sentence, exc.code.value)
            return
        except zipfile.BadZipFile:
            self.reject(filename, "This zip file is damaged and cannot be read.", "corrupt_archive")
            return
        if entries_seen == 0:
            self.reject(filename, "This zip file holds no images.", "empty_archive")

    def _store(self, spooled: IO[bytes], sha256: str, size: int, name: str, label: str,
               source_url: str | None) -> bool:
        if not self._admissible(sha256, size, name, label):
            return False
        if self.blobs is None:
            raise RuntimeError("this ingestor was made without a blob store: only add_stored works")
        if self.storage_full:
            self.reject(name, STORAGE_FULL_SENTENCE, StorageFull.code)
            return False
        try:
            stored = store_image(spooled, sha256, size, name, blobs=self.blobs, thumbnails=self.thumbnails,
                                 limits=self.image_limits, source_url=source_url)
        except ImageRejected as exc:
            self.reject(name, exc.sentence, exc.code.value)
            return False
        except OSError as exc:
            if not is_storage_full(exc):
                raise
            # The blob store wrote through a temp file, so nothing partial is visible. The files accepted
            # so far are kept; this one and the rest of the upload are reported, not attempted.
            self.storage_full = True
            self.reject(name, STORAGE_FULL_SENTENCE, StorageFull.code)
            return False
        self._record(stored, label)
        return True

    def add_stored(self, stored: StoredImage, label: str) -> bool:
        """Record an image another process already validated and stored (imports)."""
        try:
            label = clean_label(label)
        except PigeonholeError as exc:
            self.reject(stored.name, exc.detail, exc.code)
            return False
        if not self._admissible(stored.sha256, stored.size, stored.name, label):
            return False
        self._record(stored, label)
        return True

    def _admissible(self, sha256: str, size: int, name: str, label: str) -> bool:
        """Not a duplicate and within quota; reports why not."""
        if (repo.in_pool_or_dataset(self.db, self.dataset.id, sha256) if self.pool is not None
                else repo.image_exists(self.db, self.dataset.id, label, sha256)):
            self.report.duplicates += 1
            return False
        if (self._used_bytes + size > self.settings.quota_bytes_per_user
                or self._used_images + 1 > self.settings.quota_images_per_user):
            self.reject(name, "Your storage quota is full: delete images or datasets you no longer need, "
                               "or ask the administrator for more space.", "quota_exceeded")
            return False
        return True

    def _record(self, stored: StoredImage, label: str) -> None:
        if self.pool is not None:
            self.db.add(PoolImage(dataset_id=self.dataset.id, owner_id=self.dataset.owner_id, sha256=stored.sha256,
                                  size_bytes=stored.size, width=stored.width, height=stored.height,
                                  format=stored.format, mode=stored.mode, original_name=stored.name,
                                  source=self.pool))
        else:
            self._record_labelled(stored, label)
        self.db.flush()  # a second copy in this same upload is then seen as a duplicate
        self._used_bytes += stored.size
        self._used_images += 1
        self.report.accepted += 1
        self._uncommitted += 1
        if self._uncommitted >= COMMIT_EVERY:
            self._commit()

    def _record_labelled(self, stored: StoredImage, label: str) -> None:
        if label not in self._classes:
            self._classes[label] = repo.class_state(self.db, self.dataset.id, label)
        count, has_val, has_test = self._classes[label]
        split = assign_split(stored.sha256, class_count_before=count, class_has_val=has_val, class_has_test=has_test)
        self._classes[label] = (count + 1, has_val or split == "val", has_test or split == "test")
        self.db.add(DatasetImage(
            dataset_id=self.dataset.id, owner_id=self.dataset.owner_id, label=label, sha256=stored.sha256,
            size_bytes=stored.size, width=stored.width, height=stored.height, format=stored.format,
            mode=stored.mode, split=split, original_name=stored.name, source_url=stored.source_url,
            origin=self.origin,
        ))
        self.report.labels.add(label)

    def reject(self, name: str, reason: str, code: str) -> None:
        """Report a file that was refused before it reached this ingestor (e.g. an unreachable URL)."""
        self.report.rejected.append(Rejection(name=name[-255:], reason=reason, code=code))

    def _commit(self) -> None:
        if self._uncommitted:
            self.dataset.updated_at = utcnow()
        if self.autocommit:
            self.db.commit()
        else:
            self.db.flush()
        self._uncommitted = 0

