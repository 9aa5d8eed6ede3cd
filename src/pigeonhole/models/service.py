"""Model rules: what may be trained, versions and which one serves, deletion."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from pigeonhole.datasets import repository as dataset_repo
from pigeonhole.datasets.labels import clean_label
from pigeonhole.db.base import utcnow
from pigeonhole.db.tables import Job, Model, ModelVersion
from pigeonhole.errors import Conflict, NotFound, Unprocessable
from pigeonhole.jobs.service import cancel_job, create_job
from pigeonhole.models import repository as repo
from pigeonhole.models.job_contracts import LINEAGE_FILES, ExpandJobParams, TrainJobParams
from pigeonhole.settings import Settings

# Default training time per preference when the user does not say: quick, sensible, thorough.
DEFAULT_BUDGET_S = {"fast": 120, "balanced": 600, "accurate": 1800}
MIN_IMAGES_PER_CLASS = 5
CHANGE_ATTEMPTS = 5


def artifact_prefix(model_id: str, version_id: str) -> str:
    """Blob keys of a version; versions are immutable, so keys are never reused."""
    return f"models/{model_id}/{version_id}"


@dataclass(frozen=True)
class TrainingRequest:
    name: str
    dataset_id: str
    classes: list[str] | None
    target_accuracy: float | None
    time_budget_s: int | None
    preference: str
    auto_retrain: bool = False


def no_such_model() -> NotFound:
    return NotFound("There is no such model.", code="model_not_found")


def no_such_version(v: int) -> NotFound:
    return NotFound(f"This model has no version {v}.", code="version_not_found")


def no_version_yet() -> Conflict:
    return Conflict("This model has no trained version yet. Wait for its first version (usually seconds after "
                    "training starts).", code="no_version")


class ModelService:
    def __init__(self, db: Session, owner_id: str, settings: Settings):
        self.db = db
        self.owner_id = owner_id
        self.settings = settings

    def get(self, model_id: str) -> Model:
        model = repo.model_readable_by(self.db, self.owner_id, model_id)
        if model is None:
            raise no_such_model()
        return model

    def create(self, request: TrainingRequest) -> Model:
        name = request.name.strip()
        if not name or len(name) > 200:
            raise Unprocessable("Give the model a name of 1 to 200 characters.", code="invalid_name")
        dataset = dataset_repo.dataset_readable_by(self.db, self.owner_id, request.dataset_id)
        if dataset is None:
            raise NotFound("There is no such dataset.", code="dataset_not_found")
        classes = self._trainable_classes(dataset.id, request.classes)
        budget = request.time_budget_s or DEFAULT_BUDGET_S[request.preference]
        model = Model(owner_id=self.owner_id, dataset_id=dataset.id, name=name, status="queued",
                      requested_classes=classes, target_accuracy=request.target_accuracy,
                      time_budget_s=budget, preference=request.preference, auto_retrain=request.auto_retrain)
        self.db.add(model)
        self.db.flush()
        self._start_training(model, classes, kind="train")
        return model

    def update(self, model: Model, *, name: str | None = None, auto_retrain: bool | None = None,
               grow_after_feedback: int | None = None) -> Model:
        """Change what the user may change without training: the name, the automatic retrain, and when feedback
        from production makes the model grow."""
        if name is not None:
            name = name.strip()
            if not name or len(name) > 200:
                raise Unprocessable("Give the model a name of 1 to 200 characters.", code="invalid_name")
            model.name = name
        if auto_retrain is not None:
            model.auto_retrain = auto_retrain
        if grow_after_feedback is not None:
            model.grow_after_feedback = grow_after_feedback
        model.updated_at = utcnow()
        return model

    def retrain(self, model: Model) -> Model:
        if model.dataset_id is None:
            raise Conflict("This model's dataset was deleted, so it cannot be trained again.", code="no_dataset")
        if model.status in ("queued", "training"):
            raise Conflict("This model is already training. Wait for it to finish or cancel the job.",
                           code="already_training")
        classes = self._trainable_classes(model.dataset_id, model.requested_classes)
        self._start_training(model, classes, kind="retrain")
        return model

    def _trainable_classes(self, dataset_id: str, wanted: list[str] | None) -> list[str]:
        counts = {s.name: s.count for s in dataset_repo.class_stats(self.db, dataset_id)}
        classes = sorted(counts) if wanted is None else list(dict.fromkeys(wanted))
        missing = [c for c in classes if c not in counts]
        if missing:
            raise Unprocessable(f"The dataset has no class named {', '.join(repr(c) for c in missing)}.",
                                code="class_not_found")
        if len(classes) < 2:
            raise Unprocessable("A model needs at least two classes with images.", code="too_few_classes")
        small = [c for c in classes if counts[c] < MIN_IMAGES_PER_CLASS]
        if small:
            raise Unprocessable(f"Class '{small[0]}' has only {counts[small[0]]} image(s); each class needs at "
                                f"least {MIN_IMAGES_PER_CLASS} to train.", code="too_few_images")
        return classes

    def _start_training(self, model: Model, classes: list[str], *, kind: str) -> None:
        params = TrainJobParams(model_id=model.id, dataset_id=model.dataset_id, classes=classes,
                                target_accuracy=model.target_accuracy, time_budget_s=model.time_budget_s,
                                preference=model.preference, seed=0)
        job = create_job(self.db, self.owner_id, kind, params.model_dump(mode="json"), model_id=model.id,
                         dataset_id=model.dataset_id, settings=self.settings)
        model.job_id = job.id
        if model.active_version is None:
            model.status = "queued"
        model.updated_at = utcnow()

    def change_classes(self, model: Model, *, add: list[str], remove: list[str],
                       rename: dict[str, str] | None = None) -> Job | None:
        """Add classes from the dataset or remove classes; the new version comes from an ``expand`` job.

        With no version yet (training has not delivered one), only the wanted classes change: the
        training's first version is then brought up to date before it serves. Concurrent changes
        are applied one after the other (compare-and-set on ``classes_rev``), never lost.
        """
        add = list(dict.fromkeys(add))
        rename = rename or {}
        for _ in range(CHANGE_ATTEMPTS):
            wanted = self._wanted_after(model, add, remove, rename)
            updated = self.db.execute(
                update(Model).where(Model.id == model.id, Model.classes_rev == model.classes_rev)
                .values(requested_classes=wanted, classes_rev=model.classes_rev + 1, updated_at=utcnow()))
            if updated.rowcount == 1:
                self.db.refresh(model)
                if model.active_version is None:
                    return None
                return self.expand_from(model, model.active_version, rename=rename)
            self.db.refresh(model)  # someone else changed the classes just now: start again from theirs
        raise Conflict("The model's classes are being changed by another request. Try again.", code="busy")

    def _wanted_after(self, model: Model, add: list[str], remove: list[str],
                      rename: dict[str, str] | None = None) -> list[str]:
        current = list(model.requested_classes or [])
        for old, new in (rename or {}).items():
            if old not in current:
                raise NotFound(f"The model has no class named '{old}'.", code="class_not_found")
            if new in current:
                raise Conflict(f"The model already has a class named '{new}'.", code="class_exists")
        for name in add:
            if name in current:
                raise Conflict(f"The model already has a class named '{name}'.", code="class_exists")
        for name in remove:
            if name not in current:
                raise NotFound(f"The model has no class named '{name}'.", code="class_not_found")
        if add:
            if model.dataset_id is None:
                raise Conflict("This model's dataset was deleted, so it has no images for new classes.",
                               code="no_dataset")
            counts = {s.name: s.count for s in dataset_repo.class_stats(self.db, model.dataset_id)}
            for name in add:
                if name not in counts:
                    raise Unprocessable(f"The dataset has no class named '{name}'. Upload its images first.",
                                        code="class_not_found")
                if counts[name] < MIN_IMAGES_PER_CLASS:
                    raise Unprocessable(f"Class '{name}' has only {counts[name]} image(s); add at least "
                                        f"{MIN_IMAGES_PER_CLASS - counts[name]} more first.", code="too_few_images")
        wanted = [(rename or {}).get(c, c) for c in current if c not in remove] + add
        if len(wanted) < 2:
            raise Unprocessable("A model needs at least two classes.", code="too_few_classes")
        return wanted

    def rename_class(self, model: Model, old: str, new: str) -> Job | None:
        """Rename a class of the model and of its dataset: a label change only (no new statistics).

        The dataset's class is renamed too, so later additions and refreshes find its images under the
        new name. Refused while a training of the model is queued or running: the training reads the
        dataset by class name and would deliver versions with the old name, and its extractor would be
        recorded as fine-tuned on the old name (the drift guard would then count the class as added).
        """
        new = clean_label(new)
        wanted = model.requested_classes or []
        if old not in wanted:
            raise NotFound(f"The model has no class named '{old}'.", code="class_not_found")
        if new == old:
            return None
        if new in wanted:
            raise Conflict(f"The model already has a class named '{new}'.", code="class_exists")
        if repo.training_in_progress(self.db, model.id):
            raise Conflict("This model is training. Wait for the training to finish, then rename the class.",
                           code="training_in_progress")
        dataset = dataset_repo.dataset_readable_by(self.db, self.owner_id, model.dataset_id) \
            if model.dataset_id else None
        names = {s.name for s in dataset_repo.class_stats(self.db, dataset.id)} if dataset else set()
        if new in names:
            raise Conflict(f"The model's dataset already has a class named '{new}'. Pick another name, or "
                           "rename or delete that class in the dataset first.", code="class_exists")
        job = self.change_classes(model, add=[], remove=[], rename={old: new})
        if dataset is not None and old in names:
            dataset_repo.rename_label(self.db, dataset.id, old, new)
            dataset.updated_at = utcnow()
        return job

    def refresh(self, model: Model, classes: list[str] | None) -> Job:
        """Bring the active version up to date with images added to (or removed from) its classes."""
        if model.active_version is None:
            raise Conflict("This model has no version yet; its training will use the images as they are.",
                           code="no_version")
        if model.dataset_id is None:
            raise Conflict("This model's dataset was deleted, so there is nothing to update from.", code="no_dataset")
        base = self.version(model, model.active_version)
        wanted = list(dict.fromkeys(classes)) if classes else list(base.classes)
        unknown = [c for c in wanted if c not in base.classes]
        if unknown:
            raise NotFound(f"The model has no class named '{unknown[0]}'.", code="class_not_found")
        counts = {s.name: s.count for s in dataset_repo.class_stats(self.db, model.dataset_id)}
        short = [c for c in wanted if counts.get(c, 0) < MIN_IMAGES_PER_CLASS]
        if short:
            raise Unprocessable(f"Class '{short[0]}' has only {counts.get(short[0], 0)} image(s) left; a class "
                                f"needs at least {MIN_IMAGES_PER_CLASS}. Remove the class instead.",
                                code="too_few_images")
        params = ExpandJobParams(model_id=model.id, base_version=base.v, add=[], remove=[], refresh=wanted)
        return create_job(self.db, self.owner_id, "expand", params.model_dump(mode="json"), model_id=model.id,
                          dataset_id=model.dataset_id, settings=self.settings)

    def set_caution(self, model: Model, caution: float) -> Job:
        """A new version that answers "unknown" for a different share of ordinary images (no retraining: the same
        file with another cut, measured again on the test images), made by an ``expand`` job."""
        if model.active_version is None:
            raise no_version_yet()
        base = self.version(model, model.active_version)
        if base.head_key is None or "caution_curve" not in (base.metrics or {}):
            raise Unprocessable("This version was made before the caution could be chosen. Retrain the model "
                                "to choose one.", code="caution_unavailable")
        if not 0.0 <= caution <= 0.5:
            raise Unprocessable("The caution is the share of ordinary images answered 'unknown': between 0 and "
                                "0.5.", code="invalid_caution")
        params = ExpandJobParams(model_id=model.id, base_version=base.v, add=[], remove=[],
                                 caution=round(float(caution), 2))
        return create_job(self.db, self.owner_id, "expand", params.model_dump(mode="json"), model_id=model.id,
                          dataset_id=model.dataset_id, settings=self.settings)

    def expand_from(self, model: Model, base_version: int, *, rename: dict[str, str] | None = None,
                    guarded: bool = False) -> Job | None:
        """Queue the job that brings ``base_version`` to the model's wanted classes (None: nothing to do).

        ``rename`` ({old: new}) applies only where the base has the old name and the new one is wanted;
        what is left differs by class name and becomes additions and removals (exact too, only slower).
        ``guarded``: the result must beat the active version to serve (a retrain's result).
        """
        base = self.version(model, base_version)
        wanted = list(model.requested_classes or [])
        rename = {old: new for old, new in (rename or {}).items()
                  if old in base.classes and new in wanted and new not in base.classes}
        renamed = [rename.get(c, c) for c in base.classes]
        add = [c for c in wanted if c not in renamed]
        remove = [c for c in renamed if c not in wanted]
        if not add and not remove and not rename:
            return None
        params = ExpandJobParams(model_id=model.id, base_version=base_version, add=add, remove=remove, rename=rename,
                                 guarded=guarded)
        return create_job(self.db, self.owner_id, "expand", params.model_dump(mode="json"), model_id=model.id,
                          dataset_id=model.dataset_id, settings=self.settings)

    def version(self, model: Model, v: int) -> ModelVersion:
        row = repo.version(self.db, model.id, v)
        if row is None:
            raise no_such_version(v)
        return row

    def serving_version(self, model: Model, v: int | None) -> ModelVersion:
        if v is not None:
            return self.version(model, v)
        if model.active_version is None:
            raise no_version_yet()
        return self.version(model, model.active_version)

    def activate(self, model: Model, v: int) -> Model:
        self.version(model, v)
        model.active_version = v
        model.status = "ready"
        model.updated_at = utcnow()
        return model

    def delete(self, model: Model) -> list[str]:
        """Delete the model and its versions; returns the artifact keys to remove from the blob store."""
        if model.job_id:
            with contextlib.suppress(Conflict, NotFound):  # the job already finished, or is gone
                cancel_job(self.db, self.owner_id, model.job_id)
        # every version's files: a grown version's may point into another version's, so they go together
        keys = [k for v in self.db.scalars(repo.versions_of(model.id))
                for k in (v.onnx_key, v.head_key, v.card_key,
                          *((v.lineage or {}).get(f"{name}_key") for name in LINEAGE_FILES)) if k]
        self.db.delete(model)
        return keys


def settle_version(db: Session, model: Model, settings: Settings, *, guarded: bool = False,
                   **fields: Any) -> ModelVersion:
    """Record a version a job produced, and activate it if it has the classes the user wants now and
    descends from a training result at least as recent as the active version's.

    ``guarded`` (a retrain's results, and their class changes): the version also has to be at least as
    accurate as the active one on the test images, otherwise it stays in the history and the active
    version keeps serving. A first training is never guarded: anything beats having no version.

    If the classes changed while the job ran, an expand job brings this version up to date, and that
    job's version serves: a better training result is never left behind because a class was added
    meanwhile (the active version had the class first, from an earlier result), and a change made
    during a job is never lost nor makes the job restart. The "source" rule keeps a slow expand of an
    older result from replacing the expanded newer one.
    """
    wanted = set(model.requested_classes or fields["classes"])
    current = set(fields["classes"]) == wanted
    active = repo.version(db, model.id, model.active_version) if model.active_version else None
    row = record_version(db, model, activate=False, **fields)
    if active is not None and source_of(row) < source_of(active):
        return row  # a newer result already serves (or is being brought up to date): keep this one in history
    if current:
        if guarded and active is not None and not at_least_as_good(row, active):
            return row  # the retrain did not beat what serves: keep it in history, keep serving the active one
        model.active_version = row.v
        model.status = "ready"
    else:
        ModelService(db, model.owner_id, settings).expand_from(model, row.v, guarded=guarded)
    return row


def at_least_as_good(candidate: ModelVersion, active: ModelVersion) -> bool:
    """Whether ``candidate`` measured at least the active version's test accuracy.

    Only versions with the same classes are compared (their accuracies come from the same test images);
    otherwise the candidate, which has the classes the user wants, is taken. A missing figure loses.
    """
    if set(candidate.classes) != set(active.classes):
        return True
    mine = (candidate.metrics or {}).get("accuracy")
    theirs = (active.metrics or {}).get("accuracy")
    return float("-inf" if mine is None else mine) >= float("-inf" if theirs is None else theirs)


def source_of(version: ModelVersion) -> int:
    """The number of the trained version this one descends from through class changes (itself if trained)."""
    return int((version.lineage or {}).get("source", version.v))


def record_version(db: Session, model: Model, *, classes: list[str], metrics: dict[str, Any],
                   input_spec: dict[str, Any], threshold: float, size_bytes: int, onnx_key: str,
                   head_key: str | None, card_key: str | None, lineage: dict[str, Any], latency_ms: float | None,
                   throughput: float | None, job_id: str | None, activate: bool, version_id: str | None = None,
                   ) -> ModelVersion:
    """A new immutable version (and, with ``activate``, the one that serves from now on)."""
    row = ModelVersion(model_id=model.id, v=repo.next_version_number(db, model.id), classes=classes, metrics=metrics,
                       input_spec=input_spec, threshold=threshold, size_bytes=size_bytes, onnx_key=onnx_key,
                       head_key=head_key, card_key=card_key, lineage=lineage, latency_ms=latency_ms,
                       throughput=throughput, job_id=job_id)
    if version_id:
        row.id = version_id
    db.add(row)
    db.flush()
    if activate:
        model.active_version = row.v
        model.status = "ready"
    model.updated_at = utcnow()
    return row
