"""Planning the hyper-parameter stage (learn.tune): how many trials of how many rounds, on which CPUs.
The stage itself runs on a real Ray cluster in tests/integration/compute/test_tune.py."""

from __future__ import annotations

import pytest

from pigeonhole.learn.tune import (
    MAX_TRIALS,
    MIN_TRIAL_ROUNDS,
    MIN_TRIAL_STEPS,
    MIN_TRIALS,
    REDUCTION,
    TRIAL_OVERHEAD_S,
    TRIAL_ROUND_MARGIN,
    later_trial_rounds,
    plan_trials,
)


def test_a_later_trial_costs_its_first_round_and_a_share_of_the_rest() -> None:
    assert later_trial_rounds(1) == 1
    assert later_trial_rounds(1 + 3 * REDUCTION) == 4


def test_on_one_small_machine_trials_run_one_at_a_time_on_the_jobs_own_cpus() -> None:
    """2 cores: the job holds one, one is free and stays free for quick jobs (a class addition)."""
    plan = plan_trials(300.0, 1.0, 20, free_cpus=1.0, threads=2)
    assert plan is not None
    assert plan.trial_cpus == 0 and plan.concurrent == 1 and plan.threads == 2
    assert plan.epochs == 20 and MIN_TRIALS <= plan.trials <= MAX_TRIALS


def test_a_cluster_with_spare_cpus_runs_trials_side_by_side() -> None:
    plan = plan_trials(300.0, 1.0, 20, free_cpus=9.0, threads=2)
    assert plan is not None
    assert plan.trial_cpus == 2 and plan.concurrent == 4 and plan.threads == 2
    assert plan.trials == MAX_TRIALS


def test_trials_get_shorter_before_they_get_fewer_and_none_below_the_minimum() -> None:
    assert plan_trials(300.0, 1.0, 60, free_cpus=1.0, threads=2).epochs == 60  # type: ignore[union-attr]
    halved = plan_trials(100.0, 1.0, 60, free_cpus=1.0, threads=2)  # four full-length trials would not fit
    assert halved is not None and halved.epochs == 30 and halved.trials >= MIN_TRIALS
    assert plan_trials(20.0, 1.0, 60, free_cpus=1.0, threads=2) is None  # not even 4 trials of 8 rounds fit
    short = plan_trials(300.0, 1.0, 3, free_cpus=1.0, threads=2)
    assert short is not None and short.epochs == 3  # never longer than the recipe being tuned
    assert MIN_TRIAL_ROUNDS == 8
    few_steps = plan_trials(150.0, 1.0, 60, free_cpus=1.0, threads=2, steps_per_round=2)
    assert few_steps is not None and few_steps.epochs == MIN_TRIAL_STEPS // 2  # 50 rounds of 2 steps, not 30


@pytest.mark.parametrize("seconds", [60.0, 120.0, 600.0])
def test_the_plan_fits_its_time(seconds: float) -> None:
    """The first trial runs to the end, the later ones what ASHA allows on average."""
    round_s = 0.5
    plan = plan_trials(seconds, round_s, 30, free_cpus=1.0, threads=2)
    assert plan is not None
    rounds = plan.epochs + (plan.trials - 1) * later_trial_rounds(plan.epochs)
    assert rounds * round_s * TRIAL_ROUND_MARGIN + plan.trials * TRIAL_OVERHEAD_S <= seconds


def test_the_cancel_stopper_travels_without_the_jobs_objects() -> None:
    """Tune pickles its run configuration; the job's cancel check holds locks, so only a key travels."""
    import pickle
    import threading

    from ray import cloudpickle

    from pigeonhole.learn.tune_stopper import CANCEL_CHECKS, CancelStopper

    lock = threading.Lock()
    cancelled = {"now": False}

    def check() -> bool:
        with lock:
            return cancelled["now"]

    stopper = CancelStopper("search-1")
    CANCEL_CHECKS["search-1"] = check
    try:
        copy = pickle.loads(cloudpickle.dumps(stopper))
        assert not copy.stop_all() and not copy("trial", {})
        cancelled["now"] = True
        assert copy.stop_all()
    finally:
        CANCEL_CHECKS.pop("search-1")
    assert not copy.stop_all()  # the search is over: nothing to stop
