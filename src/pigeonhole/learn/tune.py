"""The last stage of the search: a hyper-parameter search with Ray Tune and the ASHA scheduler.

The search calls a *tuner* only when a target was given, the ladder has finished with time left and
the target is still not met (on a small dataset a fine-tune reaches its 60-round cap long before a
10-minute budget ends). It is injected (``run_search(..., tuner=ray_asha_tuner())``) so the ML core
runs, and is tested, without Ray; the training job passes it.

What it does with the time left: first it keeps back what retraining the best trained candidate took
(the winning recipe is retrained at least that long, through the normal path, so the result gets the
same head, export, evaluation and card as any candidate and is chosen only if it wins on validation;
the model memory then remembers the tuned recipe for similar datasets). The rest goes to trials of
that candidate's recipe with other learning rates, weight decays and label smoothings (the recipe
itself is one of them), each a complete training of up to as many rounds, cut early by ASHA when its
validation accuracy trails the others' at the same round. When the recipe itself wins, nothing is
retrained.

Where trials run: on CPUs that the cluster has free beyond one kept for quick jobs (imports, class
additions, predictions), several at a time on a large cluster. When there are none (one machine with
2 cores: the training job holds one, the other stays free for a class addition), the trials run one at
a time on the training job's own node and CPUs, which the job leaves idle while it waits for them.
Ray is imported lazily: ``import pigeonhole.learn.tune`` costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pigeonhole.learn.candidates import CandidateConfig, TrainParams
from pigeonhole.learn.search_types import Scored, TuneOutcome, Tuner, TuneStage

log = logging.getLogger(__name__)
KEEP_FREE_CPUS = 1.0  # left for other jobs while trials run
MIN_TRIALS = 4  # fewer recipes than this compares too little to be worth the time
MAX_TRIALS = 16
MIN_TRIAL_ROUNDS = 8  # (or the base recipe's, if fewer) shorter trials say little about a full-length training
MIN_TRIAL_STEPS = 100  # nor do fewer optimizer steps (MNIST, 150 images: after 15 rounds of 2 steps, all at chance)
TRIAL_OVERHEAD_S = 3.0  # building the network, reading the images, a slow first round (the worker is reused)
TRIAL_ROUND_MARGIN = 1.2  # a trial's round against the base recipe's (flowers5: 2.0 s vs 1.7 s at 192 px)
REDUCTION = 3  # ASHA's reduction factor
RETRAIN_MARGIN = 1.1  # the winner's retraining, as a multiple of the time its base candidate took
WEIGHT_DECAYS = (0.0, 0.01, 0.05, 0.1)
LABEL_SMOOTHINGS = (0.0, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class TrialPlan:
    trials: int
    epochs: int  # rounds of one trial that runs to the end (ASHA's max_t)
    concurrent: int
    trial_cpus: float  # Ray CPUs per trial; 0: on the training job's own CPUs, pinned to its node
    threads: int  # PyTorch threads per trial
    seconds: float  # the stage's share of the budget


def later_trial_rounds(epochs: int) -> float:
    """Expected rounds of a trial that is not the first on its slot, under asynchronous ASHA (grace period 1
    round, reduction factor :data:`REDUCTION`). A trial goes on past a rung when it is in the top third of
    the results recorded there so far, and a recipe that leads early mostly leads later too: about a third
    of the trials run to the end and the rest stop after a round or two. (Independent halving at every
    rung would predict far less; flowers5, 80 images: the third of three trials ran 20 of 60 rounds.)"""
    return 1 + (epochs - 1) / REDUCTION


def plan_trials(seconds: float, epoch_s: float, base_epochs: int, free_cpus: float, threads: int,
                keep_free_cpus: float = KEEP_FREE_CPUS, steps_per_round: int = 1_000) -> TrialPlan | None:
    """How many trials of how many rounds fit in ``seconds``; None when too few to compare.

    ``epoch_s`` is one round of the base recipe at ``threads`` threads. The first trial on each slot runs
    to the end (asynchronous ASHA has nothing to compare it with yet); later ones cost what ASHA lets
    them run on average. Shorter trials are taken before fewer of them: the winner is retrained at full
    length anyway.
    """
    spare = math.floor(free_cpus - keep_free_cpus)
    if spare >= 1:
        trial_cpus = float(min(threads, spare))
        concurrent, trial_threads = int(spare // trial_cpus), int(trial_cpus)
    else:
        trial_cpus, concurrent, trial_threads = 0.0, 1, threads
    round_s = TRIAL_ROUND_MARGIN * epoch_s * threads / trial_threads
    rounds = seconds * concurrent / max(round_s, 1e-6)  # what the time buys, over all slots
    overhead = TRIAL_OVERHEAD_S / max(round_s, 1e-6)
    shortest = max(2, min(max(MIN_TRIAL_ROUNDS, math.ceil(MIN_TRIAL_STEPS / max(1, steps_per_round))), base_epochs))
    epochs = max(shortest, base_epochs)
    while True:
        first = concurrent * (epochs + overhead)
        later = later_trial_rounds(epochs) + overhead
        trials = concurrent + int((rounds - first) / later) if rounds >= first else 0
        if trials >= MIN_TRIALS or epochs <= shortest:
            break
        epochs = max(shortest, epochs // 2)
    if trials < MIN_TRIALS:
        return None
    return TrialPlan(min(trials, MAX_TRIALS), epochs, min(concurrent, trials), trial_cpus, trial_threads, seconds)


def _choices(options: tuple[float, ...], base: float) -> list[float]:
    return sorted({*options, base})


def _space(base: TrainParams) -> dict[str, Any]:
    from ray import tune

    return {
        "lr": tune.loguniform(base.lr / 4, base.lr * 4),
        "weight_decay": tune.choice(_choices(WEIGHT_DECAYS, base.weight_decay)),
        "label_smoothing": tune.choice(_choices(LABEL_SMOOTHINGS, base.label_smoothing)),
    }


def _recipe(params: TrainParams) -> dict[str, float]:
    return {"lr": params.lr, "weight_decay": params.weight_decay, "label_smoothing": params.label_smoothing}


def _trial(cfg: dict[str, Any], *, setup: dict[str, Any], xt: np.ndarray, yt: np.ndarray, xv: np.ndarray,
           yv: np.ndarray) -> None:
    """One Tune trial: a complete short training of the base candidate's network with ``cfg``'s recipe,
    reporting validation accuracy after every round. Module-level and fed plain values only: Tune
    pickles it to the trial's worker."""
    import torch
    from ray import tune

    from pigeonhole.learn.backbones import build_architecture, build_extractor
    from pigeonhole.learn.train import train_extractor
    from pigeonhole.learn.weights import WeightsCatalog

    torch.set_num_threads(setup["threads"])
    with contextlib.suppress(OSError):  # the job's CPU priority (a job may run below the API's, see compute.worker)
        os.nice(max(0, setup["niceness"] - os.nice(0)))
    base: CandidateConfig = setup["base"]
    spec = base.spec
    pretrained = base.kind == "finetune"
    # No plateau stop inside a trial: ASHA stops trials, and the winner is chosen among those that ran to the end.
    params = replace(base.train, epochs=setup["epochs"], lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]),
                     label_smoothing=float(cfg["label_smoothing"]), patience=setup["epochs"] + 1)
    if pretrained:
        catalog = WeightsCatalog(Path(setup["weights_dir"])) if setup["weights_dir"] else None
        body = build_extractor(spec, catalog)
    else:
        torch.manual_seed(setup["seed"])
        body = build_architecture(spec)
    with torch.no_grad():
        dim = int(body(torch.zeros(1, spec.input_spec().channels, base.size, base.size)).shape[1])
    end = setup["end_wall"]
    train_extractor(
        spec, body, dim, setup["classes"], params, xt, yt, xv, yv, input_size=base.size, seed=setup["seed"],
        deadline=math.inf, pretrained=pretrained, classifier_start=setup["start"],
        should_stop=lambda: time.time() > end,
        on_epoch=lambda epoch, rec: tune.report({"val_accuracy": rec["val_accuracy"], "epoch": epoch}),
    )


def _node_resource(ray: Any) -> str:
    """Ray's resource naming the node this process runs on (``node:<address>``)."""
    here = ray.get_runtime_context().get_node_id()
    node = next(n for n in ray.nodes() if n["NodeID"] == here)
    return f"node:{node['NodeManagerAddress']}"


def ray_asha_tuner(*, address: str | None = None, keep_free_cpus: float = KEEP_FREE_CPUS) -> Tuner:
    """A tuner for :func:`pigeonhole.learn.search.run_search` backed by Ray Tune + ASHA. Inside a Ray
    job it uses that job's cluster; elsewhere it connects to ``address`` or starts a local runtime.
    ``keep_free_cpus``: CPUs of the cluster the trials leave to other jobs."""

    def tune_fn(stage: TuneStage, best: Scored | None) -> TuneOutcome:
        summary: dict[str, Any] = {}
        try:
            return TuneOutcome(_tune(stage, address, keep_free_cpus, summary), summary or None)
        except Exception as exc:  # an optional last stage: the models already made stay, the job goes on
            if not stage.cancelled():
                log.warning("hyper-parameter search failed: %s", exc, exc_info=True)
                stage.progress("The search for better training settings failed; keeping the best model so far")
            return TuneOutcome(None, summary or None)

    return tune_fn


def _tune(stage: TuneStage, address: str | None, keep_free_cpus: float, summary: dict[str, Any]) -> Scored | None:
    """The trials, then the winner retrained; ``summary`` is filled in with what was tried as it goes."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the new console output ignores verbose=0
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # a trial stopped in its first round
    import ray

    trained = [s for s in stage.scored() if s.config.kind != "frozen" and s.train_info.get("history")]
    if not trained:
        return None
    base_scored = max(trained, key=lambda s: s.val_accuracy)
    # Rounds the model memory capped the base at (TrainParams.max_epochs) fell short here: trials plan their own.
    base: CandidateConfig = replace(base_scored.config, flip_tta=False,
                                    train=replace(base_scored.config.train, max_epochs=0))
    epoch_s = statistics.median(float(h["seconds"]) for h in base_scored.train_info["history"])
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else stage.config.threads,
                 include_dashboard=False, log_to_driver=False)
    # The winner is retrained at least as long as the recipe it competes with was: that time is kept back.
    retrain_s = RETRAIN_MARGIN * base_scored.seconds + stage.finish_s(base)
    plan = plan_trials(stage.remaining() - retrain_s, epoch_s, base.train.epochs,
                       float(ray.available_resources().get("CPU", 0.0)), max(1, stage.config.threads),
                       keep_free_cpus, math.ceil(len(stage.targets("train")) / base.train.batch_size))
    if plan is None:
        summary.update({"base": base.name, "trials": 0, "skipped": "not enough time left",
                        "seconds_for_trials": round(stage.remaining() - retrain_s, 1)})
        stage.progress("Not enough time left to compare other training settings")
        return None
    stage.progress(f"Trying {plan.trials} other training settings ({plan.epochs} rounds each)")
    started = time.monotonic()
    rows = _run_trials(stage, base, plan)
    stage.spent(plan.seconds)
    furthest = max((int(m.get("epoch") or 0) for _, m in rows), default=0)
    finished = [(c, m) for c, m in rows if int(m.get("epoch") or 0) == furthest]  # compared at the same round
    summary.update({
        "base": base.name, "trials": len(rows), "epochs": plan.epochs,
        "seconds": round(time.monotonic() - started, 1), "trial_cpus": plan.trial_cpus,
        "concurrent": plan.concurrent, "winner": None,
        "results": [{**{k: float(v) for k, v in c.items()}, "val_accuracy": m.get("val_accuracy"),
                     "rounds": m.get("epoch")} for c, m in rows],
    })
    log.info("hyper-parameter search: %s", summary)
    if furthest < 2 or stage.cancelled():
        return None
    # max() keeps the first of equals, and the recipe itself was the first trial: a tie keeps it
    winner = {k: float(v) for k, v in max(finished, key=lambda cm: float(cm[1]["val_accuracy"]))[0].items()}
    summary["winner"] = winner
    if winner == _recipe(base.train):
        stage.progress("The current training settings did best; keeping them")
        return None
    config = replace(base, train=replace(base.train, lr=winner["lr"], weight_decay=winner["weight_decay"],
                                         label_smoothing=winner["label_smoothing"], tuned=True))
    scored = stage.run_trained(config, stage.finish_s(config))
    if scored is None:
        stage.progress("No time left to retrain with the better settings found")
        return None
    scored.train_info["tuning"] = summary
    return scored


def _run_trials(stage: TuneStage, base: CandidateConfig,
                plan: TrialPlan) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Run the trials; (recipe, last reported metrics) of each."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from pigeonhole.learn.tune_stopper import CANCEL_CHECKS, CancelStopper

    config = stage.config
    start = stage.classifier_start(base)  # the trials start where the base started
    setup = {"base": base, "epochs": plan.epochs, "threads": plan.threads, "seed": config.seed,
             "niceness": os.nice(0), "classes": stage.class_count, "start": start,
             "weights_dir": str(config.weights_dir) if config.weights_dir else None,
             "end_wall": time.time() + plan.seconds}
    trainable = tune.with_parameters(
        _trial, setup=setup, xt=stage.training_pixels(base), yt=np.asarray(stage.targets("train")),
        xv=stage.validation_pixels(base), yv=np.asarray(stage.targets("val")),
    )
    if plan.trial_cpus > 0:
        resources: dict[str, float] = {"cpu": plan.trial_cpus}
    else:  # the job's own CPUs: pinned to its node, one trial at a time
        resources = {"cpu": 0, _node_resource(ray): 0.001}
    root = Path(config.cache_dir or Path.cwd()).resolve() / "ray_tune"
    name = f"tune-{config.job_id or 'local'}-{int(time.time() * 1000)}"
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=_space(base.train),
        tune_config=tune.TuneConfig(
            metric="val_accuracy", mode="max", num_samples=plan.trials, time_budget_s=plan.seconds,
            reuse_actors=True,
            search_alg=BasicVariantGenerator(points_to_evaluate=[_recipe(base.train)],
                                             max_concurrent=plan.concurrent, random_state=config.seed),
            scheduler=ASHAScheduler(max_t=plan.epochs, grace_period=1, reduction_factor=REDUCTION,
                                    time_attr="epoch"),
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(root), verbose=0, stop=CancelStopper(name)),
    )
    CANCEL_CHECKS[name] = stage.cancelled
    try:
        results = tuner.fit()
        return [(r.config, r.metrics or {}) for r in results if r.config]
    finally:
        CANCEL_CHECKS.pop(name, None)
        shutil.rmtree(root / name, ignore_errors=True)
