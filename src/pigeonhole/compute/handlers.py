"""Job kinds are pluggable: a ``JobHandler`` subclass per kind, registered by name.

Each hook runs in a definite process:

- ``prepare(db, job) -> payload``: dispatcher, before each attempt; may read the DB; returns plain
  JSON-able data (ids, blob keys, numbers), never ORM objects.
- ``run(ctx, payload) -> result``: a Ray worker; never touches the DB. Reports through ``ctx``.
- ``on_event(db, job, event)``: dispatcher, once per event the worker ``emit``-ted (exactly once per
  job, attempt and sequence number; ignored once the job is cancelled or finished).
- ``on_success(db, job, result)`` / ``on_failure(db, job, reason)`` / ``on_cancel(db, job)``: dispatcher,
  once per job, in the same transaction that ends the job.

This module imports neither Ray nor the web stack: the API uses it to validate kinds and to read
their resource needs when it writes a job row.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol

from sqlalchemy.orm import Session

from pigeonhole.db.tables import Job
from pigeonhole.settings import Settings
from pigeonhole.storage.cache import DiskCache

# Modules that register handlers when imported (by the API and by the dispatcher, on first lookup).
# Other domains list their module here. The built-in declarations only fill kinds that no real handler
# registered (whatever the import order); a listed module that does not exist (yet) is skipped.
HANDLER_MODULES: list[str] = ["pigeonhole.compute.builtin", "pigeonhole.datasets.imports", "pigeonhole.models.training",
                              "pigeonhole.models.expansion", "pigeonhole.models.batch",
                              "pigeonhole.models.suspects", "pigeonhole.models.queue"]


class Placement(StrEnum):
    GPU_PREFERRED = "gpu-preferred"  # GPU-class nodes when the cluster has any, CPU nodes otherwise
    CPU = "cpu"  # CPU-class nodes; GPU-class nodes only when there is no CPU node at all
    ANY = "any"


@dataclass(frozen=True)
class Resources:
    """What one attempt asks Ray for. ``memory`` is in bytes; ``custom`` names custom Ray resources."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None
    custom: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "memory": self.memory,
                "custom": dict(self.custom)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resources:
        return cls(num_cpus=float(data.get("num_cpus", 1.0)), num_gpus=float(data.get("num_gpus", 0.0)),
                   memory=data.get("memory"), custom={k: float(v) for k, v in (data.get("custom") or {}).items()})


class JobFailed(Exception):  # noqa: N818 - reads as "raise JobFailed(...)"
    """Raised by a hook to fail the job with a plain-English reason (no retry)."""


class JobContext(Protocol):
    """What ``run`` gets in the worker. All methods are cheap to call often (reports are batched)."""

    job_id: str
    attempt: int
    node_id: str
    cache_dir: Path  # node-local cache directory, shared by the jobs on this node
    cache_max_bytes: int
    cache: DiskCache  # that directory as an LRU cache under ``cache_max_bytes`` (storage.cache.DiskCache)
    blob_url: str  # the blob store (fsspec URL) for originals and artifacts

    def report(self, *, progress: float | None = None, stage: str | None = None, eta_s: float | None = None,
               metrics: dict[str, float] | None = None, log: str | None = None) -> None:
        """Progress 0-1, stage text, ETA, one point of metric history, a line of log."""

    def cancelled(self) -> bool:
        """True once the job was cancelled: stop soon and return anything."""

    def emit(self, event: dict[str, Any]) -> None:
        """An intermediate result (e.g. an anytime model version) for ``on_event`` in the dispatcher."""

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Small JSON-able state (put big data in the blob store and keep its key here)."""

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint of an earlier attempt of this job, if any (resume from it)."""

    def cached(self, key: str) -> None:
        """Tell the dispatcher this node now caches ``key`` (``dataset:<id>``, ``model:<id>``)."""


class JobHandler:
    """Base class of a job kind. Override the class attributes and the hooks you need."""

    kind: ClassVar[str]
    resources: ClassVar[Resources] = Resources()
    placement: ClassVar[Placement] = Placement.ANY
    # "dataset" or "model": the job's affinity key is then ``dataset:<job.dataset_id>`` / ``model:<job.model_id>``.
    affinity: ClassVar[str | None] = None
    description: ClassVar[str] = ""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings

    @property
    def settings(self) -> Settings:
        """The dispatcher's settings, for the hooks that run there (``run`` gets what it needs in its payload)."""
        if self._settings is None:
            raise RuntimeError(f"{type(self).__name__} was made without settings: hooks that read them run in "
                               "the dispatcher, which passes its own")
        return self._settings

    def prepare(self, db: Session, job: Job) -> dict[str, Any]:
        return dict(job.params)

    def run(self, ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def on_event(self, db: Session, job: Job, event: dict[str, Any]) -> None:
        return None

    def on_success(self, db: Session, job: Job, result: dict[str, Any]) -> None:
        return None

    def on_failure(self, db: Session, job: Job, reason: str) -> None:
        return None

    def on_cancel(self, db: Session, job: Job) -> None:
        """Dispatcher, once, when a running job is cancelled (events after this point are dropped)."""
        return None

    @classmethod
    def affinity_key(cls, job: Job) -> str | None:
        if cls.affinity == "dataset" and job.dataset_id:
            return f"dataset:{job.dataset_id}"
        if cls.affinity == "model" and job.model_id:
            return f"model:{job.model_id}"
        return None

    @classmethod
    def import_path(cls) -> str:
        return f"{cls.__module__}:{cls.__qualname__}"


log = logging.getLogger(__name__)
_registry: dict[str, type[JobHandler]] = {}
_lock = threading.Lock()
_loaded = False


def register(handler: type[JobHandler], *, replace: bool = True) -> type[JobHandler]:
    """Register a handler class (usable as a decorator). A later registration of a kind replaces it."""
    with _lock:
        if not replace and handler.kind in _registry:
            raise ValueError(f"job kind {handler.kind!r} is already registered")
        _registry[handler.kind] = handler
    return handler


def _load() -> None:
    global _loaded
    if _loaded:
        return
    for module in list(HANDLER_MODULES):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            log.info("job handler module %s is not installed; its kinds keep their declarations", module)
    _loaded = True


def handler_for(kind: str) -> type[JobHandler] | None:
    _load()
    return _registry.get(kind)


def kinds() -> list[str]:
    _load()
    return sorted(_registry)


def load_handler(import_path: str) -> JobHandler:
    """The handler instance a worker runs, found by ``module:Class`` (so test handlers work too)."""
    module, _, name = import_path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj()
