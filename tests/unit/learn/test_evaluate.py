"""Metrics on hand-checked examples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pigeonhole.learn.evaluate import confusion_matrix, evaluate, expected_calibration_error, per_class_report


def test_confusion_and_per_class() -> None:
    classes = ["cat", "dog", "owl"]
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, -1]
    cm = confusion_matrix(y_true, y_pred, classes)
    assert cm["columns"] == ["cat", "dog", "owl", "unknown"]
    assert cm["cells"] == [[0, 0, 1], [0, 1, 1], [1, 1, 2], [2, 2, 1], [2, 3, 1]]  # non-zero [row, column, count]
    report = per_class_report(y_true, [0, 1, 1, 1, 2, 2], classes)["classes"]
    assert report["dog"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert report["cat"]["recall"] == 0.5 and report["owl"]["f1"] == 1.0


def test_the_confusion_of_1000_classes_holds_only_what_happened() -> None:
    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(1000), 10)
    y_pred = np.where(rng.random(10_000) < 0.8, y_true, rng.integers(0, 1000, 10_000))
    cm = confusion_matrix(y_true, y_pred, [f"class {i}" for i in range(1000)])
    assert len(cm["cells"]) == len(set(zip(y_true, y_pred, strict=True))) and sum(n for *_, n in cm["cells"]) == 10_000
    assert len(json.dumps(cm)) < 100_000  # a dense matrix: over 2 MB in every version's metrics


def test_ece() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    # bin 0.9: conf 0.9, accuracy 0.5 -> 0.4; bin 0.6: conf 0.6, accuracy 1.0 -> 0.4
    assert expected_calibration_error(probs, [0, 1, 0, 0]) == pytest.approx(0.4)
    assert expected_calibration_error(np.eye(3), [0, 1, 2]) == pytest.approx(0.0)


def test_evaluate_is_json_and_counts_unknown() -> None:
    probs = np.array([[0.8, 0.2], [0.55, 0.45], [0.3, 0.7], [0.1, 0.9]])
    m = evaluate([0, 1, 1, 1], probs, ["a", "b"], threshold=0.6)
    json.dumps(m)
    assert m["accuracy"] == 0.75 and m["coverage"] == 0.75
    assert m["accuracy_with_unknown"] == 0.75 and m["selective_accuracy"] == 1.0
    assert m["confusion"]["cells"] == [[0, 0, 1], [1, 1, 2], [1, 2, 1]]
