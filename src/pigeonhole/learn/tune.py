"""Optional hyper-parameter search with Ray Tune and the ASHA scheduler.

The search calls a *tuner* only when a target was given, the ladder is exhausted and
the target is still not met. It is injected (``run_search(..., tuner=ray_asha_tuner())``)
so the ML core runs, and is tested, without a Ray cluster; the compute layer passes it
when a cluster with spare CPUs/GPUs exists.

Strategy, kept simple on purpose: half of the remaining budget goes to short ASHA trials
of the trained candidate's recipe (learning rate, weight decay, label smoothing), early
trials cut by validation accuracy per epoch; the other half retrains the best recipe
through the normal path (so the result gets the same head, export and card as any other
candidate). Ray is imported lazily: ``import pigeonhole.learn.tune`` costs nothing.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pigeonhole.learn.candidates import CandidateConfig, TrainParams


def _space(base: TrainParams) -> dict[str, Any]:
    from ray import tune

    return {
        "lr": tune.loguniform(base.lr / 4, base.lr * 4),
        "weight_decay": tune.choice([0.0, 0.01, 0.05, 0.1]),
        "label_smoothing": tune.choice([0.0, 0.05, 0.1, 0.2]),
    }


def ray_asha_tuner(*, num_samples: int = 6, address: str | None = None, trial_cpus: float | None = None):
    """A tuner for :func:`pigeonhole.learn.search.run_search` backed by Ray Tune + ASHA."""

    def tune_fn(*, search: Any, best: Any) -> Any:
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler

        from pigeonhole.learn.backbones import build_architecture, build_extractor
        from pigeonhole.learn.train import train_extractor

        trained = [s for s in search.scored if s.config.kind != "frozen"]
        if not trained:
            return None
        base: CandidateConfig = max(trained, key=lambda s: s.val_accuracy).config
        budget = search.remaining() / 2
        if budget < 30:
            return None
        spec = base.spec
        pretrained = base.kind == "finetune"
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=None if address else search.config.threads,
                     include_dashboard=False, log_to_driver=False)
        start = search.probe_classifier(base)
        train_pixels = search.training_pixels(base)
        val_pixels = search.pixel_fn(base)(search.keys("val"))
        refs = {k: ray.put(v) for k, v in (("xt", train_pixels), ("yt", search.y("train")),
                                            ("xv", val_pixels), ("yv", search.y("val")))}
        # the trial closure must pickle: capture plain values only (no locks, sessions, caches)
        weights_dir = search.config.weights_dir
        seed = search.config.seed
        classes = len(search.classes)
        epochs = max(2, base.train.epochs)

        def trainable(cfg: dict[str, Any]) -> None:
            params = replace(base.train, epochs=epochs, lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                             label_smoothing=cfg["label_smoothing"])
            if pretrained:
                from pigeonhole.learn.weights import WeightsCatalog

                body = build_extractor(spec, WeightsCatalog(weights_dir) if weights_dir else None)
            else:
                body = build_architecture(spec)
            import torch

            with torch.no_grad():
                dim = int(body(torch.zeros(1, spec.input_spec().channels, base.size, base.size)).shape[1])
            train_extractor(
                spec, body, dim, classes, params, ray.get(refs["xt"]), np.asarray(ray.get(refs["yt"])),
                ray.get(refs["xv"]), np.asarray(ray.get(refs["yv"])), input_size=base.size,
                seed=seed, deadline=time.monotonic() + budget, pretrained=pretrained, classifier_start=start,
                on_epoch=lambda epoch, rec: tune.report({"val_accuracy": rec["val_accuracy"], "epoch": epoch}),
            )

        resources = {"cpu": trial_cpus or search.config.threads}
        cache_dir = search.config.cache_dir
        storage = str(Path(cache_dir).resolve() / "ray_tune") if cache_dir else None
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space=_space(base.train),
            tune_config=tune.TuneConfig(
                metric="val_accuracy", mode="max", num_samples=num_samples, time_budget_s=budget,
                scheduler=ASHAScheduler(max_t=epochs, grace_period=1, reduction_factor=2, time_attr="epoch"),
            ),
            run_config=tune.RunConfig(verbose=0, storage_path=storage),
        )
        results = tuner.fit()
        try:
            winner = results.get_best_result().config
        except RuntimeError:
            return None
        config = replace(base, train=replace(base.train, lr=winner["lr"], weight_decay=winner["weight_decay"],
                                             label_smoothing=winner["label_smoothing"]))
        return search.run_trained(config, search.estimate_finish_s(config))

    return tune_fn
