"""The CLI's model summary (after `model train` and `model status`) says what the model page says."""

from __future__ import annotations

from typing import Any

from pigeonhole.client import commands
from pigeonhole.learn.planner import NO_PRETRAINED


class _Client:
    def __init__(self, model: dict[str, Any]) -> None:
        self.model = model

    def get_model(self, model_id: str) -> dict[str, Any]:
        return self.model


def test_the_summary_says_when_no_pretrained_extractor_was_used(capsys) -> None:
    model = {"id": "m1", "name": "Ants", "status": "ready", "active_version": 1, "metrics": {"accuracy": 0.676},
             "notes": [NO_PRETRAINED]}
    commands._describe(_Client(model), "m1", "http://127.0.0.1:8000")  # type: ignore[arg-type]
    said = " ".join(capsys.readouterr().err.split())
    assert "test accuracy 67.6%" in said and f"Note: {NO_PRETRAINED}" in said
    commands._describe(_Client({**model, "notes": []}), "m1", "http://127.0.0.1:8000")  # type: ignore[arg-type]
    assert "Note:" not in capsys.readouterr().err
