"""Which candidate the search tries next: the ladder for this kind of data, the recipes remembered from similar
sets, and the re-ordering when the time left or the results call for it."""

from __future__ import annotations

import json
from dataclasses import replace

from pigeonhole.learn.backbones import available_specs, get_spec, unavailable_reason
from pigeonhole.learn.candidates import CandidateConfig, TrainParams
from pigeonhole.learn.context import SearchContext
from pigeonhole.learn.memory import DatasetTraits, ModelMemory

SMALL_SIDE = 48  # images at most this small (median shorter side) take the small-image route
PROBE_PER_CLASS = 60  # the anytime probe of a large set trains its head on this many images per class
# ...but on no more than this many images in all (down to PROBE_MIN_PER_CLASS a class): at 1,000 classes of 80 training
# images the probe took every image, and the first served version came after all 80,000 had been through the network.
PROBE_IMAGES, PROBE_MIN_PER_CLASS = 3000, 5
PIXEL_PROBE_PER_CLASS = 300  # raw-pixel probes of large sets: the random-feature head grows with rows
# Pretrained photo extractors in the order the ladder takes them when their files are here: the first present is
# the anytime probe and the one fine-tuned. MobileNetV2 (an operator's, or torchvision's fetched) has the recipe
# measured longest here; EfficientNet-Lite0 ships with every install; the rest are frozen side candidates.
PHOTO_EXTRACTORS = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite2", "efficientnet_lite1",
                    "dinov2_vits14", "mobilenet_v3_large", "convnext_tiny", "efficientnet_v2_s", "squeezenet1_0")
NO_PRETRAINED = ("No pretrained image extractor is installed, so this model was trained from scratch and will be "
                 "much less accurate on photos. An administrator can run `pigeonhole weights list` to see what "
                 "is missing and `pigeonhole weights fetch` or `pigeonhole weights import` to add one.")


def identity(config: CandidateConfig) -> str:
    """Configs differing only in the epoch plan are the same candidate."""
    return json.dumps(replace(config, train=replace(config.train, epochs=0, max_epochs=0)).to_dict(), sort_keys=True)


def finetune_config(extractor: str) -> CandidateConfig:
    """Fine-tuning a pretrained photo extractor (the size is a starting point: the trained runner picks the
    largest that leaves enough rounds), concatenated with its frozen features."""
    return CandidateConfig(
        "finetune", extractor, 128, with_frozen=True,
        train=TrainParams(lr=5e-4, weight_decay=0.05, batch_size=32, label_smoothing=0.1,
                          augment="photo", patience=3, bf16=True),
    )



def probe_per_class(classes: int) -> int:
    """Training images per class of the anytime probe (``PROBE_PER_CLASS``, fewer when there are many classes)."""
    return min(PROBE_PER_CLASS, max(PROBE_MIN_PER_CLASS, PROBE_IMAGES // max(classes, 1)))

class Planner:
    """The queue of candidates: the ladder first, remembered recipes put ahead of it once the probe has measured
    the data, optional side candidates deferred until the trained candidates are known not to fit."""

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self.plan: list[CandidateConfig] = []
        self.queue: list[CandidateConfig] = []
        self.tried: set[str] = set()
        self.skipped: list[CandidateConfig] = []

    def start(self, small: bool, grey: bool, median_side: float) -> None:
        self.plan = self.ladder(small, grey, median_side)
        self.queue = list(self.plan)

    def next(self) -> CandidateConfig | None:
        """The next candidate not tried yet (None: the queue is done)."""
        while self.queue:
            config = self.queue.pop(0)
            ident = identity(config)
            if ident not in self.tried:
                self.tried.add(ident)
                return config
        return None

    def trained_next(self) -> bool:
        return any(c.kind != "frozen" for c in self.queue)

    def defer(self, config: CandidateConfig) -> None:
        """A side candidate too costly next to the training still to come: it gets a turn if training does not fit."""
        self.skipped.append(config)
        self.tried.discard(identity(config))

    def retry(self, config: CandidateConfig) -> None:
        """Let the ladder run ``config`` again (the remembered rounds were not enough here)."""
        self.tried.discard(identity(config))

    def no_time_to_train(self) -> None:
        """Training did not fit: the deferred side candidates get their turn, none of them optional any more."""
        queue = [c for c in self.queue if c.kind == "frozen"] + self.skipped
        self.skipped = []
        queue += [c for c in self.plan if c.kind != "frozen" and identity(c) not in self.tried]
        self.queue = [replace(c, optional=False) if c.kind == "frozen" else c for c in queue]

    def scratch_first(self) -> None:
        """Pretrained features do no better than raw pixels here (icons, symbols, sprites...): the network
        trained from scratch gets the budget first."""
        self.queue.sort(key=lambda c: c.kind != "scratch")

    def plateaued(self) -> bool:
        """This tier has plateaued: on to training extractors (False: nothing left to train)."""
        trained = [c for c in self.queue if c.kind != "frozen"]
        self.queue = trained
        return bool(trained)

    # ------------------------------------------------------------------ the ladder
    def photo_extractors(self) -> list[str]:
        """Pretrained photo extractors whose files are here, in the order the ladder uses them: the first is the
        anytime probe and the network fine-tuned, the others are tried frozen as time allows."""
        return [e for e in PHOTO_EXTRACTORS if unavailable_reason(get_spec(e), self.ctx.catalog) is None]

    def imported_extractors(self) -> list[str]:
        """The operator's own ONNX extractors (``pigeonhole weights import``) whose files are here."""
        return sorted(s.id for s in available_specs(self.ctx.catalog) if s.architecture == "onnx")

    def ladder(self, small: bool, grey: bool, median_side: float) -> list[CandidateConfig]:
        ctx = self.ctx
        out: list[CandidateConfig] = []
        if small:
            pix = "pixels_l" if grey else "pixels_rgb"
            side = int(min(max(median_side, 8), 32))
            cap = PIXEL_PROBE_PER_CLASS if len(ctx.splits["train"]) > PIXEL_PROBE_PER_CLASS * len(ctx.classes) else 0
            out.append(CandidateConfig("frozen", pix, side, "resize", random_features=1024, max_train_per_class=cap))
            cnn = "smallcnn_l" if grey else "smallcnn_rgb"
            scratch = CandidateConfig(
                "scratch", cnn, side, "resize", train=TrainParams(
                    lr=3e-3, weight_decay=0.05, batch_size=128, label_smoothing=0.05,
                    augment="digits" if grey else "photo", patience=4, bf16=True,
                )
            )
            photo = self.photo_extractors()
            if not grey and not photo:
                ctx.notes.append(NO_PRETRAINED)
            if grey or not photo:
                return [*out, scratch]
            # Small colour photos (CIFAR-like): a pretrained network fine-tuned on them, upscaled, beats a small
            # CNN from scratch (flowers5 shrunk to 32 px, 300 s: 82.8 % vs 72.6 %), and each fills the budget,
            # so the fine-tune goes first; the search moves the CNN ahead where pretrained features do not
            # transfer (scratch_first).
            out.append(CandidateConfig("frozen", photo[0], 128, "resize"))
            return [*out, finetune_config(photo[0]), scratch]
        photo = self.photo_extractors()
        for imported in self.imported_extractors():
            out.append(CandidateConfig("frozen", imported, get_spec(imported).input_size))
        if not photo:  # no pretrained photo network: the operator's own extractors, else a CNN from scratch
            if not out:
                ctx.notes.append(NO_PRETRAINED)
            return [*out, CandidateConfig("scratch", "smallcnn_rgb", 64, "resize", train=TrainParams(
                lr=3e-3, batch_size=64, augment="photo", patience=4, bf16=True))]
        first = photo[0]
        n_train = len(ctx.splits["train"])
        per_class = probe_per_class(len(ctx.classes))
        probe_cap = per_class if n_train > per_class * len(ctx.classes) * 1.5 else 0
        first_at = [CandidateConfig("frozen", first, 160, max_train_per_class=probe_cap)]
        if probe_cap:
            first_at.append(CandidateConfig("frozen", first, 160))
        out = first_at + out  # the anytime model first; the operator's own extractors right after it
        out.append(CandidateConfig("frozen", first, 224))
        for other in photo[1:]:
            spec = get_spec(other)
            out.append(CandidateConfig("frozen", other, 224 if 224 in spec.sizes else spec.sizes[-1], optional=True))
        if len(photo) > 1:  # the two best-placed extractors into one head: chosen only if validation says better
            out.append(CandidateConfig("frozen", first, 224, partner=photo[1], optional=True))
        out.append(CandidateConfig("frozen", first, 224, flip_tta=True, random_features=1024, optional=True))
        out.append(finetune_config(first))
        return out

    # ------------------------------------------------------------------ remembered recipes
    def remember(self, memory: ModelMemory, traits: DatasetTraits, small: bool) -> None:
        """Put the recipes that won on the most similar past sets at the head of the queue."""
        self.queue = self.remembered(memory, traits, small) + self.queue

    def remembered(self, memory: ModelMemory, traits: DatasetTraits, small: bool) -> list[CandidateConfig]:
        catalog, config_of_search = self.ctx.catalog, self.ctx.config
        out = []
        for suggestion in memory.suggest(traits):
            try:
                config = CandidateConfig.from_dict(suggestion.config)
                spec = config.spec
            except (KeyError, TypeError, ValueError):
                continue
            if spec.pretrained and unavailable_reason(spec, catalog) is not None:
                continue
            if config.partner_spec is not None and unavailable_reason(config.partner_spec, catalog) is not None:
                continue
            if spec.architecture == "onnx" and (config.kind != "frozen" or config.flip_tta):
                continue  # an imported graph is only ever used frozen, alone
            if (spec.architecture in ("pixels", "smallcnn")) != small and config.kind != "scratch":
                continue
            # The rounds remembered as enough for this target, when one is given and reaching it ends the search.
            target = config_of_search.target_accuracy
            rounds = suggestion.rounds_for(target) if target is not None and config_of_search.preference != "accurate" \
                else None
            # Whether to mirror is this set's question (mirror_changes_class), not the remembered set's; whether
            # bf16 is faster is this machine's (choose_precision).
            train = replace(config.train, epochs=0, max_epochs=max(2, rounds) if rounds else 0, flip=True,
                            bf16=config.train.bf16 or config.kind != "frozen")
            out.append(replace(config, optional=False, train=train))
        return out
