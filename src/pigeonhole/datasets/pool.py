"""The to-label pool: images waiting for a label, and giving one.

Labelling moves an image from ``pool_images`` into ``images`` in one transaction, with the split the image
would have got had it been uploaded with that label. The pool row is deleted first and only the request that
deleted it goes on, so two people labelling the same image at once cannot both add it (the second is told
someone else has).
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from pigeonhole.datasets import repository as repo
from pigeonhole.datasets.labels import clean_label
from pigeonhole.datasets.splits import assign_split
from pigeonhole.db.base import utcnow
from pigeonhole.db.tables import Dataset, DatasetImage, PoolImage
from pigeonhole.errors import Conflict, NotFound

GONE = "This image is no longer waiting for a label: someone has labelled or removed it."


def pool_of(owner_id: str, dataset_id: str):  # type: ignore[no-untyped-def]
    return select(PoolImage).where(PoolImage.owner_id == owner_id, PoolImage.dataset_id == dataset_id)


def pool_image(db: Session, owner_id: str, dataset: Dataset, pool_id: str) -> PoolImage:
    row = db.scalar(pool_of(owner_id, dataset.id).where(PoolImage.id == pool_id))
    if row is None:
        raise NotFound(GONE, code="pool_image_not_found")
    return row


def label_pool_image(db: Session, owner_id: str, dataset: Dataset, pool_id: str, label: str) -> DatasetImage:
    """Give a waiting image its label: it joins the dataset (see the module docstring)."""
    label = clean_label(label)
    row = pool_image(db, owner_id, dataset, pool_id)
    taken = db.execute(delete(PoolImage).where(PoolImage.id == row.id, PoolImage.owner_id == owner_id))
    if taken.rowcount != 1:
        raise NotFound(GONE, code="pool_image_not_found")
    if repo.image_exists(db, dataset.id, label, row.sha256):
        raise Conflict(f"Class '{label}' already holds this same image.", code="duplicate_image")
    stats = {s.name: s for s in repo.class_stats(db, dataset.id)}.get(label)
    split = assign_split(row.sha256, class_count_before=stats.count if stats else 0,
                         class_has_val=bool(stats and stats.val_count), class_has_test=bool(stats and stats.test_count))
    image = DatasetImage(dataset_id=dataset.id, owner_id=owner_id, label=label, sha256=row.sha256,
                         size_bytes=row.size_bytes, width=row.width, height=row.height, format=row.format,
                         mode=row.mode, split=split, original_name=row.original_name, source_url=None)
    db.add(image)
    dataset.updated_at = utcnow()
    db.flush()
    return image


def discard_pool_image(db: Session, owner_id: str, dataset: Dataset, pool_id: str) -> None:
    """"None of these": the image belongs to no class of the dataset and leaves the pool."""
    pool_image(db, owner_id, dataset, pool_id)
    db.execute(delete(PoolImage).where(PoolImage.id == pool_id, PoolImage.owner_id == owner_id))
