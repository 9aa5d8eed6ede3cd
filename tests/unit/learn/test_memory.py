"""Model memory: similar datasets rank first; the JSON store survives restarts and damage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pigeonhole.learn.memory import (
    CandidateRecord,
    DatasetTraits,
    InMemoryStore,
    JsonMemoryStore,
    ModelMemory,
    SearchRecord,
    compute_traits,
)

DIGITS = DatasetTraits(28, 1.0, 10, 5400, 0.13, 0.31, 0.93)
PHOTOS = DatasetTraits(240, 0.0, 5, 550, 0.45, 0.27, 0.74)
INSECTS = DatasetTraits(400, 0.0, 2, 100, 0.48, 0.25, 0.95)


def _record(traits: DatasetTraits, winner: str, kind: str = "frozen") -> SearchRecord:
    config = {"kind": kind, "extractor": winner, "size": 28 if "l" in winner[-2:] else 224}
    return SearchRecord(
        traits=traits,
        candidates=[
            CandidateRecord(config={"kind": "frozen", "extractor": "probe", "size": 1}, name="probe",
                            val_accuracy=0.5, mflops=1, latency_ms=None, seconds=1),
            CandidateRecord(config=config, name=winner, val_accuracy=0.9, mflops=10, latency_ms=2.0, seconds=30,
                            chosen=True),
        ],
        target_accuracy=None, preference="balanced", budget_s=60, seconds=50,
    )


def test_similar_datasets_rank_first(tmp_path: Path) -> None:
    memory = ModelMemory(JsonMemoryStore(tmp_path / "memory.json"))
    memory.record(_record(PHOTOS, "mobilenet_v2", "finetune"))
    memory.record(_record(DIGITS, "smallcnn_l", "scratch"))
    memory.record(_record(INSECTS, "squeezenet1_0"))

    fashion = DatasetTraits(28, 1.0, 10, 6000, 0.28, 0.35, 0.85)  # MNIST-like: grey, tiny, many images
    ranked = [r.traits for _, r in memory.nearest(fashion)]
    assert ranked[0] == DIGITS
    suggestions = memory.suggest(fashion, max_distance=100)
    assert suggestions[0].config["extractor"] == "smallcnn_l"
    assert [s.distance for s in suggestions] == sorted(s.distance for s in suggestions)

    flowers_like = DatasetTraits(256, 0.0, 6, 400, 0.44, 0.26, 0.70)
    assert memory.nearest(flowers_like)[0][1].traits == PHOTOS
    # nothing is similar enough: no suggestion rather than a bad one
    assert memory.suggest(DatasetTraits(4000, 0.5, 500, 2, 0.9, 0.05, 0.1), max_distance=1.0) == []


def test_json_store_roundtrip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "memory.json"
    JsonMemoryStore(path).append(_record(DIGITS, "smallcnn_l", "scratch"))
    loaded = JsonMemoryStore(path).load()  # a new process reads what the last one wrote
    assert len(loaded) == 1 and loaded[0].traits == DIGITS and loaded[0].winner().name == "smallcnn_l"
    path.write_text("{not json")
    assert JsonMemoryStore(path).load() == []  # memory is an optimisation, never a failure


def test_compute_traits() -> None:
    pixels = np.full((4, 1, 8, 8), 255, dtype=np.uint8)
    traits = compute_traits([28, 28, 30], [True, True, False], [10, 20, 30], pixels, 0.8)
    assert traits.median_side == 28 and traits.classes == 3 and traits.images_per_class == 20
    assert traits.pixel_mean == 1.0 and traits.pixel_std == 0.0 and abs(traits.grey_fraction - 2 / 3) < 1e-9
    assert ModelMemory(InMemoryStore()).suggest(traits) == []


def test_rounds_for_a_target_come_from_the_winners_rounds() -> None:
    from pigeonhole.learn.memory import Suggestion

    trained = Suggestion({"kind": "scratch"}, 0.1, 0.95, 100.0, (0.5, 0.8, 0.91, 0.93, 0.94), 12)
    assert trained.rounds_for(0.9) == 3  # the first round that reached it
    assert trained.rounds_for(0.95) == 12  # only the finished candidate (head on its features) reached it: all
    assert trained.rounds_for(0.96) is None  # never reached: nothing to plan by
    assert Suggestion({"kind": "frozen"}, 0.1, 0.99, 5.0).rounds_for(0.9) is None  # not trained


def test_rounds_survive_the_json_store(tmp_path: Path) -> None:
    record = _record(DIGITS, "smallcnn_l", "scratch")
    record.candidates[1].round_val_accuracy = [0.7, 0.85, 0.9]
    record.candidates[1].rounds_planned = 10
    JsonMemoryStore(tmp_path / "m.json").append(record)
    old = {"config": {"kind": "frozen"}, "name": "x", "val_accuracy": 0.5, "mflops": 1, "latency_ms": None,
           "seconds": 1}
    assert CandidateRecord(**old).rounds_planned == 0  # records written before rounds were kept still load
    suggestion = ModelMemory(JsonMemoryStore(tmp_path / "m.json")).suggest(DIGITS)[0]
    assert suggestion.rounds_for(0.85) == 2 and suggestion.rounds_planned == 10
