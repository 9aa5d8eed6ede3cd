"""Growing a model: add, remove or rename classes in seconds, exactly, without retraining (the ``expand`` job).

Worker: read the base version's ONNX file and head statistics from the blob store; rename classes
(labels only: statistics, weights and metrics carry over); remove classes by subtracting their
statistics; add classes by passing only their images through the version's own frozen extractor
(features cached per node) and adding their statistics; choose the ridge strength, calibration and
"unknown" threshold again on the validation images; measure the new version on the test images and,
when the extractor was fine-tuned on the original classes, how much less well the added classes are
recognised (the drift guard); rebuild the ONNX file (same extractor, new head) and upload it.
Dispatcher: record the new version and make it the active one; suggest or start a retrain on drift.
Params, payload and result are typed in ``models/job_contracts.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from threadpoolctl import threadpool_limits

from pigeonhole.compute.handlers import JobContext, JobFailed, JobHandler, Placement, Resources, register
from pigeonhole.db.tables import DatasetImage, Job, Model, ModelVersion
from pigeonhole.ids import new_id
from pigeonhole.learn import head_file
from pigeonhole.learn.artifacts import measure_speed, split_metrics, unknown_facts
from pigeonhole.learn.evaluate import recall_gap, rename_classes
from pigeonhole.learn.features import FeatureCache, ImageItem, compute_features, node_feature_cache
from pigeonhole.learn.finish import LEFT_OUT
from pigeonhole.learn.grow import extractor_of, input_spec_of, rebuild_model
from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.neighbours import NEIGHBOURS_FILE, NeighbourIndex
from pigeonhole.learn.novelty import DEFAULT_CAUTION
from pigeonhole.learn.unknown import choose_unknown
from pigeonhole.models import drift
from pigeonhole.models import repository as repo
from pigeonhole.models.job_contracts import ExpandJobParams, ExpandJobResult, ExpandPayload, ImageRow, VersionKeys
from pigeonhole.models.manifest import MANIFEST_FILE, Manifest
from pigeonhole.models.service import artifact_prefix, settle_version, source_of
from pigeonhole.storage.blobs import BlobStore

JOB_THREADS = 2  # the extractor sessions' intra-op threads, and the BLAS threads of the job's linear algebra


def describe_change(add: list[str], remove: list[str], refresh: list[str] | None = None,
                    rename: dict[str, str] | None = None, caution: float | None = None) -> str:
    parts = [f"renamed {old!r} to {new!r}" for old, new in (rename or {}).items()]
    if caution is not None:
        parts.append(f"caution set to {100 * caution:.0f} %")
    if refresh:
        parts.append("updated images of " + ", ".join(repr(c) for c in refresh))
    if add:
        parts.append("added " + ", ".join(repr(c) for c in add))
    if remove:
        parts.append("removed " + ", ".join(repr(c) for c in remove))
    return "; ".join(parts) or "refreshed"


def _load_manifest(blobs: BlobStore, key: str | None, head: RidgeHead) -> Manifest | None:
    """The images the base head holds, if known and consistent with its per-class counts (else None)."""
    if not key:
        return None
    manifest = Manifest.read(key, blobs.map_bytes)
    return manifest if manifest.counts() == head.counts else None


def _load_index(blobs: BlobStore, key: str | None, rename: dict[str, str]) -> NeighbourIndex | None:
    """The base version's neighbour index under the new names (None: the base has none)."""
    if key is None:
        return None
    return NeighbourIndex.read(key, blobs.map_bytes).renamed(rename)


def _rename(head: RidgeHead, manifest: Manifest | None, rename: dict[str, str]) -> Manifest | None:
    """Rename classes in the head (labels only) and in its manifest, which then still matches the head."""
    for old, new in rename.items():
        head.rename_class(old, new)
    return manifest.renamed(rename) if manifest is not None else None


def _only_renames(payload: ExpandPayload) -> bool:
    return bool(payload.rename) and not payload.add and not payload.remove and not payload.refresh


def _measure(ctx: JobContext, payload: ExpandPayload, blobs: BlobStore, model_bytes: bytes,
             head: RidgeHead) -> dict[str, Any]:
    """The version's figures on the test images of its classes (the base's caution curve, read at the new
    caution, when the dataset has none)."""
    tests = [r for r in payload.images if r[2] == "test"]
    if not tests:
        base = dict(payload.base_metrics)
        point = next((p for p in base.get("caution_curve") or [] if abs(p["caution"] - head.threshold) < 1e-9), None)
        if point is not None:
            base.update(coverage=point["answered"], selective_accuracy=point["right_when_answered"],
                        accuracy_with_unknown=point["right_overall"], threshold=head.threshold)
        return base
    ctx.report(progress=0.3, stage="Measuring the version at the new caution")
    cache = node_feature_cache(Path(ctx.cache_dir) / "learn", int(ctx.cache_max_bytes))
    features = compute_features([ImageItem(sha, (lambda s=sha, n=size: blobs.read_blob(s, n)))
                                 for sha, _, _, size in tests], extractor_of(model_bytes, threads=JOB_THREADS), cache)
    metrics = split_metrics(*head.answers(features), [r[1] for r in tests],
                            [r[0] for r in tests], head.classes, head.threshold)
    metrics["split"] = "test"
    for key in ("val_accuracy", "val_measured_on", "val_images", "drift"):
        if key in payload.base_metrics:
            metrics[key] = payload.base_metrics[key]
    return metrics


def extractor_classes_after(base: ModelVersion, rename: dict[str, str] | None) -> list[str] | None:
    """The classes the base's extractor was fine-tuned on, under their current names (None: pretrained)."""
    known = (base.lineage or {}).get("extractor_classes")
    if known is None:
        return None
    return [(rename or {}).get(c, c) for c in known]


def _drift(chooser: RidgeHead, val_probs: Any, val_labels: list[str],
           known: list[str] | None) -> dict[str, Any] | None:
    """The drift guard's estimate, with the head that chose the settings (it never held these images)."""
    if known is None or val_probs is None or not val_labels:
        return None
    predicted = [chooser.classes[i] for i in val_probs.argmax(axis=1)]
    return recall_gap(val_labels, predicted, known=[c for c in chooser.classes if c in known],
                      added=[c for c in chooser.classes if c not in known])


def _speed(grown: bytes, payload: ExpandPayload) -> dict[str, Any]:
    """The base version's measured speed when it has one: the extractor, which is unchanged, is nearly all
    of the cost (the head adds one small matrix product), and measuring again would take most of the
    second a class change should take. Measured afresh otherwise."""
    base = payload.base_speed
    if base.latency_ms is not None and base.throughput_img_s is not None:
        return {"latency_ms": base.latency_ms, "throughput_img_s": base.throughput_img_s,
                "measured_on_version": payload.base_version, "runtime": "onnxruntime"}
    return measure_speed(grown, input_spec_of(grown), threads=1, repeats=5)


class _StageClock:
    """Seconds spent in each stage of the job (kept in the result and the card: where a change's time goes)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.laps[stage] = round(self.laps.get(stage, 0.0) + now - self._last, 3)
        self._last = now


@register
class ExpandHandler(JobHandler):
    kind = "expand"
    resources = Resources(num_cpus=1)
    placement = Placement.ANY
    affinity = "dataset"
    description = "add or remove classes of a model (new head statistics, no retraining)"

    def prepare(self, db: Session, job: Job) -> dict[str, Any]:
        params = ExpandJobParams.model_validate(job.params)
        model = db.get(Model, params.model_id)
        if model is None:
            raise JobFailed("The model was deleted.")
        base = repo.version(db, model.id, params.base_version)
        if base is None or base.head_key is None:
            raise JobFailed("The version to grow from has no head statistics, so classes cannot be added to it. "
                            "Retrain the model instead.")
        if model.dataset_id is None and params.add:
            raise JobFailed("The model's dataset was deleted, so there are no images for new classes.")
        rename = params.rename
        classes = [c for c in (rename.get(c, c) for c in base.classes) if c not in params.remove] + list(params.add)
        query = (select(DatasetImage.sha256, DatasetImage.label, DatasetImage.split, DatasetImage.size_bytes)
                 .where(DatasetImage.dataset_id == model.dataset_id, DatasetImage.label.in_(classes)))
        tested = model.dataset_id is not None and db.scalar(
            select(DatasetImage.id).where(DatasetImage.dataset_id == model.dataset_id,
                                          DatasetImage.label.in_(classes), DatasetImage.split == "test").limit(1)
        ) is not None
        changed = set(params.add) | set(params.remove) | set(params.refresh)
        keep = keeps_settings(len(base.classes), len(changed), tested)
        if keep:  # only the test images and the new or refreshed classes' images are read (100,000 rows: 1 s)
            query = query.where((DatasetImage.split == "test") | DatasetImage.label.in_(params.add + params.refresh))
        rows = db.execute(query.order_by(DatasetImage.id)) if model.dataset_id else []
        images = [(sha, label, split, size) for sha, label, split, size in rows]
        payload = ExpandPayload(
            **params.model_dump(), onnx_key=base.onnx_key, head_key=base.head_key, classes=classes, images=images,
            keep_settings=keep,
            manifest_key=(base.lineage or {}).get("manifest_key"),
            neighbours_key=(base.lineage or {}).get("neighbours_key"),
            base_speed={"latency_ms": base.latency_ms, "throughput_img_s": base.throughput},
            base_metrics=base.metrics, extractor_classes=extractor_classes_after(base, rename))
        return payload.model_dump(mode="json")

    def run(self, ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        # The linear algebra on both cores, as the extractor session already runs: the job holds one CPU of the
        # node so that it never waits behind a training, but it is short and someone is waiting on it.
        with threadpool_limits(limits=JOB_THREADS, user_api="blas"):
            return self._run(ctx, payload)

    def _run(self, ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        task = ExpandPayload.model_validate(payload)
        started = time.monotonic()
        clock = _StageClock()
        blobs = BlobStore(ctx.blob_url)
        ctx.report(progress=0.05, stage="Loading the current model")
        model_bytes = blobs.read_bytes(task.onnx_key)
        head = head_file.read(task.head_key, blobs.map_bytes)
        manifest = _load_manifest(blobs, task.manifest_key, head)  # checked against the old names
        rename = task.rename
        manifest = _rename(head, manifest, rename)
        index = _load_index(blobs, task.neighbours_key, rename)
        clock.lap("load")
        if task.caution is not None:
            # The same statistics, weights and detector: only where "unknown" starts moves, so the version is
            # measured again on the test images at the new caution.
            if head.weights is None:
                head.solve()
            head.set_caution(task.caution)
            metrics = _measure(ctx, task, blobs, model_bytes, head)
        elif _only_renames(task):
            # A label change only: no image passes through the extractor, statistics and weights are the
            # base's, so predictions are the base's and so are its measurements (under the new name).
            if head.weights is None:
                head.solve()
            metrics = rename_classes(task.base_metrics, rename)
        else:
            head, manifest, metrics, index = _grow(ctx, task, blobs, model_bytes, head, manifest, clock, index)
        grown = rebuild_model(model_bytes, head)
        clock.lap("rebuild")
        speed = _speed(grown, task)
        clock.lap("speed")
        version_id = new_id()
        prefix = artifact_prefix(task.model_id, version_id)
        model_key, head_key, card_key = f"{prefix}/model.onnx", f"{prefix}/head.npz", f"{prefix}/card.json"
        keys = VersionKeys(model=model_key, head=head_key, card=card_key,
                           manifest=f"{prefix}/{MANIFEST_FILE}" if manifest is not None else None,
                           neighbours=f"{prefix}/{NEIGHBOURS_FILE}" if index is not None else None)
        if keys.manifest is not None:
            blobs.put_bytes(keys.manifest, manifest.to_bytes())
        if index is not None and keys.neighbours is not None:
            blobs.put_bytes(keys.neighbours, index.to_bytes())
        card = {"classes": head.classes, "metrics": metrics, "unknown_threshold": float(head.threshold),
                "unknown": unknown_facts(head),
                "speed": speed, "change": describe_change(task.add, task.remove, task.refresh, rename, task.caution),
                "parent_version": task.base_version, "seconds": round(time.monotonic() - started, 2),
                "stage_seconds": clock.laps}
        blobs.put_bytes(model_key, grown)
        blobs.put_bytes(head_key, head.to_bytes())
        blobs.put_bytes(card_key, json.dumps(card, indent=1).encode())
        ctx.report(progress=1.0, stage="New version ready")
        return ExpandJobResult(version_id=version_id, keys=keys, classes=head.classes, metrics=metrics,
                               threshold=float(head.threshold), size_bytes=len(grown),
                               input=input_spec_of(grown).as_dict(), latency_ms=speed.get("latency_ms"),
                               throughput=speed.get("throughput_img_s"), seconds=card["seconds"],
                               stage_seconds=clock.laps).model_dump()

    def on_success(self, db: Session, job: Job, result: dict[str, Any]) -> None:
        params = ExpandJobParams.model_validate(job.params)
        outcome = ExpandJobResult.model_validate(result)
        model = db.get(Model, params.model_id)
        if model is None:
            return
        base = repo.version(db, model.id, params.base_version)
        source = source_of(base) if base is not None else params.base_version
        settings = self.settings
        row = settle_version(
            db, model, settings, guarded=params.guarded, classes=outcome.classes,
            metrics=outcome.metrics, input_spec=dict(outcome.input), threshold=outcome.threshold,
            size_bytes=outcome.size_bytes, onnx_key=outcome.keys.model, head_key=outcome.keys.head,
            card_key=outcome.keys.card,
            lineage={"change": describe_change(params.add, params.remove, params.refresh, params.rename,
                                               params.caution),
                     "parent": params.base_version, "job_id": job.id, "seconds": outcome.seconds,
                     "manifest_key": outcome.keys.manifest, "source": source,
                     "neighbours_key": outcome.keys.neighbours,
                     "extractor_classes": extractor_classes_after(base, params.rename) if base is not None else None,
                     # the extractor is the base's, unchanged: so is what the user was told about it
                     **({k: base.lineage.get(k) for k in ("extractor", "notes")} if base is not None else {})},
            latency_ms=outcome.latency_ms, throughput=outcome.throughput, job_id=job.id,
            version_id=outcome.version_id)
        drift.after_expand(db, model, row, settings)


def _choose_left_out(ctx: JobContext, head: RidgeHead, manifest: Manifest, images: list[ImageRow],
                     new_classes: set[str], extractor: Any, cache: FeatureCache, blobs: BlobStore,
                     ) -> tuple[RidgeHead, Manifest]:
    caution = head.threshold if head.detector is not None else DEFAULT_CAUTION  # the user's caution carries over
    """As training chooses for a small set (under ``runners.LEFT_OUT_BELOW_VAL`` validation images, frozen features):
    the head holds the train and validation images of every class, and ridge strength, temperature and threshold
    are chosen on each held image scored by the head refit without it. The same procedure on the same images as
    a refit, so adding a class and removing it again gives back the version the user had."""
    new_rows = [r for r in images if r[1] in new_classes and r[2] in ("train", "val")]
    if new_classes:
        ctx.report(progress=0.2, stage=f"Learning {len(new_classes)} class(es) from their images")
        if not any(r[2] == "train" for r in new_rows):
            raise JobFailed("The new classes have no training images.")
    have = set(head.classes) - new_classes  # a set: 90,000 rows against a list of 1,000 classes took 0.7 s
    held = [r for r in manifest.rows() if r[1] in have] + new_rows
    features = compute_features([ImageItem(sha, (lambda s=sha, n=size: blobs.read_blob(s, n)))
                                 for sha, _, _, size in held], extractor, cache)
    if new_rows:
        fresh = len(held) - len(new_rows)
        head.add(features[fresh:], [r[1] for r in new_rows])
    ctx.report(progress=0.6, stage="Choosing the settings on every image left out in turn")
    head.fit_left_out(features, [r[1] for r in held])
    choose_unknown(head, features, [r[1] for r in held], left_out=True, caution=caution)
    return head, Manifest.from_rows(held)


def _choose_on_validation(ctx: JobContext, head: RidgeHead, manifest: Manifest | None,
                          images: list[ImageRow], new_classes: set[str],
                          validation: tuple[list[ImageItem], list[str]], extractor: Any, cache: FeatureCache,
                          blobs: BlobStore, payload: ExpandPayload, clock: _StageClock,
                          ) -> tuple[RidgeHead, Manifest | None, Any, dict[str, Any] | None]:
    """As training chooses for larger sets: ridge strength, calibration and threshold on validation images the
    head does not hold; the final head then holds train + validation images of every class. Returns the head,
    its manifest, the chooser's answers on the validation images (never held) and the drift estimate."""
    val_items, val_labels = validation
    chooser = head.copy()
    if manifest is not None:
        have = set(chooser.classes)
        held = [r for r in manifest.rows() if r[2] == "val" and r[1] in have]
        if held:
            held_items = [ImageItem(sha, (lambda s=sha, n=size: blobs.read_blob(s, n))) for sha, _, _, size in held]
            chooser.remove_images(compute_features(held_items, extractor, cache), [r[1] for r in held])
    clock.lap("held_out")
    if new_classes:
        ctx.report(progress=0.2, stage=f"Learning {len(new_classes)} class(es) from their images")
        new_items = [ImageItem(sha, (lambda s=sha, n=size: blobs.read_blob(s, n)))
                     for sha, label, split, size in images if split == "train" and label in new_classes]
        if not new_items:
            raise JobFailed("The new classes have no training images.")
        new_labels = [label for _, label, split, _ in images if split == "train" and label in new_classes]
        new_features = compute_features(new_items, extractor, cache)
        chooser.add(new_features, new_labels)
        head.add(new_features, new_labels)
        clock.lap("new_classes")
    ctx.report(progress=0.6, stage="Checking accuracy on validation images")
    val_features = compute_features(val_items, extractor, cache) if val_items else None
    clock.lap("val_features")
    if val_features is not None and len(set(val_labels)) >= 2:
        chooser.fit(val_features, val_labels)
        choose_unknown(chooser, val_features, val_labels, left_out=False,
                       caution=chooser.threshold if chooser.detector is not None else DEFAULT_CAUTION)
    else:
        chooser.solve()
    # The chooser's answers on the validation images it never held: the drift estimate, and the
    # measurement when there are no test images.
    val_probs = chooser.answers(val_features) if val_features is not None else None
    gap = _drift(chooser, val_probs[0] if val_probs is not None else None, val_labels,
                 payload.extractor_classes)
    if manifest is None:
        return chooser, None, val_probs, gap  # older versions hold training images only: keep doing the same
    for attribute in ("alpha", "temperature", "threshold", "threshold_precision", "threshold_coverage", "detector"):
        setattr(head, attribute, getattr(chooser, attribute))
    fresh = [i for i, label in enumerate(val_labels) if label in new_classes]
    if fresh and val_features is not None:
        head.add(val_features[fresh], [val_labels[i] for i in fresh])
    head.solve()
    clock.lap("solve")
    manifest = manifest.only(set(head.classes) - new_classes).plus(
        r for r in images if r[1] in new_classes and r[2] in ("train", "val"))
    return head, manifest, val_probs, gap


KEEP_SETTINGS_FROM = 100  # classes in the version grown from
KEEP_SETTINGS_SHARE = 0.01  # at most this share of them added, removed or refreshed


def keeps_settings(classes_before: int, changed: int, has_tests: bool) -> bool:
    """Whether a change keeps the base's ridge strength, temperature and "unknown" detector instead of choosing
    them again.

    Why: at 1,000 classes choosing them again scores every validation image under seven strengths and simulates
    the detector: 14 of a class change's 28 seconds, to move settings chosen on 10,000 images of every class by
    less than the noise of that choice when one class in a hundred or more changes. Kept, they still make a head
    that equals a refit at those settings, and removing an added class gives back the version before. The new
    version is measured on its test images as always (so this needs some), and the next training chooses afresh.
    """
    return classes_before >= KEEP_SETTINGS_FROM and changed <= KEEP_SETTINGS_SHARE * classes_before and has_tests


def _keep_settings(ctx: JobContext, head: RidgeHead, manifest: Manifest | None, images: list[ImageRow],
                   new_classes: set[str], extractor: Any, cache: FeatureCache, blobs: BlobStore,
                   ) -> tuple[RidgeHead, Manifest | None]:
    """Add the new classes' images as the chosen path would leave them in the final head (train and validation
    images when the base records what it holds, train images only for older versions), and solve at the
    base's ridge strength."""
    splits = ("train", "val") if manifest is not None else ("train",)
    new_rows = [r for r in images if r[1] in new_classes and r[2] in splits]
    if new_classes:
        ctx.report(progress=0.2, stage=f"Learning {len(new_classes)} class(es) from their images")
        if not any(r[2] == "train" for r in new_rows):
            raise JobFailed("The new classes have no training images.")
        features = compute_features([ImageItem(sha, (lambda s=sha, n=size: blobs.read_blob(s, n)))
                                     for sha, _, _, size in new_rows], extractor, cache)
        head.add(features, [r[1] for r in new_rows])
    head.solve()
    if manifest is not None:
        manifest = manifest.only(set(head.classes) - new_classes).plus(new_rows)
    return head, manifest


def _grow(ctx: JobContext, payload: ExpandPayload, blobs: BlobStore, model_bytes: bytes, head: RidgeHead,
          manifest: Manifest | None, clock: _StageClock, index: NeighbourIndex | None,
          ) -> tuple[RidgeHead, Manifest | None, dict[str, Any], NeighbourIndex | None]:
    """Remove, refresh and add classes; choose the settings on validation images; measure the result.

    Returns the new head, the manifest of the images it holds (None if unknown), its metrics and the base's
    neighbour index edited the same way (None if the base has none).
    """
    extractor = extractor_of(model_bytes, threads=JOB_THREADS)
    clock.lap("load")
    cache = node_feature_cache(Path(ctx.cache_dir) / "learn", int(ctx.cache_max_bytes))
    images = payload.images

    def items(split: str, labels: set[str] | None = None) -> tuple[list[ImageItem], list[str], list[str]]:
        rows = [r for r in images if r[2] == split and (labels is None or r[1] in labels)]
        made = [ImageItem(sha, (lambda s=sha, n=size: blobs.read_blob(s, n))) for sha, _, _, size in rows]
        return made, [r[1] for r in rows], [r[0] for r in rows]

    try:
        kept = payload.keep_settings
        # A refreshed class is rebuilt from all its current images: its statistics are independent of
        # the other classes', so subtracting and adding them again is exact.
        for name in payload.remove + payload.refresh:
            if name in head.classes:
                head.remove_class(name)
        new_classes = (set(payload.add) | set(payload.refresh)) - set(head.classes)
        # kept settings read no validation image (the payload holds only the new classes' then)
        val_items, val_labels, val_keys = items("val") if not kept else ([], [], [])
        val_probs: Any = None
        gap = None
        if kept:
            head, manifest = _keep_settings(ctx, head, manifest, images, new_classes, extractor, cache, blobs)
            clock.lap("kept_settings")
        elif manifest is not None and payload.base_metrics.get("val_measured_on") == LEFT_OUT:
            head, manifest = _choose_left_out(ctx, head, manifest, images, new_classes, extractor, cache, blobs)
            clock.lap("left_out")
        else:
            head, manifest, val_probs, gap = _choose_on_validation(ctx, head, manifest, images, new_classes,
                                                                   (val_items, val_labels), extractor, cache, blobs,
                                                                   payload, clock)
        ctx.report(progress=0.8, stage="Measuring the new version")
        test_items, test_labels, test_keys = items("test")
        if test_items:
            test_features = compute_features(test_items, extractor, cache)
            answers = head.answers(test_features)
            metrics = split_metrics(*answers, test_labels, test_keys, head.classes, head.threshold)
            metrics["split"] = "test"
            if kept:  # no head chose settings on validation images: the drift guard reads the test images
                gap = _drift(head, answers[0], test_labels, payload.extractor_classes)
                metrics["settings_kept_from"] = payload.base_version
        elif val_probs is not None:
            # As training does without test images: measure on validation images, with the head that
            # chose the settings and never held them, so the figure is not the final head's own data.
            metrics = split_metrics(*val_probs, val_labels, val_keys, head.classes, head.threshold)
            metrics["split"] = "val"
        else:
            metrics = {"note": "no test images"}
        if gap is not None:
            metrics["drift"] = gap
        if payload.base_metrics.get("val_measured_on") == LEFT_OUT and manifest is not None:
            metrics["val_measured_on"] = LEFT_OUT  # so a later change of this version chooses the same way
        clock.lap("measure")
        if index is not None:
            rows = [r for r in images if r[1] in new_classes and r[2] in ("train", "val")]
            added = compute_features([ImageItem(sha, (lambda s=sha, n=size: blobs.read_blob(s, n)))
                                      for sha, _, _, size in rows], extractor, cache)  # computed above: cached
            index = index.without(payload.remove + payload.refresh).plus(
                [r[0] for r in rows], [r[1] for r in rows], added)
            clock.lap("neighbours")
    finally:
        cache.close()
    return head, manifest, metrics, index
