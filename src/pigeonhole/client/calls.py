"""The API as transport-free generators ("sans-IO"): each method yields the HTTP calls it needs and
returns the result, so the synchronous and the asynchronous client share one implementation.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
UPLOAD_BATCH_FILES = 64
UPLOAD_BATCH_BYTES = 32 * 1024 * 1024


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    files: list[tuple[str, tuple[str, BinaryIO | bytes, str]]] | None = None
    data: dict[str, str] | None = None
    content: bytes | None = None  # a raw body (one image to classify), sent as application/octet-stream
    idempotent: bool = False  # safe to retry after a connection error
    download_to: Path | None = None  # stream the answer into this file instead of parsing JSON


@dataclass
class Sleep:
    seconds: float


@dataclass
class UploadProgress:
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, str]] = field(default_factory=list)


Plan = Generator[Call | Sleep, Any, Any]


def clean_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def paged(path: str, params: dict[str, Any] | None = None) -> Generator[Call, Any, list[dict[str, Any]]]:
    """Every item of a list endpoint, following ``next_cursor``."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = yield Call("GET", path, params=clean_params({**(params or {}), "cursor": cursor, "limit": 200}),
                          idempotent=True)
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return items


def folder_files(folder: Path) -> list[tuple[str, Path]]:
    """(class, path) for every image in ``folder/<class>/...``; hidden files are skipped."""
    if not folder.is_dir():
        raise FileNotFoundError(f"There is no folder at {folder}.")
    found = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for root, dirs, files in os.walk(class_dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                path = Path(root) / name
                if not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((class_dir.name, path))
    return found


def upload_batches(files: Iterable[tuple[str, Path]]) -> list[tuple[str, list[Path]]]:
    """Group files per class into requests of bounded size, so each request is small and can be retried.

    Retrying is safe: the server recognises the same bytes in the same class as a duplicate.
    """
    batches: list[tuple[str, list[Path]]] = []
    for label, path in files:
        size = path.stat().st_size
        last = batches[-1] if batches else None
        if (last is None or last[0] != label or len(last[1]) >= UPLOAD_BATCH_FILES
                or sum(p.stat().st_size for p in last[1]) + size > UPLOAD_BATCH_BYTES):
            batches.append((label, [path]))
        else:
            last[1].append(path)
    return batches
