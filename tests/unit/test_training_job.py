"""The training job's worker side hands the search its last stage: the Ray Tune hyper-parameter search."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pigeonhole.learn.search import SearchResult
from pigeonhole.models import training


def test_the_training_job_runs_the_search_with_the_hyper_parameter_stage(monkeypatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def fake_search(training_set, source, config, reporter, *, memory=None, tuner=None) -> SearchResult:
        seen.update(tuner=tuner, config=config)
        return SearchResult(chosen=None, reported=[], leaderboard=[], stop_reason="cancelled", elapsed_s=1.0,
                            first_candidate_s=None, traits={}, tuning={"trials": 4})

    monkeypatch.setattr(training, "run_search", fake_search)
    ctx = SimpleNamespace(blob_url=str(tmp_path / "blobs"), cache_dir=tmp_path / "cache", cache_max_bytes=1 << 30,
                          job_id="job1", attempt=1, cached=lambda key: None)
    payload = {"images": [["a" * 64, "cat", "train", 10]], "classes": ["cat"], "time_budget_s": 60,
               "weights_dir": str(tmp_path), "model_id": "m1", "dataset_id": "d1", "target_accuracy": 0.9}
    out = training.TrainHandler().run(ctx, payload)  # type: ignore[arg-type]
    assert callable(seen["tuner"]) and seen["tuner"].__qualname__.startswith("ray_asha_tuner")
    assert seen["config"].target_accuracy == 0.9 and out["tuning"] == {"trials": 4}
