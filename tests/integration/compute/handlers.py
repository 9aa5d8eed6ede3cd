"""Test job kinds with the placement of the product kinds (selftest work, product placement)."""

from __future__ import annotations

from typing import Any

from pigeonhole.compute.builtin import SelfTest
from pigeonhole.compute.handlers import JobContext, handler_for, register

_TRAIN, _PREDICT = handler_for("train"), handler_for("batch-predict")


@register
class TrainLike(SelfTest):
    kind = "test-train"
    resources = _TRAIN.resources
    placement = _TRAIN.placement
    affinity = _TRAIN.affinity


@register
class PredictLike(SelfTest):
    kind = "test-batch-predict"
    resources = _PREDICT.resources
    placement = _PREDICT.placement
    affinity = _PREDICT.affinity


@register
class Stubborn(SelfTest):
    """Ignores cancel requests (the dispatcher must still stop it)."""

    kind = "test-stubborn"

    def run(self, ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        import time

        for i in range(int(payload.get("steps", 100))):
            time.sleep(0.1)
            ctx.save_checkpoint({"step": i + 1})
            ctx.emit({"type": "version", "step": i + 1})
        return {}
