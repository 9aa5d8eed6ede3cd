"""Dataset and image queries. Every statement starts from the owner, so other users' rows never match."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, case, delete, func, select, update
from sqlalchemy.orm import Session

from pigeonhole.db.tables import Dataset, DatasetImage, Job, PoolImage


def datasets_readable_by(owner_id: str) -> Select[tuple[Dataset]]:
    return select(Dataset).where(Dataset.owner_id == owner_id)


def dataset_readable_by(db: Session, owner_id: str, dataset_id: str) -> Dataset | None:
    return db.scalar(datasets_readable_by(owner_id).where(Dataset.id == dataset_id))


def images_of(owner_id: str, dataset_id: str) -> Select[tuple[DatasetImage]]:
    return select(DatasetImage).where(DatasetImage.owner_id == owner_id, DatasetImage.dataset_id == dataset_id)


def image_readable_by(db: Session, owner_id: str, dataset_id: str, image_id: str) -> DatasetImage | None:
    return db.scalar(images_of(owner_id, dataset_id).where(DatasetImage.id == image_id))


@dataclass(frozen=True)
class ClassStats:
    name: str
    count: int
    val_count: int
    test_count: int = 0


def class_stats(db: Session, dataset_id: str) -> list[ClassStats]:
    is_val = func.sum(case((DatasetImage.split == "val", 1), else_=0))
    is_test = func.sum(case((DatasetImage.split == "test", 1), else_=0))
    rows = db.execute(
        select(DatasetImage.label, func.count(), is_val, is_test)
        .where(DatasetImage.dataset_id == dataset_id)
        .group_by(DatasetImage.label)
        .order_by(DatasetImage.label)
    )
    return [ClassStats(name=label, count=count, val_count=int(val or 0), test_count=int(test or 0))
            for label, count, val, test in rows]


def class_state(db: Session, dataset_id: str, label: str) -> tuple[int, bool, bool]:
    """(images, has a validation image, has a test image) of one class: what the split rule needs."""
    count, val, test = db.execute(
        select(func.count(), func.sum(case((DatasetImage.split == "val", 1), else_=0)),
               func.sum(case((DatasetImage.split == "test", 1), else_=0)))
        .where(DatasetImage.dataset_id == dataset_id, DatasetImage.label == label)).one()
    return int(count), bool(val), bool(test)


def image_counts(db: Session, dataset_ids: list[str]) -> dict[str, tuple[int, int]]:
    """(images, classes) per dataset, in one query."""
    if not dataset_ids:
        return {}
    rows = db.execute(
        select(DatasetImage.dataset_id, func.count(), func.count(func.distinct(DatasetImage.label)))
        .where(DatasetImage.dataset_id.in_(dataset_ids))
        .group_by(DatasetImage.dataset_id)
    )
    return {dataset_id: (images, classes) for dataset_id, images, classes in rows}


def image_exists(db: Session, dataset_id: str, label: str, sha256: str) -> bool:
    return db.scalar(select(DatasetImage.id).where(
        DatasetImage.dataset_id == dataset_id, DatasetImage.label == label, DatasetImage.sha256 == sha256
    ).limit(1)) is not None


def owner_usage(db: Session, owner_id: str) -> tuple[int, int]:
    """(bytes, images) stored by a user, for quotas: labelled images and those waiting for a label."""
    size, count = db.execute(select(func.coalesce(func.sum(DatasetImage.size_bytes), 0), func.count())
                             .where(DatasetImage.owner_id == owner_id)).one()
    pool_size, pool_count = db.execute(select(func.coalesce(func.sum(PoolImage.size_bytes), 0), func.count())
                                       .where(PoolImage.owner_id == owner_id)).one()
    return int(size) + int(pool_size), int(count) + int(pool_count)


def label_conflicts(db: Session, dataset_id: str) -> int:
    """How many distinct images appear in more than one class (min <> max: more than one label, without the
    count distinct's per-group sort)."""
    per_sha = (select(DatasetImage.sha256).where(DatasetImage.dataset_id == dataset_id)
               .group_by(DatasetImage.sha256).having(func.min(DatasetImage.label) != func.max(DatasetImage.label))
               ).subquery()
    return int(db.scalar(select(func.count()).select_from(per_sha)) or 0)


def small_image_count(db: Session, dataset_id: str, min_side: int) -> int:
    return int(db.scalar(select(func.count()).where(
        DatasetImage.dataset_id == dataset_id,
        (DatasetImage.width < min_side) | (DatasetImage.height < min_side))) or 0)


def rename_label(db: Session, dataset_id: str, old: str, new: str) -> int:
    result = db.execute(update(DatasetImage).where(DatasetImage.dataset_id == dataset_id, DatasetImage.label == old)
                        .values(label=new))
    return result.rowcount or 0


def delete_label(db: Session, dataset_id: str, label: str) -> int:
    result = db.execute(delete(DatasetImage).where(DatasetImage.dataset_id == dataset_id, DatasetImage.label == label))
    return result.rowcount or 0


def sha_is_referenced(db: Session, sha256: str) -> bool:
    return (db.scalar(select(DatasetImage.id).where(DatasetImage.sha256 == sha256).limit(1)) is not None
            or db.scalar(select(PoolImage.id).where(PoolImage.sha256 == sha256).limit(1)) is not None)


def in_pool_or_dataset(db: Session, dataset_id: str, sha256: str) -> bool:
    """The same bytes are waiting for a label in this dataset, or already labelled there (any class)."""
    return (db.scalar(select(PoolImage.id).where(PoolImage.dataset_id == dataset_id, PoolImage.sha256 == sha256)
                      .limit(1)) is not None
            or db.scalar(select(DatasetImage.id).where(DatasetImage.dataset_id == dataset_id,
                                                      DatasetImage.sha256 == sha256).limit(1)) is not None)


FETCH_FAILURE_CODES = frozenset({"unreachable", "timeout", "http_error", "not_an_image", "too_large",
                                 "private_address", "too_many_redirects", "bad_url"})


def unreadable_urls(db: Session, dataset_id: str, recent_jobs: int = 20) -> int:
    """Addresses the latest import jobs of this dataset could not fetch."""
    results = db.scalars(select(Job.result).where(Job.dataset_id == dataset_id, Job.kind == "import",
                                                  Job.status == "succeeded").order_by(Job.id.desc())
                         .limit(recent_jobs))
    return sum(1 for result in results for r in (result or {}).get("summary", {}).get("rejected", [])
               if r.get("code") in FETCH_FAILURE_CODES)
