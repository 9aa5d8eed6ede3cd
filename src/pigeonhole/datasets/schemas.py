"""Request and response bodies for datasets, classes and images."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from pigeonhole.api.schemas import Text


class DatasetCreate(BaseModel):
    name: Text = Field(max_length=400, examples=["Birds in the garden"])


class DatasetUpdate(BaseModel):
    name: Text = Field(max_length=400)


class ClassCount(BaseModel):
    name: str
    count: int


class Health(BaseModel):
    ready_to_train: bool = Field(description="at least two classes, each with at least 5 images")
    images: int
    classes: int
    below_minimum: list[str] = Field(description="classes with fewer than 5 images (cannot train yet)")
    below_recommended: list[str] = Field(description="classes with fewer than 20 images")
    imbalance_ratio: float | None = Field(description="largest class / smallest class")
    label_conflicts: int = Field(description="images that appear in more than one class")
    small_images: int = Field(description="images smaller than 32 px on a side")
    unreadable_urls: int
    pretrained_extractors: list[str] = Field(default_factory=list, description="the server's pretrained image "
                                             "extractors (none: photo models are trained from scratch)")
    messages: list[str] = Field(description="what to do next, in plain words")


class DatasetSummary(BaseModel):
    id: str
    name: str
    created_at: datetime
    updated_at: datetime
    image_count: int
    class_count: int


class DatasetDetail(DatasetSummary):
    classes: list[ClassCount]
    health: Health


class UploadRejection(BaseModel):
    name: str
    reason: str
    code: str


class UploadResult(BaseModel):
    accepted: int
    duplicates: int
    rejected: list[UploadRejection]


class ImagePublic(BaseModel):
    id: str
    label: str
    sha256: str
    width: int
    height: int
    format: str
    size_bytes: int
    split: str
    original_name: str
    source_url: str | None
    created_at: datetime
    thumbnail_url: str
    label_kept: bool = False  # flagged as a suspected mislabel, looked at, and kept
    origin: str = Field("upload", description="upload, or feedback: sent back from production with this label")


class PoolImagePublic(BaseModel):
    """An image waiting for a label."""

    id: str
    sha256: str
    width: int
    height: int
    original_name: str
    source: str = Field(description="upload, or feedback (sent back from production as unsure)")
    created_at: datetime
    thumbnail_url: str
    content_url: str


class PoolLabel(BaseModel):
    label: str = Field(min_length=1, max_length=100, description="the class the image shows")


class ImageMove(BaseModel):
    label: Text = Field(max_length=400, description="the class to move the image to")


class ClassRename(BaseModel):
    name: Text = Field(max_length=400)


class ImportItem(BaseModel):
    url: Text = Field(max_length=2048, examples=["https://example.com/photos/robin.jpg"])
    label: Text = Field(max_length=400, examples=["robin"])


class ImportRequest(BaseModel):
    items: list[ImportItem] = Field(description="images to fetch, each with its class")
