"""Catalog of pretrained weight files in a weights directory.

Nothing here reaches a model hub: weights are files listed in ``weights.json`` in a
directory the operator controls (``PIGEONHOLE_WEIGHTS_DIR``; the caller passes the
Path so this module needs no settings). Every load checks the file's sha256 against
the catalog, so a truncated or swapped file is refused instead of silently yielding a
worse model. A missing file with a publisher URL is downloaded into the directory
atomically (temporary file, hash check, then rename) so a crash never leaves a
half-written file under the real name.

Catalog format (``weights.json``)::

    {"weights": [{"name": "...", "file": "...", "sha256": "...", "format": "safetensors",
                  "architecture": "torchvision.models.mobilenet_v2", "num_classes": 1000,
                  "feature_dim": 1280, "params": 3504872,
                  "preprocessing": {"color": "RGB", "scale": 255, "mean": [...], "std": [...],
                                    "resize": 256, "crop": 224},
                  "source": "...", "license": "...", "url": null}]}
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CATALOG_FILE = "weights.json"
_CHUNK = 1 << 20


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
    sha256: str
    architecture: str
    format: str = "safetensors"
    num_classes: int | None = None
    feature_dim: int | None = None
    params: int | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    license: str = ""
    url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def arch_name(self) -> str:
        """``torchvision.models.mobilenet_v2`` -> ``mobilenet_v2``."""
        return self.architecture.rsplit(".", 1)[-1]

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> WeightsEntry:
        known = {
            "name",
            "file",
            "sha256",
            "architecture",
            "format",
            "num_classes",
            "feature_dim",
            "params",
            "preprocessing",
            "source",
            "license",
            "url",
        }
        missing = [k for k in ("name", "file", "sha256", "architecture") if not raw.get(k)]
        if missing:
            raise WeightsError(f"catalog entry {raw.get('name', '?')!r} lacks {', '.join(missing)}")
        kwargs = {k: raw[k] for k in known if k in raw}
        kwargs["sha256"] = str(kwargs["sha256"]).lower()
        kwargs["preprocessing"] = dict(kwargs.get("preprocessing") or {})
        return cls(**kwargs, extra={k: v for k, v in raw.items() if k not in known})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class WeightsCatalog:
    """The weights listed in ``<root>/weights.json``.

    A missing directory or catalog file is an empty catalog (a fresh install), while a
    malformed one raises, because silently ignoring it would hide an operator's mistake.
    Verified hashes are remembered per (path, size, mtime) so repeated loads in one
    process do not rehash; any change to the file forces a new check.
    """

    def __init__(self, root: Path, *, download_timeout_s: float = 60.0) -> None:
        self.root = Path(root)
        self.download_timeout_s = download_timeout_s
        self._entries = self._read_catalog()
        self._verified: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def _read_catalog(self) -> dict[str, WeightsEntry]:
        path = self.root / CATALOG_FILE
        if not path.is_file():
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
            raise WeightsNotFoundError(
                f"no weights named {name!r} in {self.root / CATALOG_FILE} (known: {known})"
            ) from None

    def find(self, architecture: str) -> WeightsEntry | None:
        """First entry for an architecture (``mobilenet_v2`` or its dotted path)."""
        for entry in self._entries.values():
            if architecture in (entry.architecture, entry.arch_name):
                return entry
        return None

    def is_present(self, name: str) -> bool:
        return name in self._entries and (self.root / self._entries[name].file).is_file()

    def is_obtainable(self, name: str) -> bool:
        """Present on disk, or at least downloadable in principle (has a URL)."""
        return self.is_present(name) or (name in self._entries and bool(self._entries[name].url))

    def path(self, name: str) -> Path:
        """Path of a verified file, downloading it first when absent and a URL is known."""
        entry = self.get(name)
        path = self.root / entry.file
        if not path.is_file():
            if not entry.url:
                raise WeightsNotFoundError(
                    f"weights {name!r}: file {path} is missing and the catalog gives no download URL; "
                    f"place the file (sha256 {entry.sha256}) in {self.root}"
                )
            self._download(entry, path)
        self._verify(entry, path)
        return path

    def load_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The entry's tensors as a state dict, after the sha256 check."""
        entry = self.get(name)
        path = self.path(name)
        if entry.format != "safetensors":
            raise WeightsError(f"weights {name!r}: unsupported format {entry.format!r} (only safetensors)")
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise WeightsError(f"weights {name!r}: cannot parse {path}: {exc}") from exc

    def _verify(self, entry: WeightsEntry, path: Path) -> None:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if self._verified.get(key) == entry.sha256:
                return
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise WeightsIntegrityError(
                f"weights {entry.name!r}: {path} has sha256 {actual}, catalog expects {entry.sha256}; refusing it"
            )
        with self._lock:
            self._verified[key] = actual

    def _download(self, entry: WeightsEntry, path: Path) -> None:
        assert entry.url
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{entry.file}.", suffix=".part", dir=self.root)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                try:
                    with urllib.request.urlopen(entry.url, timeout=self.download_timeout_s) as resp:
                        while chunk := resp.read(_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    raise WeightsDownloadError(
                        f"weights {entry.name!r}: {path} is missing and downloading {entry.url} failed "
                        f"({exc}); with no network, place the file in {self.root} by hand"
                    ) from exc
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != entry.sha256:
                raise WeightsIntegrityError(
                    f"weights {entry.name!r}: download from {entry.url} has sha256 {digest.hexdigest()}, "
                    f"catalog expects {entry.sha256}; discarded"
                )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
