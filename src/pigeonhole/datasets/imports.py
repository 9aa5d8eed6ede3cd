"""Remote image imports: a job whose worker fetches and stores images, and whose dispatcher side records them.

The API queues the job with everything the worker needs in its parameters (URLs, labels, fetch
policy, image limits), so the worker needs no database and no server settings. The worker fetches
each URL through the SSRF-guarded fetcher, validates and stores the image (blob store, keyed by
content); the dispatcher then records the stored images in the dataset with the same duplicate and
quota rules as uploads. Replaying the recording is harmless: duplicates are recognised. Params, payload and
result are typed in ``datasets/import_contract.py``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from pigeonhole.compute.handlers import JobContext, JobHandler, Placement, Resources, register
from pigeonhole.datasets.import_contract import (
    ImportItem,
    ImportJobParams,
    ImportJobResult,
    ImportOutcome,
    ImportPayload,
    ImportSummary,
    RefusedOutcome,
    StoredOutcome,
)
from pigeonhole.datasets.ingest import Ingestor, spool, store_image
from pigeonhole.datasets.labels import clean_label
from pigeonhole.db.tables import Dataset, Job
from pigeonhole.errors import Unprocessable
from pigeonhole.settings import Settings
from pigeonhole.storage.blobs import BlobStore
from pigeonhole.storage.fetch import FetchPolicy, FetchRefused, fetch
from pigeonhole.storage.images import ImageLimits, ImageRejected

MAX_URL_LENGTH = 2048


def import_params(items: list[tuple[str, str]], settings: Settings) -> dict[str, Any]:
    """Validated job parameters for importing ``(url, label)`` pairs (422 with the first problem)."""
    if not items:
        raise Unprocessable("Give at least one image address to import.", code="no_items")
    if len(items) > settings.fetch_max_items:
        raise Unprocessable(f"Import at most {settings.fetch_max_items} images at a time.", code="too_many_items")
    clean = []
    for position, (url, label) in enumerate(items, start=1):
        url = url.strip()
        if len(url) > MAX_URL_LENGTH or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise Unprocessable(f"Item {position}: '{url[:80]}' is not an http:// or https:// address.",
                                code="invalid_url")
        clean.append(ImportItem(url=url, label=clean_label(label)))
    params = ImportJobParams(
        items=clean,
        policy=FetchPolicy(allow_private=settings.fetch_allow_private, timeout_s=settings.fetch_timeout_s,
                           max_bytes=settings.max_image_bytes),
        limits=ImageLimits(max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes))
    return params.model_dump(mode="json")


def _name_of(url: str) -> str:
    path = urlsplit(url).path.rstrip("/")
    return (path.rsplit("/", 1)[-1] or urlsplit(url).hostname or "remote image")[-255:]


@register
class ImportHandler(JobHandler):
    kind = "import"
    resources = Resources(num_cpus=0.5)
    placement = Placement.CPU
    description = "fetch remote images into a dataset"

    def run(self, ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        task = ImportPayload.model_validate(payload)
        blobs = BlobStore(ctx.blob_url)
        policy, limits, items = task.policy, task.limits, task.items
        outcomes: list[ImportOutcome] = []
        for index, item in enumerate(items):
            if ctx.cancelled():
                break
            url, label = item.url, item.label
            try:
                fetched = fetch(url, policy)
                with fetched.body:
                    spooled, sha256, size = spool(fetched.body, limits.max_bytes or policy.max_bytes)
                with spooled:
                    stored = store_image(spooled, sha256, size, _name_of(url), blobs=blobs, thumbnails=None,
                                         limits=limits, source_url=url)
                outcomes.append(StoredOutcome(url=url, label=label, stored=stored))
            except FetchRefused as exc:
                outcomes.append(RefusedOutcome(url=url, label=label, reason=exc.sentence, code=exc.code))
            except ImageRejected as exc:
                outcomes.append(RefusedOutcome(url=url, label=label, reason=exc.sentence, code=exc.code.value))
            ctx.report(progress=(index + 1) / len(items), stage=f"Fetched {index + 1} of {len(items)} images")
        return ImportJobResult(outcomes=outcomes).model_dump(mode="json")

    def on_success(self, db: Session, job: Job, result: dict[str, Any]) -> None:
        """Records the stored images in the dataset. The dispatcher then stores ``result`` on the job row, so the
        summary is written into that dict (the web app and the dataset's health report read it there)."""
        outcome = ImportJobResult.model_validate(result)
        dataset = db.get(Dataset, job.dataset_id) if job.dataset_id else None
        if dataset is None or dataset.owner_id != job.owner_id:
            summary = ImportSummary(accepted=0, duplicates=0, rejected=[],
                                    note="The dataset was deleted before the import finished.")
            result["summary"] = summary.model_dump(mode="json")
            return
        ingestor = Ingestor(db, dataset, settings=self.settings, blobs=None, thumbnails=None, autocommit=False)
        for each in outcome.outcomes:
            if isinstance(each, StoredOutcome):
                ingestor.add_stored(each.stored, each.label)
            else:
                ingestor.reject(each.url, each.reason, each.code)
        report = ingestor.finish()
        summary = ImportSummary(accepted=report.accepted, duplicates=report.duplicates, rejected=report.rejected)
        result["summary"] = summary.model_dump(mode="json")
