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


def test_a_training_fetches_the_recommended_extractors_beside_itself_not_before(monkeypatch, tmp_path: Path) -> None:
    """Where fetching is allowed, the missing recommended extractors are fetched in a background thread (the first
    version must not wait on a download) and land verified for the next trainings. The publisher here is a local
    server with the shared MobileNetV2 file, named as the built-in entry is."""
    import functools
    import http.server
    import json
    import shutil
    import threading

    from pigeonhole.learn.weights import WeightsCatalog, sha256_file
    from tests.conftest import SHARED_DIR

    served = tmp_path / "served"
    served.mkdir()
    source = SHARED_DIR / "weights" / "mobilenet_v2-imagenet-dequant.safetensors"
    shutil.copy(source, served / "mnv2.safetensors")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        weights = tmp_path / "weights"
        weights.mkdir()
        entry = {**WeightsCatalog(None).get("mobilenet_v2-imagenet1k_v2").to_json(), "file": "mnv2.safetensors",
                 "format": "safetensors", "sha256": sha256_file(source),
                 "url": f"http://127.0.0.1:{server.server_address[1]}/mnv2.safetensors"}
        dino = {**WeightsCatalog(None).get("dinov2_vits14").to_json(), "recommended": False}
        (weights / "weights.json").write_text(json.dumps({"weights": [entry, dino]}))
        said = training._fetch_recommended(weights, builtin_weights=True)
        assert said is not None and "mobilenet_v2-imagenet1k_v2" in said and "background" in said
        for thread in threading.enumerate():
            if thread.name == "pigeonhole-weights-fetch":
                thread.join(60)
        assert WeightsCatalog(weights).is_present("mobilenet_v2-imagenet1k_v2")
        assert training._fetch_recommended(weights, builtin_weights=True) is None  # nothing left to fetch
    finally:
        server.shutdown()
        server.server_close()
