"""Which extractors the search builds on: the packaged one on a fresh install, the operator's own ONNX file, and a
plain statement wherever no pretrained extractor exists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.unit.learn.test_search import Recorder, flower_set

from pigeonhole.learn.backbones import build_extractor, get_spec
from pigeonhole.learn.budget import FixedCosts
from pigeonhole.learn.clock import VirtualClock
from pigeonhole.learn.export import INPUT_NAME, open_session
from pigeonhole.learn.grow import extractor_of, rebuild_model
from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.planner import NO_PRETRAINED
from pigeonhole.learn.search import SearchConfig, run_search
from pigeonhole.learn.weights import WeightsCatalog
from pigeonhole.learn.weights_fetch import import_onnx


@pytest.fixture(scope="module")
def small_flowers(flowers):
    return flower_set(flowers)


def _config(tmp_path: Path, weights: Path, **kw) -> SearchConfig:
    return SearchConfig(weights_dir=weights, cache_dir=tmp_path / "cache", output_dir=tmp_path / "out",
                        time_budget_s=30.0, **kw)


def _card(result) -> dict:
    return json.loads(Path(result.reported[0].artifacts["card"]).read_text())


def test_a_fresh_install_builds_photo_models_on_the_packaged_extractor(small_flowers, tmp_path) -> None:
    ts, source = small_flowers
    result = run_search(ts, source, _config(tmp_path, tmp_path / "empty-weights-dir"), Recorder(cancel_after=1))
    first = result.reported[0]
    assert first.config["extractor"] == "efficientnet_lite0" and first.config["kind"] == "frozen"
    card = _card(result)
    assert card["extractor"]["pretrained"] is True
    assert card["extractor"]["weights"]["name"] == "efficientnet_lite0-imagenet"
    assert card["extractor"]["weights"]["origin"] == "package" and card["extractor"]["weights"]["license"]
    assert result.notes == [] and card["notes"] == []
    assert first.test_metrics["accuracy"] > 0.4  # 5 flower classes from 12 images each: chance is 0.2


def test_without_a_pretrained_extractor_the_job_and_the_card_say_so(small_flowers, tmp_path) -> None:
    ts, source = small_flowers
    rec = Recorder(cancel_after=1)
    result = run_search(ts, source, _config(tmp_path, tmp_path / "none", builtin_weights=False), rec,
                        clock=VirtualClock(), costs=FixedCosts(step_s=1.0))
    assert result.notes == [NO_PRETRAINED]
    card = _card(result)
    assert card["notes"] == [NO_PRETRAINED] and card["extractor"]["pretrained"] is False
    assert result.reported[0].config["kind"] == "scratch"
    assert any("No pretrained image extractor is installed" in stage for _, stage, _ in rec.updates)
    assert "pigeonhole weights" in NO_PRETRAINED  # it says what to do


def test_an_operator_onnx_extractor_is_searched_exported_and_grown(small_flowers, tmp_path) -> None:
    """The operator's file (here the packaged Lite0 exported by the test, taking normalised floats) is the only
    extractor: the search uses it frozen, the served file wraps it, and growing cuts it back out exactly."""
    lite = get_spec("efficientnet_lite0", 160)
    body = build_extractor(lite, WeightsCatalog(None))
    path = tmp_path / "mine.onnx"
    torch.onnx.export(body, (torch.zeros(1, 3, 160, 160),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    weights = tmp_path / "weights"
    import_onnx(WeightsCatalog(weights, builtin=False), path, name="my-net", size=160, mean=lite.mean, std=lite.std)
    ts, source = small_flowers
    result = run_search(ts, source, _config(tmp_path, weights, builtin_weights=False), Recorder(cancel_after=1))
    first = result.reported[0]
    assert first.config["extractor"] == "onnx:my-net" and result.notes == []
    card = _card(result)
    assert card["extractor"]["weights"]["origin"] == "operator" and card["input"]["height"] == 160
    model = Path(first.artifacts["model"]).read_bytes()
    head = RidgeHead.from_bytes(Path(first.artifacts["head"]).read_bytes())
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 160, 160), dtype=np.uint8)
    probs, _, feats = open_session(model).run(None, {INPUT_NAME: pixels})
    # the file computes the operator's graph on (pixel / 255 - mean) / std, then the head
    normalised = (pixels / 255.0 - np.array(lite.mean)[:, None, None]) / np.array(lite.std)[:, None, None]
    with torch.no_grad():
        expected = body(torch.from_numpy(normalised.astype(np.float32))).numpy()
    np.testing.assert_allclose(feats, expected, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(head.predict_proba(feats), probs, atol=1e-5)
    # growing: the extractor is cut out of the file and joined to a new head
    np.testing.assert_allclose(extractor_of(model)(pixels), feats, atol=1e-5)
    rebuilt = rebuild_model(model, head)
    np.testing.assert_allclose(open_session(rebuilt).run(["probabilities"], {INPUT_NAME: pixels})[0], probs,
                               atol=1e-6)


def test_two_extractors_stack_into_one_head_from_their_cached_features(small_flowers, shared_weights,
                                                                       tmp_path) -> None:
    """MobileNetV2 (the operator's) and the packaged Lite0 side by side: the stack's features are the members'
    (cached when each ran alone, so it costs a head solve), it is exported as one graph, and grows exactly."""
    from pigeonhole.learn.candidates import CandidateConfig
    from pigeonhole.learn.finish import finish
    from pigeonhole.learn.runners import run_frozen
    from pigeonhole.learn.search import NullReporter, Search

    ts, source = small_flowers
    search = Search(ts, source, _config(tmp_path, shared_weights), NullReporter())
    ctx = search.ctx
    ladder = search.planner.ladder(small=False, grey=False, median_side=128.0)
    stacked = [c for c in ladder if c.partner]
    assert [(c.extractor, c.partner, c.size) for c in stacked] == [("mobilenet_v2", "efficientnet_lite0", 224)]
    mobilenet, lite = (run_frozen(ctx, CandidateConfig("frozen", e, 160)) for e in ("mobilenet_v2",
                                                                                      "efficientnet_lite0"))
    pair = CandidateConfig("frozen", "mobilenet_v2", 160, partner="efficientnet_lite0")
    assert ctx.budget.frozen_need_s(pair, ctx.frozen_done) == pytest.approx(ctx.budget.finish_s(pair))  # cached
    scored = run_frozen(ctx, pair)
    np.testing.assert_array_equal(scored.val_features, np.hstack([mobilenet.val_features, lite.val_features]))
    assert pair.mflops() == pytest.approx(mobilenet.mflops + lite.mflops) and "+efficientnet_lite0@160" in pair.name
    ctx.current = mobilenet
    result = finish(ctx, scored, [], 0)
    assert result.card["extractor"]["partner_weights"]["name"] == "efficientnet_lite0-imagenet"
    model = Path(result.artifacts["model"]).read_bytes()
    head = RidgeHead.from_bytes(Path(result.artifacts["head"]).read_bytes())
    pixels = np.random.default_rng(1).integers(0, 256, (2, 3, 160, 160), dtype=np.uint8)
    probs, _, feats = open_session(model).run(None, {INPUT_NAME: pixels})
    assert feats.shape == (2, 2560)
    np.testing.assert_allclose(open_session(rebuild_model(model, head)).run(["probabilities"],
                                                                            {INPUT_NAME: pixels})[0], probs,
                               atol=1e-6)
