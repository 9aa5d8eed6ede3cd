"""Classification metrics as plain JSON-able dicts (they go straight into model cards).

Everything takes class *indices* plus the class names, so the output is keyed by name
and stays meaningful after the model is exported. "Unknown" predictions (index -1)
count as wrong for accuracy and appear as their own confusion column, so abstaining
is visible rather than silently dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pigeonhole.learn.novelty import answers_curve

UNKNOWN = -1


def _as_index(y: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(y, dtype=np.int64).reshape(-1)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict[str, Any]:
    """Rows = true class, columns = predicted class (+ an ``unknown`` column if any), as the non-zero cells
    ``[row, column, count]`` (row-major): at 1,000 classes a dense matrix would be a million numbers in every
    version's metrics, nearly all zero."""
    t, p = _as_index(y_true), _as_index(y_pred)
    k = len(classes)
    has_unknown = bool((p == UNKNOWN).any())
    cols = np.where(p == UNKNOWN, k, p)
    pairs, counts = np.unique(t * (k + 1) + cols, return_counts=True)
    return {
        "labels": list(classes),
        "columns": list(classes) + (["unknown"] if has_unknown else []),
        "cells": [[int(c // (k + 1)), int(c % (k + 1)), int(n)] for c, n in zip(pairs, counts, strict=True)],
    }


def per_class_report(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class, plus macro averages.

    A class never predicted has precision 0 by convention (not NaN), so the dict
    serialises as JSON and the UI can show it.
    """
    t, p = _as_index(y_true), _as_index(y_pred)
    report: dict[str, Any] = {}
    for i, name in enumerate(classes):
        tp = int(((t == i) & (p == i)).sum())
        predicted = int((p == i).sum())
        support = int((t == i).sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    with_support = [v for v in report.values() if v["support"]]
    macro = {
        m: float(np.mean([v[m] for v in with_support])) if with_support else 0.0 for m in ("precision", "recall", "f1")
    }
    return {"classes": report, "macro": macro}


def expected_calibration_error(probs: np.ndarray, y_true: Sequence[int], n_bins: int = 15) -> float:
    """ECE: mean |confidence - accuracy| over equal-width confidence bins, weighted by size."""
    probs = np.asarray(probs, dtype=np.float64)
    t = _as_index(y_true)
    if len(t) == 0:
        return 0.0
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = (pred == t).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(conf[mask].mean() - correct[mask].mean())
    return float(ece)


def evaluate(
    y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str], *, threshold: float = 0.0,
    familiarity: np.ndarray | None = None,
) -> dict[str, Any]:
    """The full metrics dict of a model version on a labelled set.

    ``accuracy`` ignores "unknown" (pure top-1). What the served model delivers: it answers ``coverage`` of the
    images (those with ``familiarity`` >= ``threshold``; without familiarity, the largest probability), is
    right on ``selective_accuracy`` of those, and right on ``accuracy_with_unknown`` of all images.
    ``caution_curve`` gives the same two figures for every caution the user can choose.
    """
    probs = np.asarray(probs, dtype=np.float64)
    t = _as_index(y_true)
    top1 = probs.argmax(axis=1) if len(t) else np.zeros(0, dtype=np.int64)
    conf = probs.max(axis=1) if len(t) else np.zeros(0)
    familiar = conf if familiarity is None else np.asarray(familiarity, dtype=np.float64)
    accepted = familiar >= threshold
    with_unknown = np.where(accepted, top1, UNKNOWN)
    n = max(len(t), 1)
    out = {
        "n": int(len(t)),
        "accuracy": float((top1 == t).sum() / n),
        "accuracy_with_unknown": float((with_unknown == t).sum() / n),
        "coverage": float(accepted.sum() / n),
        "selective_accuracy": float((top1[accepted] == t[accepted]).mean()) if accepted.any() else 0.0,
        "threshold": float(threshold),
        "ece": expected_calibration_error(probs, t) if len(t) else 0.0,
        "per_class": per_class_report(t, top1, classes),
        "confusion": confusion_matrix(t, with_unknown, classes),
    }
    if familiarity is not None and len(t):
        out["caution_curve"] = answers_curve(familiar, top1 == t)
    return out


def rename_classes(metrics: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """The same metrics with classes renamed (a rename changes labels only, so every figure stays valid).

    Covers every place a metrics dict names a class: per-class figures, confusion labels and columns,
    confident mistakes, and the drift estimate's class groups.
    """
    if not mapping:
        return dict(metrics)
    name = lambda c: mapping.get(c, c)  # noqa: E731
    out = dict(metrics)
    per_class = metrics.get("per_class")
    if isinstance(per_class, dict) and isinstance(per_class.get("classes"), dict):
        out["per_class"] = {**per_class, "classes": {name(c): v for c, v in per_class["classes"].items()}}
    confusion = metrics.get("confusion")
    if isinstance(confusion, dict):
        out["confusion"] = {**confusion, **{k: [name(c) for c in confusion[k]]
                                            for k in ("labels", "columns") if isinstance(confusion.get(k), list)}}
    if isinstance(metrics.get("confident_mistakes"), list):
        out["confident_mistakes"] = [{**m, "true": name(m.get("true")), "predicted": name(m.get("predicted"))}
                                     for m in metrics["confident_mistakes"]]
    drift = metrics.get("drift")
    if isinstance(drift, dict):
        out["drift"] = {**drift, **{k: [name(c) for c in drift[k]] for k in ("known", "added")
                                    if isinstance(drift.get(k), list)}}
    return out


def recall_gap(true: Sequence[str], predicted: Sequence[str], known: Sequence[str],
               added: Sequence[str]) -> dict[str, Any] | None:
    """Mean recall of the ``known`` classes minus that of the ``added`` ones, in points (0-100).

    Why: when the extractor was fine-tuned on the original classes, classes added later with a head-only
    update are seen through features that were never shaped for them. Their lower recall on validation
    images, compared with the original classes', estimates what a full retrain would gain. Only classes
    with validation images count; None when either group has none.
    """
    recalls: dict[str, float] = {}
    images = 0
    for cls in [*known, *added]:
        hits = [p == cls for t, p in zip(true, predicted, strict=True) if t == cls]
        if hits:
            recalls[cls] = sum(hits) / len(hits)
            images += len(hits)
    known_r = [recalls[c] for c in known if c in recalls]
    added_r = [recalls[c] for c in added if c in recalls]
    if not known_r or not added_r:
        return None
    gap = 100.0 * (float(np.mean(known_r)) - float(np.mean(added_r)))
    return {"gap_points": round(gap, 2), "known": [c for c in known if c in recalls],
            "added": [c for c in added if c in recalls], "val_images": images}
