"""Datasets and their labelled images. Image bytes live in the blob store, addressed by sha256."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from pigeonhole.db.base import Base, CreatedMixin, IdMixin, UTCDateTime, utcnow


class Dataset(IdMixin, CreatedMixin, Base):
    __tablename__ = "datasets"

    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class DatasetImage(IdMixin, CreatedMixin, Base):
    """One labelled image of a dataset. The same bytes may appear in several datasets or classes."""

    __tablename__ = "images"
    __table_args__ = (
        # The same bytes twice in one class are stored once: a duplicate. Bytes first: a dataset's images in
        # sha256 order are then read from the index alone (images filed under several classes, at a million rows).
        UniqueConstraint("dataset_id", "sha256", "label", name="uq_images_dataset_sha256_label"),
        Index("ix_images_dataset_label_id", "dataset_id", "label", "id"),  # a class's pages, newest first
        Index("ix_images_dataset_id", "dataset_id", "id"),  # a dataset's pages, newest first
        Index("ix_images_sha256", "sha256"),
    )

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False)
    # Denormalised owner: tenant filters and per-user quotas need no join.
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    label: Mapped[str] = mapped_column(String(100), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    format: Mapped[str] = mapped_column(String(10), nullable=False)
    mode: Mapped[str] = mapped_column(String(4), nullable=False)  # RGB or L after decoding
    split: Mapped[str] = mapped_column(String(5), nullable=False)  # train, val or test
    original_name: Mapped[str] = mapped_column(String(255), nullable=False)
    source_url: Mapped[str | None] = mapped_column(Text)
    # The owner looked at this image's label when it was flagged as suspect and kept it: not flagged again until
    # the label changes (moving the image clears it).
    label_kept: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false(), nullable=False)
    # "feedback": sent back from production with the caller's label (POST /models/{id}/feedback)
    origin: Mapped[str] = mapped_column(String(10), default="upload", server_default="upload", nullable=False)


class PoolImage(IdMixin, CreatedMixin, Base):
    """An image waiting for a label: uploaded without one, or sent back from production as "unsure". It joins the
    dataset (``images``) when someone labels it; nothing else (training, counts, health) sees it before."""

    __tablename__ = "pool_images"
    __table_args__ = (UniqueConstraint("dataset_id", "sha256", name="uq_pool_images_dataset_sha256"),)

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True,
                                            nullable=False)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), index=True, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    format: Mapped[str] = mapped_column(String(10), nullable=False)
    mode: Mapped[str] = mapped_column(String(4), nullable=False)
    original_name: Mapped[str] = mapped_column(String(255), nullable=False)
    source: Mapped[str] = mapped_column(String(10), default="upload", nullable=False)  # upload or feedback
