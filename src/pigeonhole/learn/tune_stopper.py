"""The Tune stopper that ends a hyper-parameter search when its job is cancelled (see :mod:`.tune`).

A module of its own because it imports Ray at the top (``tune`` imports Ray lazily) and because Tune
pickles its run configuration: a class defined here travels by reference, with none of the job's
objects (its cancel check holds locks and connections), which stay in :data:`CANCEL_CHECKS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.stopper import Stopper

CANCEL_CHECKS: dict[str, Callable[[], bool]] = {}  # by search name, in the process running the Tune controller


class CancelStopper(Stopper):
    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        check = CANCEL_CHECKS.get(self.key)
        return check is not None and bool(check())
