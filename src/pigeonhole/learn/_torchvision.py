"""The one place torchvision is imported from.

The registry's torchvision wheel is a CUDA build; on the CPU torch its compiled
extension cannot load and ``import torchvision`` fails while registering fake
kernels for ``torchvision::nms``. Declaring the two missing operator schemas first
makes the pure-Python parts (model definitions, transforms) importable. We only do
that when the real extension fails to load, so a matching build is left alone.
``torchvision.io`` and ``torchvision.ops`` stay unusable: decode images with Pillow.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from types import ModuleType

import torch

_lock = threading.Lock()
_shim_library: torch.library.Library | None = None  # must stay referenced or the schemas vanish
_prepared = False


def _prepare() -> None:
    global _shim_library, _prepared
    with _lock:
        if _prepared:
            return
        spec = importlib.util.find_spec("torchvision")
        if spec is None or spec.origin is None:
            raise ImportError("torchvision is not installed")
        try:
            torch.ops.load_library(os.path.join(os.path.dirname(spec.origin), "_C.so"))
        except (OSError, ImportError, RuntimeError):
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _shim_library = lib
        _prepared = True


def shim_active() -> bool:
    """True when the operator schemas had to be faked (CPU torch with a CUDA torchvision)."""
    _prepare()
    return _shim_library is not None


def tv_models() -> ModuleType:
    """Return ``torchvision.models``, importing it safely on this machine."""
    _prepare()
    return importlib.import_module("torchvision.models")
