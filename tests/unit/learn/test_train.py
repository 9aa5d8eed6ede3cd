"""Extractor training: augmentation, epoch planning, checkpoints that resume."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from pigeonhole.learn.backbones import build_architecture, get_spec
from pigeonhole.learn.candidates import TrainParams
from pigeonhole.learn.train import augment, center_view, quantize_epochs, train_extractor


def _scores(*accuracies: float, images: int = 16):
    """A stand-in for the validation pass: round by round, the first ``accuracy * images`` images right."""
    rounds = iter(accuracies)
    return lambda *args: np.arange(images) < round(next(rounds) * images)


def _train_digits(mnist, params: TrainParams, n_train: int, n_val: int, deadline: float = float("inf"), **kw):
    """A tiny from-scratch run on the first MNIST images (validation right after the training images)."""
    images, labels = mnist
    spec = get_spec("smallcnn_l")
    return train_extractor(
        spec, build_architecture(spec), spec.feature_dim, 10, params, images[:n_train, None], labels[:n_train],
        images[n_train:n_train + n_val, None], labels[n_train:n_train + n_val], input_size=28, seed=0,
        deadline=deadline, pretrained=False, **kw,
    )


def _tiny_photo_net(n: int):
    """A randomly initialised MobileNetV2 at 32 px and ``n`` noise 'photos' of 37 px in 3 classes."""
    spec = get_spec("mobilenet_v2", 32)
    torch.manual_seed(0)
    body = build_architecture(spec).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (n, 3, 37, 37), dtype=np.uint8)
    return spec, body, pixels, np.arange(n) % 3


def test_augment_shapes_and_determinism() -> None:
    pixels = torch.randint(0, 256, (4, 3, 37, 37), dtype=torch.uint8)
    a = augment(pixels, 32, "photo", torch.Generator().manual_seed(0))
    b = augment(pixels, 32, "photo", torch.Generator().manual_seed(0))
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 255
    digits = augment(pixels[:, :1, :32, :32], 32, "digits", torch.Generator().manual_seed(0))
    assert digits.shape == (4, 1, 32, 32)
    assert center_view(pixels, 32).shape == (4, 3, 32, 32)


def test_photo_augmentation_mirrors_only_when_asked() -> None:
    """Without ``flip`` the views are the same crops, never mirrored: where mirroring changes the class
    (learn.mirror) training must not show mirrored images under the original label."""
    ramp = torch.arange(40, dtype=torch.float32).repeat(64, 3, 40, 1) * 6  # brighter to the right
    flipped = augment(ramp, 32, "photo", torch.Generator().manual_seed(0))
    upright = augment(ramp, 32, "photo", torch.Generator().manual_seed(0), flip=False)
    left_to_right = lambda x: (x[..., -1] - x[..., 0]).mean(dim=(1, 2))  # noqa: E731
    assert bool((left_to_right(upright) > 0).all())
    mirrored = left_to_right(flipped) < 0
    assert 10 < int(mirrored.sum()) < 54
    assert torch.allclose(upright[mirrored], torch.flip(flipped[mirrored], dims=[3]), atol=1e-3)
    assert torch.equal(upright[~mirrored], flipped[~mirrored])


def test_quantized_epochs() -> None:
    assert quantize_epochs(0.5) == 0 and quantize_epochs(7.9) == 6 and quantize_epochs(9) == 8
    assert quantize_epochs(1000, cap=30) == 30
    assert quantize_epochs(8.4, up=True) == 10 and quantize_epochs(10, up=True) == 10
    assert quantize_epochs(0.5, up=True) == 0 and quantize_epochs(70, cap=60, up=True) == 60


def test_scratch_training_learns_and_resumes(mnist, tmp_path: Path) -> None:
    images, labels = mnist
    spec = get_spec("smallcnn_l")
    x_train, y_train = images[:256, None], labels[:256]
    x_val, y_val = images[256:384, None], labels[256:384]
    params = TrainParams(epochs=3, lr=3e-3, batch_size=16, augment="digits", patience=5)
    ckpt = tmp_path / "ckpt.pt"

    def run(p: TrainParams):
        torch.manual_seed(0)
        return train_extractor(
            spec, build_architecture(spec), spec.feature_dim, 10, p, x_train, y_train, x_val, y_val,
            input_size=28, seed=0, deadline=float("inf"), pretrained=False, checkpoint=ckpt,
        )

    first = run(params)
    assert first.epochs_done == 3 and ckpt.is_file()
    assert first.best_val_accuracy > 0.2  # far above chance after three short epochs
    # a retried job finds the checkpoint: nothing is redone, and the planned schedule is kept
    again = run(TrainParams(epochs=3, lr=3e-3, batch_size=16, augment="digits", patience=5))
    assert again.epochs_done == 3 and [h["epoch"] for h in again.history] == [1, 2, 3]
    assert again.best_val_accuracy == first.best_val_accuracy
    with torch.no_grad():
        f1 = first.body(torch.from_numpy(x_val[:4]).float())
        f2 = again.body(torch.from_numpy(x_val[:4]).float())
    np.testing.assert_allclose(f1.numpy(), f2.numpy(), rtol=1e-5, atol=1e-5)


def test_a_plateau_stops_training_only_once_the_rate_has_decayed(mnist, monkeypatch) -> None:
    """Validation accuracy that only declines: no stop in the first two thirds of the schedule."""
    import pigeonhole.learn.train as train

    monkeypatch.setattr(train, "_hits", _scores(0.9, 0.8, 0.7, 0.6, 0.5, 0.4))
    params = TrainParams(epochs=6, lr=3e-3, batch_size=16, augment="digits", patience=1)
    torch.manual_seed(0)
    outcome = _train_digits(mnist, params, 32, 16)
    # 2 steps a round, 2 of warm-up: after round 4 the decay is 60 % along, after round 5 80 %
    assert outcome.stopped == "plateau" and outcome.epochs_done == 5 and outcome.best_epoch == 1


@pytest.mark.parametrize(("deadline", "rounds", "fraction"), [(6.5, 2, 0.75), (4.5, 1, None)])
def test_a_round_cut_past_its_middle_by_the_deadline_is_still_measured(mnist, monkeypatch, deadline: float,
                                                                       rounds: int, fraction: float | None) -> None:
    """Plans round up and the deadline cuts the last round: trained at the lowest rates, it is measured (and
    kept when best) if it got past half its images; a round barely begun is not."""
    import pigeonhole.learn.train as train
    from pigeonhole.learn.clock import VirtualClock

    monkeypatch.setattr(train, "_hits", _scores(0.5, 0.9))
    images, labels = mnist
    spec = get_spec("smallcnn_l")
    params = TrainParams(epochs=10, lr=3e-3, batch_size=16, augment="digits", patience=5)
    outcome = train_extractor(
        spec, build_architecture(spec), spec.feature_dim, 10, params, images[:64, None], labels[:64],
        images[64:80, None], labels[64:80], input_size=28, seed=0, deadline=deadline, pretrained=False,
        clock=VirtualClock(), charged_step_s=1.0,  # one second per training step
    )
    assert outcome.stopped == "deadline" and outcome.epochs_done == rounds  # 4 steps a round
    assert outcome.history[-1].get("fraction") == fraction
    assert outcome.best_epoch == rounds


def test_a_frozen_stem_stays_as_it_was_and_the_rest_learns() -> None:
    """``freeze_stem``: the first layers keep their pretrained weights bit for bit, later ones train, and the
    network comes back as a plain module (standard layout, all parameters trainable) for export."""
    from pigeonhole.learn.backbones import stem_modules

    spec, body, pixels, labels = _tiny_photo_net(24)
    stem = {k: v.clone() for m in stem_modules(spec, body) for k, v in m.state_dict().items()}
    head_before = body.features[-1][0].weight.detach().clone()
    params = TrainParams(epochs=2, lr=1e-2, batch_size=8, augment="photo", freeze_stem=True, bf16=True)
    outcome = train_extractor(
        spec, body, spec.feature_dim, 3, params, pixels, labels, pixels[:8, :, :32, :32], labels[:8],
        input_size=32, seed=0, deadline=float("inf"), pretrained=True,
    )
    after = {k: v for m in stem_modules(spec, outcome.body) for k, v in m.state_dict().items()}
    assert all(torch.equal(stem[k], after[k]) for k in stem)
    assert not torch.equal(head_before, outcome.body.features[-1][0].weight)
    assert all(p.requires_grad for p in outcome.body.parameters())
    assert all(p.is_contiguous() for p in outcome.body.parameters())


def test_a_frozen_stem_runs_in_onnx_runtime_and_trains_the_same_network(monkeypatch) -> None:
    """The frozen stem is run by ONNX Runtime at every training and validation step; the network that comes
    back computes what the same training with the stem in PyTorch gives (to float rounding)."""
    import pigeonhole.learn.train as train

    spec, body, pixels, labels = _tiny_photo_net(32)
    val = np.ascontiguousarray(pixels[:8, :, 2:34, 2:34])
    params = TrainParams(epochs=2, lr=1e-3, batch_size=8, augment="photo", freeze_stem=True, bf16=False)
    calls = []
    real_call = train._OnnxStem.__call__
    monkeypatch.setattr(train._OnnxStem, "__call__", lambda self, x: calls.append(len(x)) or real_call(self, x))

    def run():
        return train_extractor(
            spec, copy.deepcopy(body), spec.feature_dim, 3, params, pixels, labels, val, labels[:8], input_size=32,
            seed=0, deadline=float("inf"), pretrained=True,
        ).body

    onnx_body = run()
    assert calls.count(8) == 2 * 4 + 2  # every training batch of both rounds, and each round's validation
    monkeypatch.setattr(train, "split_after_stem", lambda spec, body: None)
    eager_body = run()
    assert len(calls) == 10  # no more
    x = torch.from_numpy(val).float()
    with torch.no_grad():
        torch.testing.assert_close(onnx_body(x), eager_body(x), rtol=1e-3, atol=1e-4)
        assert not torch.allclose(onnx_body(x), body(x), atol=1e-3)  # and it did train


def test_a_resumed_fine_tune_runs_the_stem_its_checkpoint_holds(tmp_path: Path, monkeypatch) -> None:
    """A retried job resumes from its checkpoint; the stem ONNX Runtime runs from then on is the checkpoint's
    (one written before a deeper freeze holds trained weights in layers frozen now), not the pretrained one."""
    from torch import nn

    import pigeonhole.learn.train as train
    from pigeonhole.learn.backbones import PixelExtractor, stem_modules

    spec, body, pixels, labels = _tiny_photo_net(16)
    val = np.ascontiguousarray(pixels[:8, :, 2:34, 2:34])
    params = TrainParams(epochs=2, lr=1e-3, batch_size=8, augment="photo", bf16=False)
    checkpoint, rounds, made = tmp_path / "ckpt.pt", [], []
    real_init = train._OnnxStem.__init__
    monkeypatch.setattr(train._OnnxStem, "__init__", lambda self, *args: made.append(self) or real_init(self, *args))

    def run(stop_after_a_round: bool):
        return train_extractor(
            spec, copy.deepcopy(body), spec.feature_dim, 3, params, pixels, labels, val, labels[:8], input_size=32,
            seed=0, deadline=float("inf"), pretrained=True, checkpoint=checkpoint,
            on_epoch=lambda epoch, record: rounds.append(epoch),
            should_stop=lambda: stop_after_a_round and bool(rounds),
        )

    assert run(True).stopped == "cancelled" and rounds == [1]
    state = torch.load(checkpoint, weights_only=False)
    state["net"]["extractor.body.features.0.0.weight"] *= 0.5
    torch.save(state, checkpoint)
    resumed = run(False)
    tampered = state["net"]["extractor.body.features.0.0.weight"]
    assert rounds == [1, 2] and torch.equal(resumed.body.features[0][0].weight, tampered)
    x = torch.from_numpy(val).float()
    with torch.no_grad():
        eager = nn.Sequential(PixelExtractor(spec, resumed.body).normalize, *stem_modules(spec, resumed.body))(x)
    np.testing.assert_allclose(made[-1].session.run(None, {"pixels": x.numpy()})[0], eager.numpy(), atol=1e-4)


def test_the_first_round_replans_a_cautious_plan_to_fill_the_time(mnist, monkeypatch) -> None:
    """A plan of 2 rounds where the first round shows 5.5 fit: the plan grows to the next plan step (6), the
    rate decays by the deadline, and the last round the deadline cuts past its middle is still measured."""
    import pigeonhole.learn.train as train
    from pigeonhole.learn.clock import VirtualClock

    monkeypatch.setattr(train, "_hits", _scores(*[0.5] * 10))
    params = TrainParams(epochs=2, lr=3e-3, batch_size=16, augment="digits", patience=50)
    # one second per training step, four steps a round
    outcome = _train_digits(mnist, params, 64, 16, deadline=22.0, clock=VirtualClock(), charged_step_s=1.0)
    assert outcome.epochs_planned == 6 and outcome.epochs_done == 6 and outcome.stopped == "deadline"
    assert [h["planned"] for h in outcome.history] == [6] * 6 and outcome.history[-1]["fraction"] == 0.75
    # without a deadline the plan is the plan
    plain = _train_digits(mnist, params, 64, 16)
    assert plain.epochs_planned == 2 and plain.epochs_done == 2


def test_a_fine_tune_remembered_from_before_the_frozen_stem_trains_with_it() -> None:
    """Model-memory records written before ``freeze_stem`` existed lack the key: they get today's recipe."""
    from pigeonhole.learn.candidates import CandidateConfig

    old = {"kind": "finetune", "extractor": "mobilenet_v2", "size": 160, "with_frozen": True,
           "train": {"epochs": 10, "lr": 5e-4, "batch_size": 32, "augment": "photo", "bf16": True}}
    assert CandidateConfig.from_dict(old).train.freeze_stem is True


def test_a_tie_on_validation_keeps_the_later_round(mnist, monkeypatch) -> None:
    """Rounds scoring 0.5, 0.7, 0.6, 0.7, then a clearly worse 0.1: the fourth round's weights are kept, not
    the second's."""
    import pigeonhole.learn.train as train

    monkeypatch.setattr(train, "_hits", _scores(0.5, 0.7, 0.6, 0.7, 0.1))
    params = TrainParams(epochs=5, lr=3e-3, batch_size=16, augment="digits", patience=5)
    outcome = _train_digits(mnist, params, 32, 16)
    assert outcome.best_epoch == 4 and outcome.best_val_accuracy == 11 / 16


def test_the_last_round_is_kept_unless_an_earlier_one_is_clearly_better(mnist, monkeypatch) -> None:
    """Validation 0.5, 0.75, 0.69 on 16 images: round 2 is right on one image more, which is chance, so the
    last round's weights come back (the same network as a run whose scores rise to the end); 0.9 after
    0.3 twice is not chance, so round 1's are kept."""
    import pigeonhole.learn.train as train

    params = TrainParams(epochs=3, lr=3e-3, batch_size=16, augment="digits", patience=5)

    def run(*scores: float):
        monkeypatch.setattr(train, "_hits", _scores(*scores))
        torch.manual_seed(0)
        return _train_digits(mnist, params, 32, 16)

    narrow = run(0.5, 0.75, 0.69)
    assert narrow.best_epoch == 3 and narrow.best_val_accuracy == 11 / 16
    rising = run(0.5, 0.6, 0.69)
    assert rising.best_epoch == 3
    for a, b in zip(narrow.body.state_dict().values(), rising.body.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    clear = run(0.9, 0.3, 0.3)
    assert clear.best_epoch == 1 and clear.best_val_accuracy == 14 / 16


def test_training_starts_from_the_given_classifier() -> None:
    """``classifier_start`` is the classifier layer's first state: at a vanishing learning rate the network scores
    what that layer scores on the (frozen-BN) features; from a random layer it does not."""
    from pigeonhole.learn.backbones import PixelExtractor

    spec, body, pixels, labels = _tiny_photo_net(48)
    val, val_labels = np.ascontiguousarray(pixels[:24, :, 2:34, 2:34]), labels[:24]
    with torch.no_grad():
        features = PixelExtractor(spec, body)(torch.from_numpy(val).float()).numpy().astype(np.float64)
    design = np.hstack([features, np.ones((len(val), 1))])
    solution = np.linalg.lstsq(design, 10 * np.eye(3)[val_labels], rcond=None)[0]  # fits these 24 exactly
    weights, bias = solution[:-1].T, solution[-1]
    assert ((features @ weights.T + bias).argmax(1) == val_labels).all()
    params = TrainParams(epochs=1, lr=1e-12, batch_size=8, augment="photo", bf16=False)

    def run(start):
        return train_extractor(
            spec, copy.deepcopy(body), spec.feature_dim, 3, params, pixels, labels, val, val_labels, input_size=32,
            seed=0, deadline=float("inf"), pretrained=True, classifier_start=start,
        )

    assert run((weights, bias)).best_val_accuracy == 1.0
    assert run(None).best_val_accuracy < 0.75


def test_bf16_autocast_only_where_the_cpu_computes_bf16(monkeypatch) -> None:
    """Emulated bf16 is many times slower than float32 (10 s vs 0.5 s a step on an AVX2-only CPU)."""
    import contextlib

    from pigeonhole.learn import train

    monkeypatch.setattr(train, "native_bf16", lambda: False)
    assert isinstance(train._autocast(True)(), contextlib.nullcontext)
    monkeypatch.setattr(train, "native_bf16", lambda: True)
    assert isinstance(train._autocast(True)(), torch.autocast)
    assert isinstance(train._autocast(False)(), contextlib.nullcontext)


def test_bf16_kept_only_where_a_step_is_measured_faster(monkeypatch) -> None:
    """Native bf16 can still be slower than float32 (MobileNetV2 on AVX-512 BF16 without AMX): both are timed."""
    from dataclasses import replace

    from pigeonhole.learn import train

    spec = get_spec("smallcnn_l", 28)
    body = build_architecture(spec)
    recipe = TrainParams(batch_size=16, bf16=True)
    timed: list[bool] = []

    def fake_step(spec, body, dim, classes, params, size, *, pretrained=True):  # noqa: ANN001, ANN202
        timed.append(params.bf16)
        return {True: bf16_s, False: 0.2}[params.bf16]

    monkeypatch.setattr(train, "measure_step_seconds", fake_step)
    monkeypatch.setattr(train, "native_bf16", lambda: True)
    bf16_s = 0.3
    assert train.choose_precision(spec, body, 128, 10, recipe, 28, pretrained=False) == (
        replace(recipe, bf16=False), 0.2)
    bf16_s = 0.1
    assert train.choose_precision(spec, body, 128, 10, recipe, 28, pretrained=False) == (recipe, 0.1)
    monkeypatch.setattr(train, "native_bf16", lambda: False)  # emulated: not even timed (10 s a step)
    timed.clear()
    assert train.choose_precision(spec, body, 128, 10, recipe, 28, pretrained=False)[0] == recipe
    assert timed == [True]  # one timing, which runs in float32 here (train._autocast)
    timed.clear()
    assert train.choose_precision(spec, body, 128, 10, replace(recipe, bf16=False), 28, pretrained=False)[1] == 0.2
    assert timed == [False]
