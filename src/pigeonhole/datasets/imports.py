"""Remote image imports: a job whose worker fetches and stores images, and whose dispatcher side records them.

The API queues the job with everything the worker needs in its parameters (URLs, labels, fetch
policy, image limits), so the worker needs no database and no server settings. The worker fetches
each URL through the SSRF-guarded fetcher, validates and stores the image (blob store, keyed by
content); the dispatcher then records the stored images in the dataset with the same duplicate and
quota rules as uploads. Replaying the recording is harmless: duplicates are recognised.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from pigeonhole.compute.handlers import JobContext, JobHandler, Placement, Resources, register
from pigeonhole.datasets.ingest import Ingestor, StoredImage, spool, store_image
from pigeonhole.datasets.labels import clean_label
from pigeonhole.db.tables import Dataset, Job
from pigeonhole.errors import Unprocessable
from pigeonhole.settings import Settings, load_settings
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
        clean.append({"url": url, "label": clean_label(label)})
    return {
        "items": clean,
        "policy": asdict(FetchPolicy(allow_private=settings.fetch_allow_private, timeout_s=settings.fetch_timeout_s,
                                     max_bytes=settings.max_image_bytes)),
        "limits": {"max_pixels": settings.max_image_pixels, "max_bytes": settings.max_image_bytes},
    }


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
        blobs = BlobStore(ctx.blob_url)
        policy = FetchPolicy(**payload["policy"])
        limits = ImageLimits(**payload["limits"])
        items = payload["items"]
        outcomes: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            if ctx.cancelled():
                break
            url, label = item["url"], item["label"]
            try:
                fetched = fetch(url, policy)
                with fetched.body:
                    spooled, sha256, size = spool(fetched.body, limits.max_bytes or policy.max_bytes)
                with spooled:
                    stored = store_image(spooled, sha256, size, _name_of(url), blobs=blobs, thumbnails=None,
                                         limits=limits, source_url=url)
                outcomes.append({"url": url, "label": label, "stored": asdict(stored)})
            except FetchRefused as exc:
                outcomes.append({"url": url, "label": label, "reason": exc.sentence, "code": exc.code})
            except ImageRejected as exc:
                outcomes.append({"url": url, "label": label, "reason": exc.sentence, "code": exc.code.value})
            ctx.report(progress=(index + 1) / len(items), stage=f"Fetched {index + 1} of {len(items)} images")
        return {"outcomes": outcomes}

    def on_success(self, db: Session, job: Job, result: dict[str, Any]) -> None:
        dataset = db.get(Dataset, job.dataset_id) if job.dataset_id else None
        if dataset is None or dataset.owner_id != job.owner_id:
            result["summary"] = {"accepted": 0, "duplicates": 0, "rejected": [],
                                 "note": "The dataset was deleted before the import finished."}
            return
        ingestor = Ingestor(db, dataset, settings=load_settings(), blobs=None, thumbnails=None, autocommit=False)
        for outcome in result.get("outcomes", []):
            if "stored" in outcome:
                ingestor.add_stored(StoredImage(**outcome["stored"]), outcome["label"])
            else:
                ingestor.reject(outcome["url"], outcome["reason"], outcome["code"])
        report = ingestor.finish()
        result["summary"] = {"accepted": report.accepted, "duplicates": report.duplicates,
                             "rejected": [asdict(r) for r in report.rejected]}
