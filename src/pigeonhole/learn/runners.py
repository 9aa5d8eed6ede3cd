"""One runner per kind of candidate: a frozen extractor (alone or a stack of two) with a ridge head, a network
trained on the images (fine-tuned from pretrained weights, or a small CNN from scratch), and the mirrored view
of a trained one. Each takes a :class:`~pigeonhole.learn.context.SearchContext` and returns a
:class:`~pigeonhole.learn.search_types.Scored` (None: it did not fit in the time left)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pigeonhole.learn.backbones import build_architecture, build_extractor
from pigeonhole.learn.budget import members
from pigeonhole.learn.candidates import BuiltExtractor, CandidateConfig, build_stack, extract_features, member_key
from pigeonhole.learn.context import SearchContext, plain_name
from pigeonhole.learn.head import HeadConfig, RidgeHead
from pigeonhole.learn.preprocess import CROP_FRACTION
from pigeonhole.learn.search_types import Scored
from pigeonhole.learn.train import train_extractor

FINETUNE_SIZES = (224, 192, 160, 128, 112, 96)  # tried largest first for fine-tuning
FINETUNE_MIN_ROUNDS = 8  # rounds of fine-tuning a resolution must leave time for
# Below this many validation images, frozen candidates are scored by leaving each training and validation
# image out in turn (exact for a ridge head, one eigendecomposition): a few dozen images cannot tell alphas
# or candidates apart, a few hundred left-out scores can.
LEFT_OUT_BELOW_VAL = 300


# ---------------------------------------------------------------------------------- heads
def train_rows(ctx: SearchContext, per_class: int) -> np.ndarray:
    """Indices of training images to use: all, or the first ``per_class`` of each class in a seeded order."""
    y = ctx.y("train")
    if per_class <= 0:
        return np.arange(len(y))
    order = np.random.default_rng(ctx.config.seed).permutation(len(y))
    taken: dict[int, int] = {}
    rows = []
    for i in order:
        if taken.get(int(y[i]), 0) < per_class:
            taken[int(y[i])] = taken.get(int(y[i]), 0) + 1
            rows.append(i)
    return np.sort(np.array(rows, dtype=np.int64))


def fit_head(
    ctx: SearchContext, train_f: np.ndarray, val_f: np.ndarray, rff: int, rows: np.ndarray | None = None,
    *, left_out: bool = False, l2_normalize: bool = True,
) -> tuple[RidgeHead, float, int]:
    """The best head of plain and random-feature maps: (head, accuracy, images it was measured on).

    ``left_out``: the head holds train+val and is measured leaving each image out in turn (only for
    features that were not trained on these images); otherwise it holds train, measured on val."""
    best: tuple[float, int, RidgeHead] | None = None
    y = ctx.y("train") if rows is None else ctx.y("train")[rows]
    order = np.argsort(y, kind="stable")  # the head's class order = the training set's class order
    labels = [ctx.classes[i] for i in y[order]]
    for m in sorted({0, rff}):
        head = RidgeHead(train_f.shape[1], HeadConfig(l2_normalize=l2_normalize, random_features=m,
                                                      seed=ctx.config.seed))
        head.add(train_f[order], labels)
        if left_out:
            head.add(val_f, ctx.labels("val"))
            acc = head.fit_left_out(np.vstack([train_f[order], val_f]), labels + ctx.labels("val"))["val_accuracy"]
        else:
            acc = head.fit(val_f, ctx.labels("val"))["val_accuracy"]
        if best is None or acc > best[0] + 1e-12:
            best = (acc, m, head)
    assert best is not None
    return best[2], best[0], len(labels) + len(val_f) if left_out else len(val_f)


def train_val_features(ctx: SearchContext, built: BuiltExtractor, config: CandidateConfig) -> dict[str, np.ndarray]:
    """Features of every training and validation image through a trained stack (only a cancel stops it)."""
    return {s: extract_features(built, ctx.keys(s), ctx.pixel_fn(config), ctx.cache,
                                threads=ctx.config.threads, should_stop=ctx.cancelled)
            for s in ("train", "val")}


# ---------------------------------------------------------------------------------- frozen
def run_frozen(ctx: SearchContext, config: CandidateConfig) -> Scored:
    """A frozen extractor (or a stack of two, ``partner``) and a ridge head. A stack's features are its
    members' side by side, each extracted (and cached) as when the member ran alone, so a stack of two
    extractors already tried costs a head solve."""
    budget = ctx.budget
    t = budget.now()
    parts = members(config)
    bodies = []
    for part in parts:
        spec = part.spec
        body = build_extractor(spec, ctx.catalog) if spec.pretrained else build_architecture(spec)
        bodies.append((spec, body, member_key(spec, ctx.catalog)))
    built = build_stack(config, bodies)
    ctx.progress(f"Trying a quick model: {plain_name(config)}")
    rows = train_rows(ctx, config.max_train_per_class)
    all_train = ctx.keys("train")
    train_keys = [all_train[i] for i in rows]
    pieces: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for part, member in zip(parts, bodies, strict=True):
        single = built if len(parts) == 1 else build_stack(part, [member])
        timing: dict[str, float] = {}
        started = budget.now()
        for split, keys in (("train", train_keys), ("val", ctx.keys("val"))):
            pieces[split].append(extract_features(single, keys, ctx.pixel_fn(part), ctx.cache,
                                                  threads=ctx.config.threads, should_stop=ctx.should_stop,
                                                  timing=timing))
        budget.pass_done(part, timing, budget.now() - started)
        if not part.max_train_per_class and not part.flip_tta:
            ctx.frozen_done.add((part.extractor, part.size, part.crop))
    feats = {split: np.hstack(p) if len(p) > 1 else p[0] for split, p in pieces.items()}
    left_out = len(feats["val"]) < LEFT_OUT_BELOW_VAL  # frozen features: left-out scores are honest
    head, acc, measured = fit_head(ctx, feats["train"], feats["val"], config.random_features, rows, left_out=left_out)
    config = replace(config, random_features=head.config.random_features)
    return Scored(config, acc, config.mflops(), budget.now() - t, built, head, val_features=feats["val"],
                  train_features=feats["train"], train_keys=train_keys, evaluated_on=measured, val_in_head=left_out)


# ---------------------------------------------------------------------------------- trained
def training_pixels(ctx: SearchContext, config: CandidateConfig) -> np.ndarray:
    """Training images for augmentation: ``square`` views at size/0.875 for photos (a 0.875
    crop of them is the serving view), the serving geometry itself otherwise."""
    spec = config.spec
    if config.train.augment == "photo" and config.kind == "finetune":
        return ctx.pixels.get(ctx.keys("train"), round(config.size / CROP_FRACTION), color=spec.color,
                              policy="square", should_stop=ctx.should_stop)
    return ctx.pixels.get(ctx.keys("train"), config.size, color=spec.color, policy=config.crop,
                          should_stop=ctx.should_stop)


def run_trained(ctx: SearchContext, config: CandidateConfig, reserve_s: float) -> Scored | None:
    """Fine-tune a pretrained extractor or train a small CNN, then refit the ridge head."""
    budget = ctx.budget
    t = budget.now()
    spec = config.spec
    pretrained = config.kind == "finetune"
    params = config.train
    classes = len(ctx.classes)
    if pretrained:
        body = build_extractor(spec, ctx.catalog)
    else:
        torch.manual_seed(ctx.config.seed)
        body = build_architecture(spec)
    with torch.no_grad():
        dim = int(body(torch.zeros(1, spec.input_spec().channels, config.size, config.size)).shape[1])
    n_train = len(ctx.splits["train"])
    after_s = budget.after_training_s(config, None)
    if budget.remaining() - reserve_s - after_s < (20.0 if pretrained else 3.0):
        return None  # not even worth measuring the training speed
    if params.augment == "photo" and params.flip and ctx.mirror_changes_class():
        params = replace(params, flip=False)
    ctx.progress(f"Measuring training speed for {plain_name(config)}")
    params, step_s = budget.costs.training_step(spec, body, dim, classes, params, config.size, pretrained=pretrained)
    config = replace(config, train=params)
    timed: dict[int, tuple[float, int]] = {}  # size -> (step seconds, rounds that fit), for the card
    if pretrained:
        # The largest resolution that still allows enough rounds. A size that scaling this timing by
        # pixel count puts near the line is timed at its own size: the scaling errs up to 30 % long
        # (fixed costs, oneDNN's layouts), which chose 160 px where 192 px fitted.
        base_size, base_step = config.size, step_s
        sizes = [s for s in FINETUNE_SIZES if s <= max(config.size, 96) or s <= 1.5 * ctx.median_side]

        def fits(trial: CandidateConfig, step: float) -> int:
            after = budget.kept_after_training_s(trial, params.batch_size / step)
            return budget.rounds(step, params.batch_size, budget.remaining() - reserve_s - after)

        for size in sizes:
            trial = replace(config, size=size)
            step = base_step * (size / base_size) ** 2
            if size != base_size and fits(trial, step) >= 0.6 * FINETUNE_MIN_ROUNDS:
                step = budget.costs.step_at(spec, body, dim, classes, params, size)
            timed[size] = (round(step, 3), fits(trial, step))
            if fits(trial, step) >= FINETUNE_MIN_ROUNDS or size == sizes[-1]:  # else the smallest, with what fits
                config, step_s, spec = trial, step, trial.spec
                break
    start = probe_classifier(ctx, config)
    after_s = budget.kept_after_training_s(config, params.batch_size / step_s)
    train_budget = budget.remaining() - reserve_s - after_s
    if budget.rounds(step_s, params.batch_size, train_budget) < 2:
        return None
    epochs = budget.rounds(step_s, params.batch_size, train_budget, up=True)
    if params.max_epochs:  # the model memory knows how many rounds were enough
        epochs = min(epochs, params.max_epochs)
    params = replace(params, epochs=epochs)
    config = replace(config, train=params)
    deadline = budget.now() + max(0.0, train_budget)  # reading the pixels comes out of the training's time
    train_pixels = training_pixels(ctx, config)
    val_pixels = ctx.pixel_fn(config)(ctx.keys("val"))
    ckpt_id = hashlib.sha256(
        f"{ctx.job}|{json.dumps(replace(config, train=replace(params, epochs=0)).to_dict(), sort_keys=True)}"
        .encode()
    ).hexdigest()[:16]
    checkpoint = Path(ctx.config.cache_dir) / "checkpoints" / f"{ckpt_id}.pt" if ctx.config.cache_dir else None
    verb = "Fine-tuning" if pretrained else "Training a compact network for"

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        ctx.progress(f"{verb} your images ({plain_name(config)}): round {epoch} of {int(record['planned'])}",
                     {"epoch": epoch, "epoch_val_accuracy": record["val_accuracy"]})

    ctx.progress(f"{verb} your images ({plain_name(config)}): starting, {params.epochs} rounds planned")
    outcome = train_extractor(
        spec, body, dim, classes, params, train_pixels, ctx.y("train"), val_pixels, ctx.y("val"),
        input_size=config.size, seed=ctx.config.seed, deadline=deadline,
        pretrained=pretrained, checkpoint=checkpoint, should_stop=ctx.cancelled, on_epoch=on_epoch,
        classifier_start=start, clock=budget.clock, charged_step_s=step_s,
    )
    del train_pixels
    if outcome.epochs_done == 0 or ctx.cancelled():
        return None
    params = replace(params, epochs=outcome.epochs_planned)  # the first round may have planned more
    config = replace(config, train=params)
    tuned = outcome.body.eval()
    members_list = [(spec, tuned, member_key(spec, ctx.catalog, tuned))]
    if config.with_frozen:
        members_list.append((spec, build_extractor(spec, ctx.catalog), member_key(spec, ctx.catalog)))
    built = build_stack(config, members_list)
    ctx.progress(f"Measuring the new model ({plain_name(config)})")
    extracting = budget.now()
    feats = train_val_features(ctx, built, config)
    budget.spent(budget.extract_s(config, n_train + len(ctx.splits["val"]), params.batch_size / step_s))
    extract_s = budget.now() - extracting
    head, acc, measured = fit_head(ctx, feats["train"], feats["val"], 1024 if not pretrained else 0)
    info = {"epochs_planned": params.epochs, "epochs_done": outcome.epochs_done, "best_epoch": outcome.best_epoch,
            "stopped": outcome.stopped, "softmax_val_accuracy": outcome.best_val_accuracy,
            "history": outcome.history, "step_s": step_s, "train_seconds": outcome.seconds,
            "sizes_timed": {str(k): list(v) for k, v in timed.items()}, "reserved_after_s": round(after_s, 1),
            "extract_seconds": round(extract_s, 2)}
    config = replace(config, random_features=head.config.random_features)
    return Scored(config, acc, config.mflops(), budget.now() - t, built, head, info, val_features=feats["val"],
                  train_features=feats["train"], train_keys=ctx.keys("train"), members=members_list,
                  evaluated_on=measured)


def probe_classifier(
    ctx: SearchContext, config: CandidateConfig, *, announce: bool = True
) -> tuple[np.ndarray, np.ndarray] | None:
    """The classifier layer fine-tuning starts from (None: a random one, as for networks trained from
    scratch or with ``start_from_probe`` off): a linear probe of the frozen extractor, i.e. a ridge
    head on its features of the serving view, with scores divided by the temperature fitted on
    validation so they are logits of a sensible scale (weights (classes, features), bias).

    Linear probe, then fine-tune (Kumar et al., 2022): from a random layer the first, largest
    gradients reshape the pretrained features to fit noise. flowers5, one training run each way
    (MobileNetV2 160 px, 13 rounds): rounds 9-13 scored 81.1 % on average on the test folder from a
    random start and 82.2 % from the probe, each of the five above the other's mean. The frozen
    candidates have usually cached these features; the head solve takes about a second. ``announce``:
    say so in the progress (not when the Tune stage only hands the start to its trials).
    """
    if config.kind != "finetune" or not config.train.start_from_probe:
        return None
    frozen = CandidateConfig("frozen", config.extractor, config.size, config.crop)
    spec = frozen.spec
    built = build_stack(frozen, [(spec, build_extractor(spec, ctx.catalog), member_key(spec, ctx.catalog))])
    if announce:
        ctx.progress(f"Preparing to fine-tune ({plain_name(config)})")
    feats = train_val_features(ctx, built, frozen)
    # Raw features (no L2 normalisation, no random features): the layer it seeds sees raw features.
    head = fit_head(ctx, feats["train"], feats["val"], 0, l2_normalize=False)[0]
    weights, bias = head.weights, head.bias
    assert weights is not None and bias is not None
    columns = [head.classes.index(c) for c in ctx.classes]  # the network's outputs follow ctx.classes
    return ((weights[:, columns].T / head.temperature).astype(np.float32),
            (bias[columns] / head.temperature).astype(np.float32))


# ---------------------------------------------------------------------------------- mirrored view
def run_flip_view(ctx: SearchContext, trained: Scored) -> Scored | None:
    """A fine-tuned photo candidate again, each image also seen mirrored and the features averaged
    (inside the graph): no training, one more feature pass at twice the extractor's cost. Flip
    views are a reliable point of accuracy on photos; ``select`` takes it only if it beats the plain
    view by more than the preference's tolerance, since it doubles prediction cost. Runs only when
    that pass and exporting fit in the time left."""
    config = trained.config
    if trained.members is None or config.flip_tta or config.train.augment != "photo" or \
            ctx.config.preference == "fast" or not config.train.flip:
        return None
    flipped = replace(config, flip_tta=True)
    plain_s = float(trained.train_info.get("extract_seconds", 0.0))
    if ctx.budget.flip_view_need_s(config, plain_s) > ctx.budget.remaining():
        return None
    t = ctx.budget.now()
    built = build_stack(flipped, trained.members)
    ctx.progress(f"Measuring the new model with mirrored views ({plain_name(config)})")
    try:
        feats = train_val_features(ctx, built, flipped)
    except InterruptedError:
        return None
    ctx.budget.spent(2 * plain_s)
    head, acc, measured = fit_head(ctx, feats["train"], feats["val"], config.random_features)
    info = {**trained.train_info, "flip_view_of": config.name}
    return Scored(flipped, acc, flipped.mflops(), trained.seconds + ctx.budget.now() - t, built, head, info,
                  val_features=feats["val"], train_features=feats["train"], train_keys=ctx.keys("train"),
                  evaluated_on=measured)
