"""The automatic search: anytime first model, budget, early stop, cancel, routing, artifacts."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.unit.learn.conftest import digit_set

from pigeonhole.learn import planner as planner_module
from pigeonhole.learn import runners
from pigeonhole.learn import search as search_module
from pigeonhole.learn.artifacts import CARD_FILE, HEAD_FILE, MODEL_FILE
from pigeonhole.learn.budget import FixedCosts
from pigeonhole.learn.candidates import CandidateConfig
from pigeonhole.learn.clock import VirtualClock
from pigeonhole.learn.data import MappingSource, TrainingImage, TrainingSet, sha256_bytes
from pigeonhole.learn.export import INPUT_NAME, open_session
from pigeonhole.learn.features import ImageItem, compute_features, node_feature_cache
from pigeonhole.learn.grow import extractor_of
from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.held_out import HeldOutFeatures
from pigeonhole.learn.memory import InMemoryStore, ModelMemory
from pigeonhole.learn.neighbours import NeighbourIndex
from pigeonhole.learn.novelty import KINDS
from pigeonhole.learn.planner import Planner, finetune_config
from pigeonhole.learn.search import CandidateResult, NullReporter, Search, SearchConfig, run_search


def flower_set(flowers, train: int = 12, val: int = 6, test: int = 6) -> tuple[TrainingSet, MappingSource]:
    blobs: dict[str, bytes] = {}
    images: list[TrainingImage] = []
    for split, data, per in (("train", flowers.train, train), ("val", flowers.val, val), ("test", flowers.test, test)):
        taken: dict[str, int] = {}
        for raw, label in data:
            if taken.get(label, 0) < per:
                key = sha256_bytes(raw)
                blobs[key] = raw
                images.append(TrainingImage(key, label, split, len(raw)))
                taken[label] = taken.get(label, 0) + 1
    return TrainingSet(tuple(images)), MappingSource(blobs)


class Recorder:
    def __init__(self, cancel_after: int | None = None) -> None:
        self.t0 = time.monotonic()
        self.ready: list[tuple[float, CandidateResult]] = []
        self.updates: list[tuple[float, str, float | None]] = []
        self.cancel_after = cancel_after

    def progress(self, fraction, stage, eta_s, metrics) -> None:
        assert 0.0 <= fraction <= 1.0 and isinstance(stage, str) and stage
        self.updates.append((fraction, stage, eta_s))

    def candidate_ready(self, candidate: CandidateResult) -> None:
        self.ready.append((time.monotonic() - self.t0, candidate))

    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.ready) >= self.cancel_after


# A small CNN's step at 28 px, stated (longer than 2 cores take): with a VirtualClock the plan is the same anywhere.
CNN_COSTS = FixedCosts(step_s=0.2, step_size=28)


def _config(tmp_path: Path, weights: Path, **kw) -> SearchConfig:
    kw.setdefault("time_budget_s", 30.0)
    return SearchConfig(weights_dir=weights, cache_dir=tmp_path / "cache", output_dir=tmp_path / "out", **kw)


@pytest.fixture(scope="module")
def small_flowers(flowers) -> tuple[TrainingSet, MappingSource]:
    return flower_set(flowers)


def test_first_candidate_is_fast_valid_and_complete(small_flowers, shared_weights, tmp_path) -> None:
    ts, source = small_flowers
    rec = Recorder(cancel_after=1)  # cancel right after the anytime model: also checks cancel
    result = run_search(ts, source, _config(tmp_path, shared_weights), rec)
    assert result.stop_reason == "cancelled"
    assert len(rec.ready) == 1 and len(result.reported) == 1
    _, first = rec.ready[0]  # how soon it comes is benchmarks/learn_search.py's to measure
    assert first.config["kind"] == "frozen" and result.first_candidate_s == pytest.approx(first.ready_at_s)

    files = {k: Path(v) for k, v in first.artifacts.items()}
    assert files["model"].name == MODEL_FILE and files["head"].name == HEAD_FILE and files["card"].name == CARD_FILE
    card = json.loads(files["card"].read_text())
    assert card["classes"] == list(ts.classes)
    assert {"height", "width", "layout", "dtype", "color", "mean", "std"} <= set(card["input"])
    assert card["input"]["dtype"] == "uint8" and card["input"]["layout"] == "NCHW"
    metrics = card["metrics"]
    for key in ("accuracy", "balanced_accuracy", "per_class", "confusion", "ece", "confident_mistakes"):
        assert key in metrics, key
    assert metrics["split"] == "test" and metrics["n"] == len(ts.split("test"))
    # a small set: the frozen candidate is measured leaving each train+val image out, and its head holds them all
    held = len(ts.split("train")) + len(ts.split("val"))
    assert metrics["val_measured_on"] == "left-out train+val images" and metrics["val_images"] == held
    assert sum(RidgeHead.from_bytes(files["head"].read_bytes()).counts.values()) == held
    assert set(metrics["per_class"]["classes"]) == set(ts.classes)
    assert card["model_size_bytes"] == files["model"].stat().st_size
    assert card["speed"]["latency_ms"] > 0 and card["speed"]["throughput_img_s"] > 0
    assert card["leaderboard"] and card["lineage"]["seed"] == 0 and card["training"]["seconds"] > 0
    assert card["lineage"]["extractor_classes"] is None  # frozen pretrained: fine-tuned on none of the classes
    for mistake in metrics["confident_mistakes"]:
        assert mistake["image"] in {i.key for i in ts.split("test")}

    # "unknown": the detector and the caution on the card; what each caution delivers, measured on test
    assert card["unknown"]["detector"] in KINDS and card["unknown"]["caution"] == card["unknown_threshold"] == 0.05
    point = next(p for p in metrics["caution_curve"] if p["caution"] == 0.05)
    assert point["answered"] == pytest.approx(metrics["coverage"])
    assert point["right_when_answered"] == pytest.approx(metrics["selective_accuracy"])

    # the ONNX file alone serves: probabilities in card class order, familiarity, and features for the head
    session = open_session(files["model"])
    assert [o.name for o in session.get_outputs()] == ["probabilities", "familiarity", "features"]
    h, w = card["input"]["height"], card["input"]["width"]
    probs, familiar, feats = session.run(None, {INPUT_NAME: np.zeros((2, 3, h, w), dtype=np.uint8)})
    assert probs.shape == (2, len(ts.classes)) and np.allclose(probs.sum(1), 1, atol=1e-5)
    head = RidgeHead.from_bytes(files["head"].read_bytes())
    assert head.classes == list(ts.classes) and feats.shape[1] == head.input_dim
    np.testing.assert_allclose(head.predict_proba(feats), probs, atol=1e-4)
    np.testing.assert_allclose(head.familiarity(feats), familiar, atol=2e-3)

    # the features of the images the head holds, for "it looks like these"
    index = NeighbourIndex.from_bytes(files["neighbours"].read_bytes())
    assert len(index) == held and set(index.shas) == {i.key for i in ts.split("train") + ts.split("val")}

    # the first class change finds every image's features in the node's cache under the file's extractor, the
    # held ones exactly as the head holds them, the test ones as the file computes them
    model_bytes = files["model"].read_bytes()
    extractor = extractor_of(model_bytes)
    cache = node_feature_cache(tmp_path / "cache", 1 << 30)
    every = [i.key for split in ("train", "val", "test") for i in ts.split(split)]
    found = cache.get_many([extractor.feature_key(k) for k in every])
    assert len(found) == len(set(every))
    test_keys = [i.key for i in ts.split("test")]
    computed = compute_features([ImageItem(k, (lambda k=k: source.open(k))) for k in test_keys], extractor)
    np.testing.assert_allclose(np.stack([found[extractor.feature_key(k)] for k in test_keys]), computed, atol=1e-5)
    # and the version keeps those test features, the same numbers, so that growing need not look them up
    held_out = HeldOutFeatures.from_bytes(files["held_out"].read_bytes())
    assert len(held_out) == len(test_keys)
    for _, block in held_out.blocks.items():
        np.testing.assert_array_equal(block.features, [found[extractor.feature_key(s.decode())] for s in block.shas])


def test_target_met_stops_early_and_is_reproducible(small_flowers, shared_weights, tmp_path) -> None:
    ts, source = small_flowers
    runs = []
    for _ in range(2):  # the second run reuses the on-disk pixel/feature cache
        config = _config(tmp_path, shared_weights, target_accuracy=0.5, time_budget_s=120, preference="fast")
        runs.append(run_search(ts, source, config, Recorder()))
    first, second = runs
    assert first.stop_reason == "target_met" and len(first.leaderboard) == 1
    assert first.chosen is not None and second.chosen is not None
    assert second.chosen.name == first.chosen.name
    assert second.chosen.val_accuracy == first.chosen.val_accuracy
    assert second.chosen.test_metrics["accuracy"] == first.chosen.test_metrics["accuracy"]


def test_budget_is_honoured(small_flowers, shared_weights, tmp_path) -> None:
    """On a clock that moves by stated costs (a fine-tuning step 6 s at 128 px), the search plans its work into
    the budget: training stops within a step of its deadline and what follows it was kept back."""
    ts, source = small_flowers
    budget = 60.0
    rec = Recorder()
    clock = VirtualClock()
    result = run_search(ts, source, _config(tmp_path, shared_weights, time_budget_s=budget, preference="accurate"),
                        rec, clock=clock, costs=FixedCosts(step_s=6.0))
    assert result.elapsed_s == clock.now() <= budget, f"{result.elapsed_s:.1f}s for a {budget:.0f}s budget"
    assert any(row["config"]["kind"] == "finetune" for row in result.leaderboard), result.leaderboard
    assert result.chosen is not None and result.stop_reason in ("budget", "exhausted", "plateau")
    fractions = [f for f, _, _ in rec.updates]
    assert fractions == sorted(fractions) or max(fractions) == 1.0


def test_a_budget_too_small_still_yields_a_first_model(small_flowers, shared_weights, tmp_path) -> None:
    ts, source = small_flowers
    rec = Recorder()
    result = run_search(ts, source, _config(tmp_path, shared_weights, time_budget_s=0.5), rec,
                        clock=VirtualClock(), costs=FixedCosts())
    assert len(rec.ready) == 1 and result.chosen is not None  # the anytime model always completes
    assert result.stop_reason == "budget"


def test_small_grey_images_route_to_small_cnn(mnist, tmp_path) -> None:
    ts, source = _digits_set(mnist)
    memory = ModelMemory(InMemoryStore())
    config = SearchConfig(time_budget_s=30, cache_dir=tmp_path / "cache", output_dir=tmp_path / "out")
    result = run_search(ts, source, config, Recorder(), memory=memory, clock=VirtualClock(), costs=CNN_COSTS)
    names = [row["name"] for row in result.leaderboard]
    assert names[0].startswith("pixels_l@28/frozen"), names  # no pretrained weights needed
    assert any(n.startswith("smallcnn_l@28/scratch") for n in names), names
    assert result.chosen is not None and result.chosen.card["input"]["color"] == "L"
    assert result.elapsed_s <= 30
    record = memory.store.load()[0]
    assert record.traits.grey_fraction == 1.0 and record.traits.median_side == 28


def _shrunk(ts: TrainingSet, source: MappingSource, side: int) -> tuple[TrainingSet, MappingSource]:
    """The same photos at ``side`` x ``side`` px: a small colour set, like CIFAR's."""
    import io

    from PIL import Image

    blobs: dict[str, bytes] = {}
    images = []
    for img in ts.images:
        buf = io.BytesIO()
        Image.open(io.BytesIO(source.open(img.key))).convert("RGB").resize((side, side)).save(buf, "PNG")
        key = sha256_bytes(buf.getvalue())
        blobs[key] = buf.getvalue()
        images.append(TrainingImage(key, img.label, img.split, len(buf.getvalue())))
    return TrainingSet(tuple(images)), MappingSource(blobs)


@pytest.mark.parametrize("transfers", [True, False])
def test_small_colour_photos_fine_tune_a_pretrained_network_first(
    small_flowers, shared_weights, tmp_path, monkeypatch, transfers: bool
) -> None:
    """On small colour images the pretrained network is fine-tuned before a CNN is trained from scratch (each
    fills the budget); where its frozen features score no better than raw pixels, the CNN goes first."""
    trained: list[str] = []
    monkeypatch.setattr(search_module, "run_trained",
                        lambda ctx, config, reserve: trained.append(config.kind))  # None: "did not fit"
    if not transfers:
        real_fit_head = runners.fit_head

        def pretrained_no_better(ctx, train_f, *args, **kw):
            head, acc, n = real_fit_head(ctx, train_f, *args, **kw)
            return head, (0.0 if train_f.shape[1] == 1280 else acc), n  # MobileNetV2 features: no better

        monkeypatch.setattr(runners, "fit_head", pretrained_no_better)
    ts, source = _shrunk(*small_flowers, 32)
    rec = Recorder()
    rec.cancelled = lambda: len(trained) == 2  # type: ignore[method-assign]  # the order is known: stop there
    result = run_search(ts, source, _config(tmp_path, shared_weights, time_budget_s=60.0), rec,
                        clock=VirtualClock(), costs=FixedCosts())
    names = [row["name"] for row in result.leaderboard]
    assert names[0].startswith("pixels_rgb@32/frozen") and names[1] == "mobilenet_v2@128/frozen", names
    assert trained == (["finetune", "scratch"] if transfers else ["scratch", "finetune"])


def test_flip_view_of_a_trained_candidate(small_flowers, tmp_path: Path, shared_weights: Path) -> None:
    """The mirrored-view variant reuses the trained networks, averages plain and mirrored features in the
    graph, is skipped for digits, for ``fast`` and when the time left cannot pay for it."""
    from pigeonhole.learn.backbones import build_extractor
    from pigeonhole.learn.candidates import TrainParams, member_key

    ts, source = small_flowers
    clock = VirtualClock()
    ctx = Search(ts, source, _config(tmp_path, shared_weights, time_budget_s=120.0), NullReporter(), clock=clock,
                 costs=FixedCosts()).ctx
    base = runners.run_frozen(ctx, CandidateConfig("frozen", "mobilenet_v2", 96))
    spec = base.config.spec
    base.members = [(spec, build_extractor(spec, ctx.catalog), member_key(spec, ctx.catalog))]
    base.train_info = {"extract_seconds": 1.0}

    flipped = runners.run_flip_view(ctx, base)
    assert flipped is not None and flipped.config.flip_tta and flipped.mflops == 2 * base.mflops
    assert 0.0 <= flipped.val_accuracy <= 1.0 and flipped.train_info["flip_view_of"] == base.config.name
    with torch.no_grad():
        features = flipped.extractor.module(torch.zeros((1, 3, 96, 96), dtype=torch.uint8))
    assert features.shape[1] == base.extractor.feature_dim

    digits = replace(base, config=replace(base.config, train=TrainParams(augment="digits")))
    assert runners.run_flip_view(ctx, digits) is None
    unmirrored = replace(base, config=replace(base.config, train=TrainParams(flip=False)))
    assert runners.run_flip_view(ctx, unmirrored) is None, "trained where mirroring changes the class"
    ctx.config = replace(ctx.config, preference="fast")
    assert runners.run_flip_view(ctx, base) is None
    ctx.config = replace(ctx.config, preference="balanced")
    clock.spent(ctx.budget.remaining() - 1.0)
    assert runners.run_flip_view(ctx, base) is None, "not enough time left"


def test_where_mirroring_changes_the_class_nothing_is_mirrored(mnist, shared_weights, tmp_path, monkeypatch) -> None:
    """Digits at 64 px take the photo route, whose recipes mirror images; the search measures that a mirrored
    digit is another glyph, tries no mirrored views and fine-tunes without mirroring (MNIST at 64 px, 100 a
    class, 150 s: 94.4 % with mirroring, 96.2 % without)."""
    import io

    from PIL import Image

    images, labels = mnist
    blobs: dict[str, bytes] = {}
    items = []
    for i, (pixels, label) in enumerate(zip(images[:300], labels[:300], strict=True)):
        buf = io.BytesIO()
        Image.fromarray(pixels).resize((64, 64), Image.Resampling.BILINEAR).save(buf, "PNG")
        key = sha256_bytes(buf.getvalue())
        blobs[key] = buf.getvalue()
        items.append(TrainingImage(key, str(label), "test" if i >= 250 else "train", len(buf.getvalue())))
    ts, source = TrainingSet(tuple(items)), MappingSource(blobs)

    plain = CandidateConfig("frozen", "mobilenet_v2", 96)
    ladder = [plain, replace(plain, flip_tta=True)]
    with monkeypatch.context() as patched:
        patched.setattr(Planner, "ladder", lambda self, small, grey, side: list(ladder))
        result = run_search(ts, source, _config(tmp_path, shared_weights, time_budget_s=30.0), Recorder(),
                            clock=VirtualClock(), costs=FixedCosts())
    assert result.mirror is not None and result.mirror["changes_class"], result.mirror
    assert result.mirror["images"] == 250 and result.mirror["z"] >= 3
    assert [row["name"] for row in result.leaderboard] == ["mobilenet_v2@96/frozen"]

    # Two rounds are asked for, at stated costs: the plan does not depend on how busy the machine is.
    search = Search(ts, source, _config(tmp_path, shared_weights, time_budget_s=120.0), NullReporter(),
                    clock=VirtualClock(), costs=FixedCosts(step_s=0.3))
    ctx = search.ctx
    ctx.median_side = 64.0  # small images: fine-tuned at 128 px or less
    recipe = finetune_config("mobilenet_v2")
    assert recipe.train.flip
    tuned = runners.run_trained(ctx, replace(recipe, train=replace(recipe.train, max_epochs=2)), 0.0)
    assert tuned is not None and tuned.train_info["epochs_done"] == 2
    assert ctx.mirror is not None and ctx.mirror.changes_class
    assert tuned.config.train.flip is False
    assert runners.run_flip_view(ctx, tuned) is None


def test_a_perfect_probe_does_not_end_the_search(small_flowers, shared_weights, tmp_path, monkeypatch) -> None:
    """A probe (part of the training images) that scores 100 % on validation is followed by the same
    extractor on all the images, which is chosen; a perfect full-data candidate then ends the search."""
    real_fit_head = runners.fit_head
    monkeypatch.setattr(planner_module, "PROBE_PER_CLASS", 4)  # 12 training images per class: probe on 4
    monkeypatch.setattr(runners, "fit_head", lambda *args, **kw: (real_fit_head(*args, **kw)[0], 1.0, 200))
    ts, source = small_flowers
    result = run_search(ts, source, _config(tmp_path, shared_weights, time_budget_s=120.0), Recorder(),
                        clock=VirtualClock(), costs=FixedCosts())
    names = [entry["name"] for entry in result.leaderboard]
    assert names[0].endswith("/probe4") and len(names) == 2 and "probe" not in names[1]
    assert result.stop_reason == "plateau" and result.chosen is not None and result.chosen.name == names[1]


def test_fine_tuning_starts_from_a_linear_probe(small_flowers, shared_weights, tmp_path, monkeypatch) -> None:
    """The classifier layer a fine-tune starts from is a ridge head on the frozen features of the size it trains
    at, in the network's class order and at a logit scale (a probability, not a 0/1 regression score), and
    ``start_from_probe=False`` starts from random values."""
    from pigeonhole.learn.backbones import build_extractor
    from pigeonhole.learn.candidates import TrainParams, build_stack, member_key

    ts, source = small_flowers
    ctx = Search(ts, source, _config(tmp_path, shared_weights, time_budget_s=300.0), NullReporter(),
                 clock=VirtualClock(), costs=FixedCosts()).ctx
    config = CandidateConfig("finetune", "mobilenet_v2", 96, with_frozen=True,
                             train=TrainParams(lr=5e-4, batch_size=16, augment="photo", bf16=True))
    weights, bias = runners.probe_classifier(ctx, config)
    assert weights.shape == (len(ctx.classes), 1280) and bias.shape == (len(ctx.classes),)
    frozen = CandidateConfig("frozen", "mobilenet_v2", 96)
    spec = frozen.spec
    built = build_stack(frozen, [(spec, build_extractor(spec, ctx.catalog), member_key(spec, ctx.catalog))])
    logits = runners.train_val_features(ctx, built, frozen)["train"] @ weights.T + bias
    assert (logits.argmax(1) == ctx.y("train")).mean() >= 0.9
    probs = np.exp(logits - logits.max(1, keepdims=True))
    assert (probs.max(1) / probs.sum(1)).mean() > 0.6

    calls: list[dict] = []

    def recording(*args, **kwargs):
        calls.append(kwargs)
        raise InterruptedError  # the start is what this test is about, not the training

    monkeypatch.setattr(runners, "train_extractor", recording)
    ctx.median_side = 64.0  # small images: only 96 px is tried
    with pytest.raises(InterruptedError):
        runners.run_trained(ctx, config, 0.0)
    size = calls[0]["input_size"]
    expected = runners.probe_classifier(ctx, replace(config, size=size))
    np.testing.assert_array_equal(calls[0]["classifier_start"][0], expected[0])
    np.testing.assert_array_equal(calls[0]["classifier_start"][1], expected[1])
    with pytest.raises(InterruptedError):
        runners.run_trained(ctx, replace(config, train=replace(config.train, start_from_probe=False)), 0.0)
    assert calls[1]["classifier_start"] is None


def _digits_set(mnist, n: int = 400, test_from: int = 320) -> tuple[TrainingSet, MappingSource]:
    images, labels = mnist
    return digit_set(images[:n], labels[:n], lambda i: "test" if i >= test_from else "train")


def test_remembered_rounds_plan_the_training_and_a_shortfall_trains_in_full(mnist, tmp_path) -> None:
    """With a target, a remembered trained winner is planned for the rounds that reached the target before
    (a plan filling the budget would finish no sooner); when that falls short here, the ladder trains it
    again with the whole budget."""
    from pigeonhole.learn.memory import CandidateRecord, SearchRecord

    ts, source = _digits_set(mnist)
    ladder = Search(ts, source, SearchConfig(), NullReporter()).planner.ladder(True, True, 28)
    cnn = next(c for c in ladder if c.kind == "scratch")
    memory = ModelMemory(InMemoryStore())
    seen = run_search(ts, source, SearchConfig(time_budget_s=1, cache_dir=tmp_path / "c0"), Recorder(),
                      memory=memory, clock=VirtualClock(), costs=CNN_COSTS)  # only the probe: the data's traits
    past = SearchRecord(
        traits=memory.store.load()[0].traits,
        candidates=[CandidateRecord(config=replace(cnn, train=replace(cnn.train, epochs=20)).to_dict(),
                                    name="cnn", val_accuracy=0.999, mflops=5, latency_ms=None, seconds=60,
                                    chosen=True, round_val_accuracy=[0.5, 0.99, 0.999], rounds_planned=20)],
        target_accuracy=0.99, preference="balanced", budget_s=600, seconds=200,
    )
    memory = ModelMemory(InMemoryStore())
    memory.record(past)
    config = SearchConfig(time_budget_s=40, target_accuracy=0.995, cache_dir=tmp_path / "c1", output_dir=tmp_path / "o")
    result = run_search(ts, source, config, Recorder(), memory=memory, clock=VirtualClock(), costs=CNN_COSTS)
    trained = [row for row in result.leaderboard if row["config"]["kind"] == "scratch"]
    assert seen.leaderboard and len(trained) >= 2, [row["name"] for row in result.leaderboard]
    remembered, full = trained[0], trained[1]
    assert remembered["config"]["train"]["max_epochs"] == 3 and remembered["config"]["train"]["epochs"] == 3
    assert full["config"]["train"]["max_epochs"] == 0 and full["config"]["train"]["epochs"] > 3
    assert isinstance(CandidateConfig.from_dict(full["config"]), CandidateConfig)
    # what this search saw is remembered round by round for the next one
    record = memory.store.load()[-1]
    rounds = [c for c in record.candidates if c.config["kind"] == "scratch"]
    assert rounds[0].rounds_planned == 3 and len(rounds[0].round_val_accuracy) == 3
    assert rounds[1].rounds_planned == full["config"]["train"]["epochs"]
