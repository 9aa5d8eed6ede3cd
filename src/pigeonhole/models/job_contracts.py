"""Typed contracts of the model jobs (train, retrain, expand, batch-predict): what crosses each process boundary.

A job's **params** are stored on its row by the API (``models/service.py``, ``models/routes.py``); ``prepare``
in the dispatcher turns them into the **payload** a Ray worker's ``run`` gets; the worker emits **events**
(training's ``version``) and returns a **result**, both read back in the dispatcher. Builders dump these
models to plain JSON and handlers parse them once at the top of each hook, so producer and consumer agree
through the types instead of string keys. Fields that older rows may lack have the defaults today's readers
assumed, and no key is renamed: stored params, events and results keep their JSON shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from pigeonhole.jobs.contract import JobContract
from pigeonhole.storage.fetch import FetchPolicy
from pigeonhole.storage.images import ImageLimits

# One image a job reads: sha256 (its blob key), label, split (train, val or test), size in bytes.
ImageRow = tuple[str, str, str, int]


class VersionKeys(JobContract):
    """The blob keys of a version's files. Only the ONNX file is certain: a version made before heads, neighbour
    indexes or manifests were kept lacks those, and the key is then absent rather than null."""

    omitted_when_none = frozenset({"head", "card", "neighbours", "manifest", "held_out"})

    model: str
    head: str | None = None
    card: str | None = None
    neighbours: str | None = None
    manifest: str | None = None  # the images the version's head holds (train and val): ``models/manifest.py``
    held_out: str | None = None  # the features of the test images it was measured on: ``learn/held_out.py``

    def lineage(self) -> dict[str, str | None]:
        """The keys a version row keeps in its lineage (the model file, head and card have columns of their own)."""
        return {f"{name}_key": getattr(self, name) for name in LINEAGE_FILES}


LINEAGE_FILES = ("manifest", "neighbours", "held_out")  # a version's files named in its lineage as ``{name}_key``


# --- train and retrain -------------------------------------------------------------------------------------------

class TrainJobParams(JobContract):
    """What a (re)training job row stores (``ModelService._start_training``)."""

    model_id: str
    dataset_id: str
    classes: list[str]
    time_budget_s: int
    target_accuracy: float | None = None
    preference: str = "balanced"
    seed: int = 0


class TrainPayload(TrainJobParams):
    """What ``prepare`` hands the worker: the params, the dataset as plain rows and what the worker needs of the
    dispatcher's settings (it reads no settings of its own) and of the model memory (it reads no files of the
    dispatcher's)."""

    images: list[ImageRow]
    weights_dir: str
    builtin_weights: bool = True
    weights_fetch: bool = False
    memory: list[dict[str, Any]] = Field(default_factory=list)  # learn.memory.SearchRecord.to_json() each


class VersionEvent(JobContract):
    """A candidate the search hands over while it runs, its files already in the blob store: the dispatcher records
    it as a new version at once (``TrainHandler.on_event``)."""

    type: Literal["version"] = "version"
    version_id: str
    keys: VersionKeys
    classes: list[str]
    metrics: dict[str, Any]
    input: dict[str, Any]  # the input spec of the ONNX file (size, layout, normalisation)
    threshold: float
    size_bytes: int
    latency_ms: float | None = None
    throughput: float | None = None
    candidate: str | None = None
    # The card's lineage plus the candidate, leaderboard, training, extractor and notes the user is shown.
    lineage: dict[str, Any] = Field(default_factory=dict)


class TrainJobResult(JobContract):
    """What a training returns; stored on the job row (the web app shows ``elapsed_s``, ``leaderboard`` and
    ``chosen``) without ``memory``, which ``on_success`` moves into the model memory file."""

    stop_reason: str
    chosen: str | None = None
    elapsed_s: float
    first_candidate_s: float | None = None
    leaderboard: list[dict[str, Any]] = Field(default_factory=list)
    tuning: dict[str, Any] | None = None
    mirror_check: dict[str, Any] | None = None
    notes: list[str] = Field(default_factory=list)
    weights_fetched: str | None = None
    memory: list[dict[str, Any]] = Field(default_factory=list)  # the search's new records


# --- expand ------------------------------------------------------------------------------------------------------

class ExpandJobParams(JobContract):
    """What an expand job row stores: the version to grow from and the change (``ModelService.expand_from``,
    ``refresh``, ``set_caution``). Everything but the additions and removals is written only when asked for."""

    model_id: str
    base_version: int
    add: list[str]
    remove: list[str]
    rename: dict[str, str] = Field(default_factory=dict)  # {old: new}: labels only
    refresh: list[str] = Field(default_factory=list)  # classes rebuilt from their current images
    caution: float | None = None  # a new "unknown" cut, nothing else changes
    guarded: bool = False  # the result serves only if it beats the active version (a retrain's)


class BaseSpeed(JobContract):
    """The base version's measured speed; reused when known (the extractor, nearly all of the cost, is the same)."""

    latency_ms: float | None = None
    throughput_img_s: float | None = None


class ExpandPayload(ExpandJobParams):
    """What ``prepare`` hands the worker: the params and the base version's files, figures and images."""

    onnx_key: str
    head_key: str
    classes: list[str]  # the classes after the change
    images: list[ImageRow]  # the dataset's images of those classes (with keep_settings: test and new classes' only)
    keep_settings: bool = False  # the base's ridge strength, temperature and detector carry over (expansion.py)
    manifest_key: str | None = None
    neighbours_key: str | None = None
    held_out_key: str | None = None
    base_speed: BaseSpeed = Field(default_factory=BaseSpeed)
    base_metrics: dict[str, Any] = Field(default_factory=dict)
    extractor_classes: list[str] | None = None  # what the base's extractor was fine-tuned on (None: pretrained)

    @field_validator("base_metrics", mode="before")
    @classmethod
    def _no_metrics_is_empty(cls, value: Any) -> Any:
        """A version recorded without figures has null metrics: read it as none, as the worker always did."""
        return {} if value is None else value


class ExpandJobResult(JobContract):
    """The new version a class change made, its files in the blob store; stored on the job row."""

    version_id: str
    keys: VersionKeys
    classes: list[str]
    metrics: dict[str, Any]
    threshold: float
    size_bytes: int
    input: dict[str, Any]
    latency_ms: float | None = None
    throughput: float | None = None
    seconds: float
    stage_seconds: dict[str, float] = Field(default_factory=dict)


# --- batch-predict -----------------------------------------------------------------------------------------------

class BatchPredictJobParams(JobContract):
    """What a batch-prediction job row stores (``routes.batch_predict``): everything the worker needs, so its
    payload is these params unchanged. Inputs are a stored zip, a list of addresses, or both."""

    model_id: str
    version: int
    onnx_key: str
    top_k: int
    limits: ImageLimits
    policy: FetchPolicy
    neighbours: int = 0  # how many training images each answer names (0: none)
    neighbours_key: str | None = None
    zip_sha256: str | None = None
    zip_size: int | None = None
    urls: list[str] = Field(default_factory=list)


# ``prepare`` passes the params through: the worker gets exactly what the row stores.
BatchPredictPayload = BatchPredictJobParams


class BatchPredictJobResult(JobContract):
    """Counts and where the results are (``batch.results_keys``: ``json`` and ``csv`` blob keys)."""

    images: int
    errors: int
    results: dict[str, str]


# --- suspects and the labelling queue: a dataset read with a version's extractor ------------------------------

class AnalysisJobParams(JobContract):
    """What a suspects or queue job row stores (``dataset_analyses.start``): the dataset read with a version."""

    model_id: str
    version: int
    dataset_id: str


class SuspectsPayload(AnalysisJobParams):
    """What ``prepare`` hands the worker: the version's files and every labelled image of the dataset as
    (image id, sha256, label, size)."""

    onnx_key: str
    head_key: str
    images: list[tuple[str, str, str, int]]


class QueuePayload(AnalysisJobParams):
    """What ``prepare`` hands the worker: the version's files and the images waiting for a label as
    (pool id, sha256, size)."""

    onnx_key: str
    head_key: str
    images: list[tuple[str, str, int]]


class AnalysisJobResult(JobContract):
    """How many images were read and listed, and the blob with the ranked list."""

    images: int
    flagged: int  # suspects: images flagged; queue: images ranked
    key: str
    seconds: float
