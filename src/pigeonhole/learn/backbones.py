"""Registry of feature extractors the search can choose from.

A spec says everything the rest of the system needs without building the network:
input geometry and normalisation (for preprocessing and the exported input spec),
feature size (for heads), and an approximate inference cost in MFLOPs so the search
can try cheap candidates first and prefer the cheapest model that meets the target.

Pretrained specs name a catalog entry and are only *usable* when that file is in the
weights directory; :func:`unavailable_reason` says why not in a sentence the UI can
show. Weights are loaded with ``strict=True`` into the stock torchvision architecture
before the classifier is stripped, so a mismatched file fails loudly instead of
leaving layers at random init.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from pigeonhole.learn import efficientnet_lite, vit
from pigeonhole.learn._torchvision import tv_models
from pigeonhole.learn.onnx_extractor import OnnxBody
from pigeonhole.learn.preprocess import Color, CropPolicy, InputSpec, Normalize
from pigeonhole.learn.weights import WeightsCatalog, WeightsEntry, WeightsError, WeightsNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ExtractorSpec:
    """A feature extractor: geometry, normalisation, output size and cost.

    ``mflops_224`` is the multiply-add cost at 224x224 (torchvision's published GFLOPS
    for the ImageNet models); :attr:`mflops` rescales it by pixel count, which is how
    convolutional cost scales with input size.
    """

    id: str
    family: str
    architecture: str
    input_size: int
    feature_dim: int
    mflops_224: float
    color: Color = "RGB"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop: CropPolicy = "center_crop"
    weights: str | None = None  # catalog entry name; None = trained from scratch
    sizes: tuple[int, ...] = ()  # resolutions worth trying as search candidates

    @property
    def pretrained(self) -> bool:
        return self.weights is not None

    @property
    def mflops(self) -> float:
        return self.mflops_224 * (self.input_size / 224) ** 2

    def at_size(self, size: int) -> ExtractorSpec:
        """The same extractor at another resolution (the cache key includes the size)."""
        return replace(self, input_size=size)

    def input_spec(self, dtype: Literal["uint8", "float32"] = "uint8") -> InputSpec:
        return InputSpec(
            height=self.input_size,
            width=self.input_size,
            color=self.color,
            mean=self.mean,
            std=self.std,
            dtype=dtype,
            crop=self.crop,
        )


class SmallCNN(nn.Module):
    """Compact CNN for small or grey images (e.g. 28x28 digits), trained from scratch.

    ImageNet features transfer poorly to tiny grey glyphs, and a network this size
    trains in seconds on CPU. Global average pooling makes it accept any input size
    >= 8 px; the output is the pooled (N, width*4) feature vector, so it plugs into the
    same head as the pretrained extractors.
    """

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_channels, width),
            *block(width, width),
            nn.MaxPool2d(2),
            *block(width, width * 2),
            *block(width * 2, width * 2),
            nn.MaxPool2d(2),
            *block(width * 2, width * 4),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_dim = width * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def small_cnn_mflops(size: int, in_channels: int = 1, width: int = 32) -> float:
    """Exact conv multiply-adds of :class:`SmallCNN`, for the cost-aware search."""
    s1, s2, s3 = size * size, (size // 2) ** 2, (size // 4) ** 2
    macs = 9 * (
        in_channels * width * s1
        + width * width * s1
        + width * 2 * width * s2
        + 4 * width * width * s2
        + 8 * width * width * s3
    )
    return macs / 1e6


class _SqueezeFeatures(nn.Module):
    """SqueezeNet's conv trunk + global average pool (its classifier is a 1x1 conv)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.features = net.features
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def _strip_mobilenet_v3(net: nn.Module) -> nn.Module:
    # Keep Linear+Hardswish: the penultimate layer is the pretrained embedding.
    net.classifier = nn.Sequential(net.classifier[0], net.classifier[1])
    return net


def _strip_classifier(attr: str) -> Callable[[nn.Module], nn.Module]:
    def strip(net: nn.Module) -> nn.Module:
        setattr(net, attr, nn.Identity())
        return net

    return strip


def _strip_convnext(net: nn.Module) -> nn.Module:
    # Keep the LayerNorm2d and Flatten before the last Linear: the normalised pooled vector is the embedding.
    net.classifier[2] = nn.Identity()  # type: ignore[index]
    return net


_STRIPPERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "mobilenet_v2": _strip_classifier("classifier"),
    "efficientnet_b0": _strip_classifier("classifier"),
    "efficientnet_v2_s": _strip_classifier("classifier"),
    "convnext_tiny": _strip_convnext,
    **{name: _strip_classifier("classifier") for name in efficientnet_lite.VARIANTS},
    "dinov2_vits14": lambda net: net,
    "resnet18": _strip_classifier("fc"),
    "mobilenet_v3_small": _strip_mobilenet_v3,
    "mobilenet_v3_large": _strip_mobilenet_v3,
    "squeezenet1_0": _SqueezeFeatures,
}


def _imagenet(
    id: str, family: str, arch: str, dim: int, mflops: float, sizes: tuple[int, ...] = (160, 224),
    weights: str | None = None,
) -> ExtractorSpec:
    return ExtractorSpec(
        id=id,
        family=family,
        architecture=arch,
        input_size=sizes[-1],
        feature_dim=dim,
        mflops_224=mflops,
        weights=weights or f"{arch}-imagenet",
        sizes=sizes,
    )


def _lite(n: int, mflops_224: float, sizes: tuple[int, ...]) -> ExtractorSpec:
    """EfficientNet-Lite: inputs scaled as (x - 127) / 128 (not ImageNet's mean and deviation)."""
    return replace(_imagenet(f"efficientnet_lite{n}", "efficientnet_lite", f"efficientnet_lite{n}", 1280,
                             mflops_224, sizes), mean=efficientnet_lite.MEAN, std=efficientnet_lite.STD)


SPECS: dict[str, ExtractorSpec] = {
    s.id: s
    for s in (
        _imagenet("mobilenet_v3_small", "mobilenet", "mobilenet_v3_small", 1024, 60.0, (128, 160, 224)),
        _imagenet("mobilenet_v2", "mobilenet", "mobilenet_v2", 1280, 300.0, (128, 160, 224)),
        _imagenet("mobilenet_v3_large", "mobilenet", "mobilenet_v3_large", 1280, 220.0),
        _imagenet("efficientnet_b0", "efficientnet", "efficientnet_b0", 1280, 390.0),
        _imagenet("squeezenet1_0", "squeezenet", "squeezenet1_0", 512, 820.0),
        _imagenet("resnet18", "resnet", "resnet18", 512, 1810.0),
        _lite(0, 407.0, (128, 160, 224)),
        _lite(1, 550.0, (240,)),
        _lite(2, 667.0, (260,)),
        _imagenet("efficientnet_v2_s", "efficientnet_v2", "efficientnet_v2_s", 1280, 2850.0, (224,)),
        _imagenet("convnext_tiny", "convnext", "convnext_tiny", 768, 4460.0, (224,)),
        # ViT-S/14: the input must be a multiple of 14 px; about 6.1 G multiply-adds at 224 px (257 tokens).
        _imagenet("dinov2_vits14", "dinov2", "dinov2_vits14", 768, 6100.0, (224,), weights="dinov2_vits14"),
        ExtractorSpec(
            id="smallcnn_l",
            family="smallcnn",
            architecture="smallcnn",
            input_size=28,
            feature_dim=128,
            mflops_224=small_cnn_mflops(224, 1),
            color="L",
            mean=(0.5,),
            std=(0.5,),
            crop="resize",
            sizes=(28, 32),
        ),
        ExtractorSpec(
            id="pixels_l",
            family="pixels",
            architecture="pixels",
            input_size=28,
            feature_dim=28 * 28,
            mflops_224=0.0,
            color="L",
            mean=(0.0,),
            std=(1.0,),
            crop="resize",
            sizes=(28,),
        ),
        ExtractorSpec(
            id="pixels_rgb",
            family="pixels",
            architecture="pixels",
            input_size=32,
            feature_dim=3 * 32 * 32,
            mflops_224=0.0,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            crop="resize",
            sizes=(32,),
        ),
        ExtractorSpec(
            id="smallcnn_rgb",
            family="smallcnn",
            architecture="smallcnn",
            input_size=32,
            feature_dim=128,
            mflops_224=small_cnn_mflops(224, 3),
            crop="resize",
            sizes=(32, 64),
        ),
    )
}


# Extractors the operator imported as ONNX files, by id ("onnx:<catalog name>"): registered from a catalog
# (:func:`register_catalog`) by whoever builds one for a search, since their geometry lives in the catalog.
_IMPORTED: dict[str, ExtractorSpec] = {}
ONNX_PREFIX = "onnx:"


def onnx_spec(entry: WeightsEntry) -> ExtractorSpec:
    """The spec of an operator's ONNX extractor, from its catalog entry."""
    pre = entry.preprocessing
    size = int(pre.get("size", 224))
    color: Color = "L" if pre.get("color") == "L" else "RGB"
    channels = 1 if color == "L" else 3
    return ExtractorSpec(
        id=ONNX_PREFIX + entry.name, family="onnx", architecture="onnx", input_size=size,
        feature_dim=int(entry.feature_dim or 0),
        mflops_224=float(entry.extra.get("mflops", 1000.0)) * (224 / size) ** 2,  # counted at import, at its size
        color=color, mean=tuple(pre.get("mean", (0.0,) * channels)), std=tuple(pre.get("std", (1.0,) * channels)),
        weights=entry.name, sizes=(size,),
    )


def register_catalog(catalog: WeightsCatalog | None) -> None:
    """Make the catalog's ONNX extractors known to :func:`get_spec` in this process."""
    for entry in catalog or ():
        if entry.format == "onnx":
            _IMPORTED[ONNX_PREFIX + entry.name] = onnx_spec(entry)


def get_spec(extractor_id: str, size: int | None = None) -> ExtractorSpec:
    spec = SPECS.get(extractor_id) or _IMPORTED.get(extractor_id)
    if spec is None:
        raise KeyError(f"unknown extractor {extractor_id!r}; known: {', '.join([*SPECS, *_IMPORTED])}")
    return spec.at_size(size) if size is not None else spec


def resolve_weights(spec: ExtractorSpec, catalog: WeightsCatalog | None) -> WeightsEntry | None:
    """The catalog entry for a pretrained spec: its named entry when its file is here, else any present entry for
    the architecture (an operator's file under another name, a publisher's fetched one), else the named entry.

    The fallback lets operators drop in a file under another name (say a different ImageNet recipe) without a
    code change, as long as it loads strictly.
    """
    if not spec.pretrained or catalog is None:
        return None
    named = catalog.get(spec.weights) if spec.weights in catalog else None
    if named is not None and catalog.is_present(named.name):
        return named
    if spec.architecture == "onnx":
        return named
    found = catalog.find(spec.architecture)
    return found if found is not None and catalog.is_present(found.name) else named or found


def unavailable_reason(spec: ExtractorSpec, catalog: WeightsCatalog | None) -> str | None:
    """None when the spec can be built now, else a sentence saying what is missing. Only files already here count:
    a search never waits on the network (fetching is a step of its own, ``weights_fetch``)."""
    if not spec.pretrained:
        return None
    if catalog is None:
        return f"{spec.id} needs pretrained weights {spec.weights!r} but no weights catalog is configured"
    entry = resolve_weights(spec, catalog)
    if entry is None:
        return f"{spec.id} needs weights {spec.weights!r} (architecture {spec.architecture}), which no catalog lists"
    if not catalog.is_present(entry.name):
        return f"{spec.id}: {catalog.missing_reason(entry)}"
    return None


def extractor_key(spec: ExtractorSpec, catalog: WeightsCatalog | None) -> str:
    """Identity of the extractor's weights, for feature-cache keys.

    Includes the weights' sha256 prefix so replacing a file can never serve stale
    features. Trained-from-scratch extractors have no catalog entry: callers must key
    them by their own trained-weights hash instead.
    """
    entry = resolve_weights(spec, catalog)
    if entry is None:
        raise ValueError(f"{spec.id} has no catalog weights; key it by its trained weights instead")
    return f"{spec.id}:{entry.sha256[:16]}"


def available_specs(catalog: WeightsCatalog | None) -> list[ExtractorSpec]:
    """Usable extractors, cheapest first (the order the search should try them in)."""
    usable = [s for s in (*SPECS.values(), *_IMPORTED.values()) if unavailable_reason(s, catalog) is None]
    return sorted(usable, key=lambda s: s.mflops)


def build_architecture(spec: ExtractorSpec, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Feature module (N, C, H, W) float -> (N, feature_dim), in eval mode.

    With a state dict, it must match the full torchvision classifier exactly
    (``strict=True``) before the classification layer is removed. Without one, the
    network is randomly initialised: right for SmallCNN, and for tests of shapes.
    """
    if spec.architecture == "pixels":
        return nn.Flatten().eval()  # raw (normalised) pixels: the no-network baseline for tiny images
    if spec.architecture == "smallcnn":
        net: nn.Module = SmallCNN(in_channels=1 if spec.color == "L" else 3)
        if state_dict is not None:
            net.load_state_dict(state_dict, strict=True)
        return net.eval()
    if spec.architecture not in _STRIPPERS:
        raise KeyError(f"no builder for architecture {spec.architecture!r}")
    full = _full_network(spec)
    if state_dict is not None:
        if spec.architecture in efficientnet_lite.VARIANTS:
            state_dict = efficientnet_lite.convert_state_dict(state_dict)
        elif spec.architecture == "dinov2_vits14":
            state_dict = vit.convert_state_dict(state_dict, spec.input_size)
        try:
            full.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"weights for {spec.id} do not match torchvision's {spec.architecture}: {exc}") from exc
    return _STRIPPERS[spec.architecture](full).eval()


def _full_network(spec: ExtractorSpec) -> nn.Module:
    """The whole classification network, randomly initialised."""
    if spec.architecture in efficientnet_lite.VARIANTS:
        return efficientnet_lite.EfficientNetLite(spec.architecture)
    if spec.architecture == "dinov2_vits14":
        return vit.DinoViT(image_size=spec.input_size)
    return getattr(tv_models(), spec.architecture)(weights=None)


def build_extractor(spec: ExtractorSpec, catalog: WeightsCatalog | None) -> nn.Module:
    """The extractor with its pretrained weights (sha256-checked), ready for inference. An operator's ONNX
    extractor comes back as :class:`OnnxBody`: it runs in ONNX Runtime only."""
    reason = unavailable_reason(spec, catalog)
    if reason is not None:
        raise WeightsNotFoundError(reason)
    entry = resolve_weights(spec, catalog)
    if spec.architecture == "onnx" and entry is not None and catalog is not None:
        return OnnxBody(catalog.path(entry.name), spec.feature_dim)
    state = catalog.load_state_dict(entry.name) if (entry is not None and catalog is not None) else None
    return build_architecture(spec, state)


def stem_modules(spec: ExtractorSpec, body: nn.Module) -> list[nn.Module]:
    """The first layers of a pretrained extractor: what fine-tuning leaves frozen (up to stride 4; MobileNetV2
    up to stride 8).

    They detect edges, colour blobs and simple textures that transfer to any photo, yet they run at the
    highest resolutions, so they are a large share of a training step. MobileNetV2 at 160 px on 2 cores:
    0.51 -> 0.30 s per step with its first four blocks frozen (stride 4); frozen through its seventh (stride 8)
    and run in ONNX Runtime (:func:`split_after_stem`), 0.43 -> 0.33 s at 160 px and 0.34-0.55 -> 0.23 s
    at 128 px on an AVX2-only CPU. On flowers5 (128 px, 10 rounds, the same seed) the deeper freeze lost
    nothing: 78.8 % on validation either way, 81.7 % vs 81.4 % on the test folder. Unknown architectures
    freeze nothing.
    """
    arch = spec.architecture
    if arch in efficientnet_lite.VARIANTS:  # the stem and the blocks through stride 8, as MobileNetV2
        return list(body.features[: efficientnet_lite.stride8_end(arch)])  # type: ignore[index]
    if arch in ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0"):
        stages = {"mobilenet_v2": 7, "mobilenet_v3_small": 2, "mobilenet_v3_large": 4, "efficientnet_b0": 3}[arch]
        return list(body.features[:stages])  # type: ignore[index]
    if arch == "resnet18":
        return [body.conv1, body.bn1, body.layer1]
    if arch == "squeezenet1_0":
        return list(body.features[:3])  # type: ignore[index]
    return []


def split_after_stem(
    spec: ExtractorSpec, body: nn.Module
) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]] | None:
    """(stem, rest) with ``rest(stem(x)) == body(x)``: the stem is :func:`stem_modules` as one module, the rest
    the remaining layers and the pooling. None where the stem is not a prefix of one ``features`` sequence
    (ResNet), so the caller runs the whole body.

    A frozen stem computes the same function at every step, so fine-tuning runs it in ONNX Runtime, which
    is about 3-4x faster than eager PyTorch on these CPUs (MobileNetV2's stem at 160 px, batch 32, 2 cores:
    32 vs 139 ms), while autograd only ever needed the rest.
    """
    stem = stem_modules(spec, body)
    features = getattr(body, "features", None)
    if not stem or not isinstance(features, nn.Sequential) or list(features[: len(stem)]) != stem:
        return None
    later = features[len(stem):]

    def rest(h: torch.Tensor) -> torch.Tensor:
        h = later(h)
        if isinstance(body, _SqueezeFeatures):
            return torch.flatten(body.pool(h), 1)
        pooled = nn.functional.adaptive_avg_pool2d(h, 1) if spec.architecture == "mobilenet_v2" else body.avgpool(h)
        return body.classifier(torch.flatten(pooled, 1))

    return nn.Sequential(*stem), rest


class PixelExtractor(nn.Module):
    """Normalisation + extractor: uint8 NCHW pixels in, (N, D) features out.

    This is what gets exported, so the ONNX file takes raw pixels (see preprocess).
    """

    def __init__(self, spec: ExtractorSpec, body: nn.Module) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.body = body

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(pixels))
