"""``pigeonhole doctor``: check that the database and the blob store agree, and repair what can be.

- image rows whose file is missing or has the wrong size (the file is gone: the row is removed with
  ``--fix``, since nothing can be served or trained from it);
- files no row references, older than the sweep grace period (deleted with ``--fix``);
- temporary files left by crashed writers (deleted with ``--fix``);
- model versions whose ONNX file is missing (reported; an inactive one is removed with ``--fix``,
  an active one is left for the user to roll back or retrain).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pigeonhole.datasets.service import ReferencedShas
from pigeonhole.db.tables import DatasetImage, Model, ModelVersion
from pigeonhole.storage.blob_types import BlobCorrupt, BlobMissing
from pigeonhole.storage.blobs import BlobStore


@dataclass
class Findings:
    missing_images: list[str] = field(default_factory=list)  # image ids
    broken_versions: list[tuple[str, int, bool]] = field(default_factory=list)  # (model id, v, active)
    orphan_blobs_deleted: int = 0
    orphan_blobs_kept_recent: int = 0
    temp_files_removed: int = 0
    fixed: bool = False

    @property
    def healthy(self) -> bool:
        return not self.missing_images and not self.broken_versions

    def lines(self) -> list[str]:
        verb = "removed" if self.fixed else "found"
        out = [f"{len(self.missing_images)} image record(s) whose file is missing or damaged ({verb})."]
        for model_id, v, active in self.broken_versions:
            state = "ACTIVE: roll back or retrain this model" if active else ("removed" if self.fixed else "inactive")
            out.append(f"model {model_id} version {v}: its model file is missing ({state}).")
        if self.fixed:
            out.append(f"{self.orphan_blobs_deleted} unreferenced file(s) deleted, {self.orphan_blobs_kept_recent} "
                       f"recent one(s) kept; {self.temp_files_removed} temporary file(s) removed.")
        out.append("Everything is consistent." if self.healthy or self.fixed else "Run with --fix to repair.")
        return out


def check(session_factory: sessionmaker[Session], blobs: BlobStore, *, fix: bool, grace_s: float) -> Findings:
    findings = Findings(fixed=fix)
    with session_factory() as db:
        for image_id, sha, size in db.execute(select(DatasetImage.id, DatasetImage.sha256, DatasetImage.size_bytes)):
            try:
                blobs.open_blob(sha, size).close()  # size checked on open
            except (BlobMissing, BlobCorrupt):
                findings.missing_images.append(image_id)
        versions = select(ModelVersion, Model.active_version).join(Model, Model.id == ModelVersion.model_id)
        for row, active in db.execute(versions):
            if not blobs.key_exists(row.onnx_key):
                findings.broken_versions.append((row.model_id, row.v, active == row.v))
        if fix:
            for image_id in findings.missing_images:
                image = db.get(DatasetImage, image_id)
                if image is not None:
                    db.delete(image)
            for model_id, v, active in findings.broken_versions:
                if not active:
                    db.execute(ModelVersion.__table__.delete().where(ModelVersion.model_id == model_id,
                                                                     ModelVersion.v == v))
            db.commit()
    if fix:
        swept = blobs.sweep(ReferencedShas(session_factory), min_age_s=grace_s)
        findings.orphan_blobs_deleted, findings.orphan_blobs_kept_recent = swept.deleted, swept.kept_recent
        findings.temp_files_removed = blobs.cleanup_temp()
    return findings
