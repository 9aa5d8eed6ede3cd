"""The search's hyper-parameter stage on a real Ray cluster, started from inside a job's task as the training
job does: Ray Tune trials with ASHA, then the winning recipe retrained and scored like any candidate."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
import ray

from pigeonhole.learn.data import MappingSource, TrainingSet
from pigeonhole.learn.search import NullReporter, SearchConfig, run_search
from pigeonhole.learn.tune import MIN_TRIALS, ray_asha_tuner
from tests.unit.learn.conftest import datasets_dir, digit_set, read_mnist

pytestmark = pytest.mark.slow
# The search plans on a virtual clock; the trials run under Ray Tune on the real one, within the time that plan
# gives them. So a round is stated as at least what it takes here with another process keeping a core busy
# (0.9 s, with validation and the checkpoint; about 0.3 s idle): the trials then have room at any load.
BUDGET_S = 360.0  # the base (60 rounds), four trials of 60 rounds under ASHA, the winner retrained
STEP_S = 1.0  # a training step of the small CNN at 28 px (one a round here), as the search's cost model is told
POOR_LR = 6e-4  # a fifth of what the ladder uses for a small CNN: the search should find better


def _digits(n_train: int, n_val: int, n_test: int) -> tuple[TrainingSet, MappingSource]:
    images, labels = read_mnist("train", n_train + n_val + n_test)
    return digit_set(images, labels, lambda i: "train" if i < n_train else "val" if i < n_train + n_val else "test")


@ray.remote(num_cpus=1, max_retries=0)
def _training_job(workdir: str) -> dict[str, Any]:
    """What the training job does on its worker (minus the blob store): the search, its Tune stage included.
    The ladder's small CNN gets a poor learning rate here, so a better recipe exists to be found."""
    import threading  # imported here: the task travels by value, and its nested class's globals do not
    from pathlib import Path

    from pigeonhole.learn.budget import FixedCosts
    from pigeonhole.learn.clock import VirtualClock
    from pigeonhole.learn.planner import Planner

    ladder = Planner.ladder

    def poor_ladder(self: Any, *args: Any) -> list[Any]:
        return [replace(c, train=replace(c.train, lr=POOR_LR)) if c.kind == "scratch" else c
                for c in ladder(self, *args)]

    Planner.ladder = poor_ladder  # this worker process only
    training_set, source = _digits(60, 150, 50)
    config = SearchConfig(target_accuracy=0.999, time_budget_s=BUDGET_S, cache_dir=Path(workdir) / "cache",
                          output_dir=Path(workdir) / "out", tune_min_s=20.0, job_id="tune-test",
                          threads=1)  # two threads on one free core wait on each other: 9x slower when busy
    started = time.monotonic()
    stages: list[str] = []

    class Reporter(NullReporter):
        """Holds a lock, as the job's context does: nothing of it may travel to the trials."""

        lock = threading.Lock()

        def cancelled(self) -> bool:
            with self.lock:
                return False

        def progress(self, fraction: float, stage: str, eta_s: float | None, metrics: dict[str, Any]) -> None:
            if " round " not in stage and (not stages or not stages[-1].endswith(stage)):
                stages.append(f"{time.monotonic() - started:.1f}s {stage}")

    try:
        result = run_search(training_set, source, config, Reporter(), tuner=ray_asha_tuner(keep_free_cpus=4),
                            clock=VirtualClock(), costs=FixedCosts(step_s=STEP_S, step_size=28))
    finally:
        Planner.ladder = ladder
    return {"leaderboard": result.leaderboard, "stop_reason": result.stop_reason, "stages": stages,
            "tuning": result.tuning, "elapsed_s": result.elapsed_s,
            "chosen": result.chosen.name if result.chosen else None}


def test_an_unmet_target_gets_a_hyper_parameter_search_on_the_cluster(ray_cluster, tmp_path) -> None:
    """With the target unmet and time left after the ladder, trials run as Ray Tune trials (ASHA cuts the
    weak ones), the recipe itself among them; the winning recipe is retrained, scored and named ``tuned``;
    all within the budget. ``keep_free_cpus`` covers the test cluster, so the trials run as on one 2-core
    machine: one at a time on the job's own CPUs."""
    if not (datasets_dir() / "mnist").is_dir():
        pytest.skip(f"shared MNIST not found under {datasets_dir()}")
    out = ray.get(_training_job.remote(str(tmp_path)), timeout=BUDGET_S * 3)
    context = f"{out['stages']}\n{out['tuning']}"
    tuning = out["tuning"]
    assert tuning is not None and tuning["trials"] >= MIN_TRIALS, context
    assert tuning["trial_cpus"] == 0 and tuning["concurrent"] == 1, context  # on the job's CPUs, one at a time
    results = tuning["results"]
    assert results[0]["lr"] == POOR_LR and results[0]["rounds"] == tuning["epochs"], "the recipe runs first, fully"
    assert any(r["rounds"] is not None and r["rounds"] < tuning["epochs"] for r in results), context
    assert tuning["winner"] is not None and tuning["winner"]["lr"] != POOR_LR, context

    tuned = [row for row in out["leaderboard"] if "/tuned" in row["name"]]
    assert len(tuned) == 1, ([row["name"] for row in out["leaderboard"]], context)
    assert tuned[0]["tuning"] == tuning and tuned[0]["config"]["train"]["lr"] == tuning["winner"]["lr"]
    assert any(row["name"] == tuning["base"] for row in out["leaderboard"])
    assert 0 < tuned[0]["val_accuracy"] <= 1  # scored like any candidate; chosen only if it wins on validation
    assert out["stop_reason"] in ("exhausted", "budget") and out["chosen"], out["stop_reason"]
    assert out["elapsed_s"] <= BUDGET_S, f"{out['elapsed_s']:.1f}s for a {BUDGET_S:.0f}s budget"
