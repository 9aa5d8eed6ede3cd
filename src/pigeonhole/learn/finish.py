"""Finishing a candidate that became the selection: its head refit on train+val with "unknown" chosen, one ONNX
file, test metrics measured on that file, a card, and the files on disk."""

from __future__ import annotations

from typing import Any

import numpy as np

from pigeonhole.learn.artifacts import make_card, measure_speed, run_model, split_metrics, write_artifacts
from pigeonhole.learn.backbones import ExtractorSpec, resolve_weights
from pigeonhole.learn.candidates import CandidateConfig, extract_features, extractor_classes
from pigeonhole.learn.context import SearchContext
from pigeonhole.learn.grow import remember_features
from pigeonhole.learn.held_out import HeldOutFeatures
from pigeonhole.learn.neighbours import NeighbourIndex
from pigeonhole.learn.search_types import CandidateResult, Scored
from pigeonhole.learn.unknown import choose_unknown

LEFT_OUT = "left-out train+val images"  # metrics.val_measured_on of such a candidate (growing chooses the same way)


def finish(ctx: SearchContext, scored: Scored, leaderboard: list[dict[str, Any]], number: int) -> CandidateResult:
    """Refit the head on train+val, export, evaluate the ONNX file on test, write files (folder ``number``)."""
    config = scored.config
    head = scored.head
    train_keys = scored.train_keys if scored.train_keys is not None else ctx.keys("train")
    by_key = dict(zip(ctx.keys("train"), ctx.labels("train"), strict=True))
    train_labels = [by_key[k] for k in train_keys]
    train_f, val_f = scored.train_features, scored.val_features
    if train_f is None or val_f is None:
        train_f, val_f = (extract_features(scored.extractor, keys, ctx.pixel_fn(config), ctx.cache,
                                           threads=ctx.config.threads) for keys in (train_keys, ctx.keys("val")))
    if scored.val_in_head:  # "unknown" chosen on every held image as if left out, as the rest was
        choose_unknown(head, np.vstack([train_f, val_f]), train_labels + ctx.labels("val"), left_out=True)
    else:
        choose_unknown(head, val_f, ctx.labels("val"), left_out=False)
        head.add(val_f, ctx.labels("val"))
        head.solve()
    if head.classes != ctx.classes:
        raise RuntimeError(f"head classes {head.classes} differ from the training set's {ctx.classes}")
    lineage = {"job": ctx.job, "dataset": ctx.ts.fingerprint(), "seed": ctx.config.seed,
               "extractor_key": scored.extractor.key, "parent": ctx.current.config.name if ctx.current else None,
               "extractor_classes": extractor_classes(config, ctx.classes)}
    model = scored.extractor.export(head, metadata={"pigeonhole.candidate": config.name})
    eval_split = "test" if ctx.splits["test"] else "val"
    keys = ctx.keys(eval_split)
    answers = run_model(model, ctx.pixel_fn(config)(keys), threads=ctx.config.threads) if keys else None
    metrics = (
        split_metrics(*answers[:2], ctx.labels(eval_split), keys, ctx.classes, head.threshold)
        if answers is not None else {}
    )
    if ctx.cache is not None:  # the version's first class change then finds every feature it needs
        known_keys, known = train_keys + ctx.keys("val"), [train_f, val_f]
        if answers is not None:
            known_keys, known = known_keys + keys, [*known, answers[2]]
        remember_features(ctx.cache, model, known_keys, np.vstack(known))
    metrics["split"] = eval_split
    metrics["val_accuracy"] = scored.val_accuracy
    metrics["val_measured_on"] = LEFT_OUT if scored.val_in_head else "validation images"
    metrics["val_images"] = scored.evaluated_on
    speed = measure_speed(model, scored.extractor.input_spec, threads=ctx.config.threads)
    ctx.budget.spent(ctx.budget.finish_s(config))
    ready_at = ctx.budget.elapsed()
    candidate = {"name": config.name, "config": config.to_dict(), "val_accuracy": scored.val_accuracy,
                 "mflops": scored.mflops}
    training = {"seconds": scored.seconds, "search_seconds_so_far": ready_at,
                "train_images": len(ctx.splits["train"]), "val_images": len(ctx.splits["val"]),
                "head_trained_on": "train+val", **{k: v for k, v in scored.train_info.items()}}
    card = make_card(candidate=candidate, classes=ctx.classes, input_spec=scored.extractor.input_spec,
                     head=head, metrics=metrics, speed=speed, model_bytes=len(model), training=training,
                     leaderboard=list(leaderboard), lineage=lineage,
                     extractor=extractor_facts(ctx, config), notes=ctx.notes)
    paths: dict[str, str] = {}
    if ctx.output_dir is not None:
        folder = ctx.output_dir / f"{number:02d}-{_slug(config.name)}"
        index = NeighbourIndex(train_keys + ctx.keys("val"), train_labels + ctx.labels("val"),
                               np.vstack([train_f, val_f]))  # the images the head holds
        tested = (HeldOutFeatures.from_rows(keys, ctx.labels(eval_split), answers[2]).to_bytes()
                  if answers is not None and eval_split == "test" else None)  # growing measures on them again
        paths = write_artifacts(folder, model, head, card, neighbours=index.to_bytes(), held_out=tested).as_dict()
    return CandidateResult(
        name=config.name, config=config.to_dict(), val_accuracy=scored.val_accuracy, test_metrics=metrics,
        mflops=scored.mflops, model_size_bytes=len(model), latency_ms=speed["latency_ms"],
        throughput_img_s=speed["throughput_img_s"], train_seconds=scored.seconds, ready_at_s=ready_at,
        artifacts=paths, card=card,
    )


def extractor_facts(ctx: SearchContext, config: CandidateConfig) -> dict[str, Any]:
    """What the card says of the candidate's extractor: pretrained or not, and on which weights."""
    def facts(spec: ExtractorSpec) -> dict[str, Any] | None:
        entry = resolve_weights(spec, ctx.catalog) if spec.pretrained else None
        return None if entry is None else {"name": entry.name, "title": entry.title or entry.name,
                                           "sha256": entry.sha256, "license": entry.license,
                                           "origin": entry.origin}

    partner = config.partner_spec
    return {"id": config.spec.id, "pretrained": config.spec.pretrained, "weights": facts(config.spec),
            **({"partner": partner.id, "partner_weights": facts(partner)} if partner is not None else {})}


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80]
