"""Request and response bodies for models, versions and predictions."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from pigeonhole.api.schemas import Text

Preference = Literal["fast", "balanced", "accurate"]


class ModelCreate(BaseModel):
    name: Text = Field(max_length=400, examples=["Garden birds"])
    dataset_id: Text = Field(max_length=64)
    classes: list[Text] | None = Field(default=None, description="train on these classes only (default: all)")
    target_accuracy: float | None = Field(default=None, ge=0, le=1, description="stop once this is reached")
    time_budget_s: int | None = Field(default=None, ge=10, le=7 * 24 * 3600, description="longest training time")
    preference: Preference = "balanced"
    # Optional (null = off) so that clients written before the setting existed keep type-checking.
    auto_retrain: bool | None = Field(default=None, description="retrain by itself when classes added later "
                                      "are recognised clearly less well than the original ones (see "
                                      "retrain_suggested); default off")


class ModelUpdate(BaseModel):
    name: Text | None = Field(default=None, max_length=400)
    auto_retrain: bool | None = None
    grow_after_feedback: int | None = Field(default=None, ge=0, le=100_000, description="grow by itself once this "
                                            "many images have come back from production with a label (0: only "
                                            "when you ask)")


class RetrainSuggestion(BaseModel):
    gap_points: float = Field(description="how many points less well (validation recall) the classes added "
                              "since the last training are recognised than the original ones")
    reason: str


class InputSpecPublic(BaseModel):
    height: int
    width: int
    layout: str
    dtype: str
    color: str
    mean: list[float] | None = None
    std: list[float] | None = None
    crop: Literal["center_crop", "resize"] = Field(
        default="center_crop",
        description="how an image becomes height x width before it goes in (copy it when running the exported "
                    "file elsewhere): center_crop = shorter side to round(height / 0.875), then the centre square; "
                    "resize = the whole image squeezed to the square (small images)")


class VersionPublic(BaseModel):
    v: int
    classes: list[str]
    metrics: dict[str, Any]
    size_bytes: int
    latency_ms: float | None
    throughput: float | None = Field(description="images per second when predicting in batches")
    threshold: float = Field(description="the caution: below this familiarity the answer is 'unknown' (for versions "
                             "made before familiarity existed, a confidence)")
    lineage: dict[str, Any]
    input: InputSpecPublic
    created_at: datetime
    active: bool
    pretrained: bool | None = Field(default=None, description="whether its image extractor was pretrained (false: "
                                    "trained from scratch, much less accurate on photos; null: not recorded)")
    notes: list[str] = Field(default_factory=list, description="plain sentences about how this version was built "
                             "that its user should know, e.g. that no pretrained extractor was available")


class ModelPublic(BaseModel):
    id: str
    name: str
    dataset_id: str | None
    status: str
    active_version: int | None
    classes: list[str]
    requested_classes: list[str] = Field(description="the classes it will have once the class changes under "
                                         "way are done (equal to classes when none is)")
    metrics: dict[str, Any] | None = Field(description="of the active version")
    target_accuracy: float | None
    time_budget_s: int
    preference: Preference
    job_id: str | None
    auto_retrain: bool = False
    grow_after_feedback: int = 0
    retrain_suggested: RetrainSuggestion | None = Field(
        default=None, description="set when a retrain would likely do better than the class changes made "
        "since the last training; cleared once a newer training version exists")
    notes: list[str] = Field(default_factory=list, description="what the user should know about the active "
                             "version, in plain sentences (e.g. that no pretrained extractor was available)")
    created_at: datetime
    updated_at: datetime


class PredictionTop(BaseModel):
    label: str
    confidence: float


class Neighbour(BaseModel):
    image_id: str | None = Field(description="the training image in the model's dataset (null if since deleted)")
    sha256: str = Field(description="the image's content hash")
    label: str
    similarity: float = Field(description="cosine similarity of the two images' features, 1 = the same")
    thumbnail_url: str | None = None


class Prediction(BaseModel):
    label: str | None = Field(description="null means 'unknown': the image looks unlike the images the model was "
                              "taught (its familiarity is below the version's caution)")
    confidence: float
    familiarity: float | None = Field(default=None, description="0-1: the share of the taught classes' ordinary "
                                      "images that look less familiar than this one")
    top: list[PredictionTop]
    neighbours: list[Neighbour] | None = Field(default=None, description="with neighbours=k: the k training "
                                               "images of the predicted class that look most alike")
    name: str | None = None
    prediction_id: str | None = Field(default=None, description="send it with the image to "
                                      "POST /models/{model_id}/feedback when this answer was wrong or unsure")


class PredictionResult(BaseModel):
    model_id: str
    version: int
    predictions: list[Prediction]


class PredictImage(BaseModel):
    base64: Text | None = None
    url: Text | None = Field(default=None, max_length=2048)


class PredictRequest(BaseModel):
    images: list[PredictImage]


class ClassesAdd(BaseModel):
    names: list[Text] = Field(min_length=1, description="classes of the model's dataset to add")


class ModelClassRename(BaseModel):
    name: Text = Field(description="the class's new name (renamed in the model's dataset too)")


class ClassChange(BaseModel):
    model: ModelPublic
    job_id: str | None = Field(description="the job making the new version; null when no version exists yet "
                                           "(the training's first version will include the change) or when "
                                           "nothing changes")


class CautionRequest(BaseModel):
    caution: float = Field(ge=0, le=0.5, description="the share of ordinary images of the taught classes to answer "
                           "'unknown' (0.05 = 5 %); rounded to whole percents, as the model page's figures are")


class RefreshRequest(BaseModel):
    classes: list[Text] | None = Field(default=None, description="classes whose images changed (default: all)")


class FeedbackResult(BaseModel):
    destination: Literal["dataset", "pool"] = Field(description="dataset: added with your label; pool: waiting for "
                                                    "someone to label it")
    duplicate: bool = Field(description="the same image was already there: nothing was added")
    grow_job_id: str | None = Field(default=None, description="the model started growing with the feedback")
