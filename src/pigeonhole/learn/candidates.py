"""Search candidates: what a candidate is, its feature network, and cached feature extraction.

A candidate is always *extractor + incremental ridge head*. Its extractor is a
:class:`FeatureStack`: one or more pixel extractors run on the same uint8 input, their
features concatenated (an ensemble of, say, a fine-tuned and the frozen pretrained
network costs one ONNX file and one head), optionally averaged with the features of
the horizontally flipped image (flip test-time augmentation, inside the graph).

Frozen features are extracted with ONNX Runtime (several times faster than eager on
CPU) and cached per (image sha256, extractor weights id, size, crop policy).
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np
import onnx
import torch
from torch import nn

from pigeonhole.learn.artifacts import export_model
from pigeonhole.learn.backbones import ExtractorSpec, PixelExtractor, get_spec, resolve_weights
from pigeonhole.learn.export import INPUT_NAME, export_onnx, open_session
from pigeonhole.learn.features import FeatureCache, FeatureKey
from pigeonhole.learn.head import RidgeHead
from pigeonhole.learn.onnx_extractor import OnnxBody, join_head, metadata_of, wrap_extractor
from pigeonhole.learn.preprocess import Color, CropPolicy, InputSpec
from pigeonhole.learn.weights import WeightsCatalog

Kind = Literal["frozen", "finetune", "scratch"]


@dataclass(frozen=True)
class TrainParams:
    """Training recipe of fine-tuned / from-scratch extractors (ignored for frozen ones)."""

    epochs: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 64
    label_smoothing: float = 0.1
    augment: Literal["photo", "digits"] = "photo"
    flip: bool = True  # photo augmentation mirrors images; off where mirroring changes the class (learn.mirror)
    patience: int = 3  # epochs without validation gain before stopping
    # bf16 autocast: used only where the CPU computes bf16 natively (train.native_bf16) and a step is measured
    # faster than in float32 (train.choose_precision, which records the answer here).
    bf16: bool = False
    # Pretrained only: keep the first, highest-resolution layers as they are. On by default so that configs
    # remembered from before it existed (model memory) train with today's recipe.
    freeze_stem: bool = True
    # Pretrained only: the new classifier layer starts from a ridge head fitted on the frozen features (linear
    # probe, then fine-tune) rather than from random values, whose first gradients distort the pretrained
    # features. On by default for the same reason as ``freeze_stem``.
    start_from_probe: bool = True
    width: int = 32  # SmallCNN width (scratch only)
    # The learning rate, weight decay and label smoothing came from the hyper-parameter search (learn.tune):
    # part of the name, so the leaderboard tells it from the recipe it started from.
    tuned: bool = False
    # At most this many rounds (0: as many as the budget allows). Set when the model memory says how many
    # rounds reached the target on a similar dataset: a plan that fills the budget would finish no sooner.
    max_epochs: int = 0


@dataclass(frozen=True)
class CandidateConfig:
    """Plain, JSON-able description of a candidate (also what the model memory stores)."""

    kind: Kind
    extractor: str
    size: int
    crop: CropPolicy = "center_crop"
    flip_tta: bool = False
    random_features: int = 0
    with_frozen: bool = False  # fine-tuned: also concatenate the frozen pretrained features
    # frozen: a second pretrained extractor whose features (same input, its own normalisation) are concatenated:
    # two architectures see different things, and one head on both is a cheap ensemble in one graph
    partner: str | None = None
    train: TrainParams = field(default_factory=TrainParams)
    optional: bool = False  # a side candidate the search may skip when time is short
    max_train_per_class: int = 0  # > 0: the head sees only this many training images per class (fast probe)

    @property
    def spec(self) -> ExtractorSpec:
        return get_spec(self.extractor, self.size)

    @property
    def color(self) -> Color:
        return self.spec.color

    @property
    def name(self) -> str:
        parts = [f"{self.extractor}{'+' + self.partner if self.partner else ''}@{self.size}", self.kind]
        if self.kind != "frozen":
            parts.append(f"{self.train.epochs}ep")
            if self.train.tuned:
                parts.append("tuned")
        if self.with_frozen:
            parts.append("+frozen")
        if self.flip_tta:
            parts.append("flip")
        if self.random_features:
            parts.append(f"rff{self.random_features}")
        if self.max_train_per_class:
            parts.append(f"probe{self.max_train_per_class}")
        return "/".join(parts)

    def input_spec(self) -> InputSpec:
        return replace(self.spec.input_spec(), crop=self.crop)

    def mflops(self) -> float:
        """Approximate inference multiply-adds of the extractor stack (head excluded)."""
        one = self.spec.mflops if self.spec.family != "smallcnn" else _smallcnn_mflops(self)
        members = 2 if self.with_frozen else 1
        partner = get_spec(self.partner, self.size).mflops if self.partner else 0.0
        return (one * members + partner) * (2 if self.flip_tta else 1)

    @property
    def partner_spec(self) -> ExtractorSpec | None:
        return get_spec(self.partner, self.size) if self.partner else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CandidateConfig:
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in names}
        train_names = {f.name for f in fields(TrainParams)}
        kwargs["train"] = TrainParams(**{k: v for k, v in dict(raw.get("train") or {}).items() if k in train_names})
        return cls(**kwargs)


def extractor_classes(config: CandidateConfig, classes: Sequence[str]) -> list[str] | None:
    """The classes whose images shaped the candidate's extractor, or None for a frozen pretrained one.

    Fine-tuned and from-scratch extractors learnt features for exactly these classes, so classes added
    later by head-only updates may be served less well than by a retrain (the drift guard watches this);
    a frozen ImageNet extractor favours none of the user's classes.
    """
    return list(classes) if config.kind != "frozen" else None


def _smallcnn_mflops(config: CandidateConfig) -> float:
    from pigeonhole.learn.backbones import small_cnn_mflops

    channels = 1 if config.spec.color == "L" else 3
    return small_cnn_mflops(config.size, channels, config.train.width)


class FeatureStack(nn.Module):
    """uint8 pixels -> concatenated features of its members, optionally flip-averaged."""

    def __init__(self, members: Sequence[nn.Module], *, flip_tta: bool = False) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.flip_tta = flip_tta

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        outs = []
        for member in self.members:
            feats = member(pixels)
            if self.flip_tta:
                feats = 0.5 * (feats + member(torch.flip(pixels, dims=[3])))
            outs.append(feats)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def state_digest(module: nn.Module) -> str:
    """Short content hash of a module's weights: identity of a trained extractor."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def member_key(spec: ExtractorSpec, catalog: WeightsCatalog | None, body: nn.Module | None = None) -> str:
    """Cache identity of one member: pretrained weights hash, or the trained weights' digest."""
    if spec.architecture == "pixels":
        return spec.id
    entry = resolve_weights(spec, catalog) if body is None else None
    if entry is not None:
        return f"{spec.id}:{entry.sha256[:16]}"
    if body is None:
        raise ValueError(f"{spec.id} has no catalog weights and no trained body")
    return f"{spec.id}:trained-{state_digest(body)}"


@dataclass
class BuiltExtractor:
    """A candidate's feature network with its cache key and input contract. An operator's ONNX extractor exists only
    as the ONNX graph in ``onnx``; its ``module`` is an empty stack (:attr:`imported`)."""

    module: FeatureStack
    key: str
    input_spec: InputSpec
    feature_dim: int
    onnx: bytes | None = None

    @property
    def imported(self) -> bool:
        return len(self.module.members) == 0

    def session(self, threads: int | None = None):
        if self.onnx is None:
            self.onnx = export_onnx(self.module, self.input_spec)
        return open_session(self.onnx, intra_op_threads=threads)

    def export(self, head: RidgeHead, metadata: Mapping[str, str]) -> bytes:
        """The servable file: pixels -> (probabilities, features)."""
        if self.imported:
            assert self.onnx is not None
            graph = onnx.load_from_string(self.onnx)
            return join_head(graph, head, {**metadata_of(graph), **metadata})
        return export_model(self.module, self.input_spec, head, metadata=metadata)


def build_stack(
    config: CandidateConfig,
    members: Sequence[tuple[ExtractorSpec, nn.Module, str]],
) -> BuiltExtractor:
    """Members are (spec, body, member key); all share the candidate's input geometry. An operator's ONNX
    extractor stands alone (no stack, no mirrored view: its graph cannot be traced into one)."""
    if any(isinstance(body, OnnxBody) for _, body, _ in members):
        if len(members) != 1 or config.flip_tta:
            raise ValueError("an imported ONNX extractor is used alone, without mirrored views")
        _, body, key = members[0]
        assert isinstance(body, OnnxBody)
        spec = config.input_spec()
        return BuiltExtractor(FeatureStack([]), key, spec, body.feature_dim, onnx=wrap_extractor(body.path, spec))
    modules = [PixelExtractor(spec, body).eval() for spec, body, _ in members]
    stack = FeatureStack(modules, flip_tta=config.flip_tta).eval()
    spec = config.input_spec()
    with torch.no_grad():
        dim = int(stack(torch.zeros((1, spec.channels, spec.height, spec.width), dtype=torch.uint8)).shape[1])
    key = "+".join(k for _, _, k in members) + ("|flip" if config.flip_tta else "")
    return BuiltExtractor(stack, key, spec, dim)


def extract_features(
    extractor: BuiltExtractor,
    keys: Sequence[str],
    pixels: Callable[[Sequence[str]], np.ndarray],
    cache: FeatureCache | None,
    *,
    threads: int | None = None,
    batch_size: int = 64,
    should_stop: Callable[[], bool] | None = None,
    timing: dict[str, float] | None = None,
) -> np.ndarray:
    """(N, D) float32 features for image keys; pixels are only fetched for cache misses.

    ``timing`` accumulates where the time of the misses went (``pixels_s``, ``infer_s``, ``images``), so the
    search can tell a network's speed from one-off costs (decoding images not seen before, exporting)."""
    spec = extractor.input_spec
    fkeys = [FeatureKey(k, extractor.key, spec.height, spec.crop) for k in keys]
    known = cache.get_many(fkeys) if cache is not None else {}
    todo = [fk for fk in dict.fromkeys(fkeys) if fk not in known]
    if todo:
        session = extractor.session(threads)
        for start in range(0, len(todo), batch_size * 8):
            part = todo[start : start + batch_size * 8]
            fetching = time.perf_counter()
            batch_pixels = pixels([fk.image_sha256 for fk in part])
            inferring = time.perf_counter()
            outs = []
            for s in range(0, len(part), batch_size):
                if should_stop is not None and should_stop():
                    raise InterruptedError("stopped while extracting features")
                outs.append(session.run(None, {INPUT_NAME: batch_pixels[s : s + batch_size]})[0])
            if timing is not None:
                timing["pixels_s"] = timing.get("pixels_s", 0.0) + inferring - fetching
                timing["infer_s"] = timing.get("infer_s", 0.0) + time.perf_counter() - inferring
                timing["images"] = timing.get("images", 0.0) + len(part)
            feats = np.concatenate(outs).astype(np.float32, copy=False)
            fresh = dict(zip(part, feats, strict=True))
            known.update(fresh)
            if cache is not None:
                cache.put_many(fresh.items())
    if not fkeys:
        return np.zeros((0, extractor.feature_dim), dtype=np.float32)
    return np.stack([known[fk] for fk in fkeys]).astype(np.float32, copy=False)


def module_bytes(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()
