"""What the admin routes answer that no other domain owns."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ExtractorWeights(BaseModel):
    name: str
    title: str
    origin: Literal["package", "publisher", "operator"] = Field(
        description="package: ships with the product; publisher: fetched from its publisher; operator: imported")
    present: bool
    size_bytes: int | None = Field(default=None, description="the file's size (when missing: as its publisher says)")
    feature_dim: int | None = None
    license: str | None = None
    url: str | None = None
    recommended: bool = False
    format: str | None = None
    how_to_get: str | None = Field(default=None, description="when missing: what brings it, in one sentence")
    problem: str | None = Field(default=None, description="set when the weights catalog itself cannot be read")


class WeightsStatus(BaseModel):
    weights_dir: str
    fetch_allowed: bool = Field(description="whether a training fetches the recommended extractors when missing")
    items: list[ExtractorWeights]
