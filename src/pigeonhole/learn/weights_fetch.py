"""Getting weight files into the weights directory: fetched from their publishers, or imported from the operator.

A fetch is **resumable** (the bytes received so far stay in ``<file>.part``, and the next try asks the
publisher for the rest with an HTTP range), **verified** (the whole file's sha256 against the catalog before it
is placed; a mismatch deletes the partial file, so the next try starts clean) and **atomically placed** (renamed
into its name only when complete and verified, so a crash never leaves a half file under the real name). One
fetch of a file at a time, across processes (an advisory lock beside it).

Importing registers what the operator brings: another weights directory (its ``weights.json`` entries and
files, each verified), or one ONNX extractor file with its input contract (:func:`import_onnx`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from pigeonhole.learn.weights import (
    CATALOG_FILE,
    WeightsCatalog,
    WeightsDownloadError,
    WeightsEntry,
    WeightsError,
    WeightsIntegrityError,
    hash_matches,
    sha256_file,
)

_CHUNK = 1 << 20
# (bytes so far, total bytes or None when the publisher does not say)
Progress = Callable[[int, int | None], None]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def download(entry: WeightsEntry, path: Path, *, timeout_s: float = 60.0, progress: Progress | None = None) -> Path:
    """Fetch ``entry.url`` to ``path``: resumed from a partial file, verified, then renamed into place."""
    if not entry.url:
        raise WeightsDownloadError(f"weights {entry.name!r} have no download URL")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        if path.is_file():  # another process finished it while this one waited
            return path
        part = path.with_name(path.name + ".part")
        have = part.stat().st_size if part.is_file() else 0
        request = urllib.request.Request(entry.url, headers={"User-Agent": "pigeonhole-weights"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                if have and resp.status != 206:  # the publisher ignores ranges: start again
                    have = 0
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                received = have
                with open(part, "ab" if have else "wb") as out:
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                        if progress is not None:
                            progress(received, total)
                    out.flush()
                    os.fsync(out.fileno())
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # asked past the end: the partial file is already whole (or wrong)
                total = received = have
            else:
                raise WeightsDownloadError(
                    f"weights {entry.name!r}: downloading {entry.url} failed (HTTP {exc.code}); "
                    f"without network access, copy the file in with `pigeonhole weights import`") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise WeightsDownloadError(
                f"weights {entry.name!r}: downloading {entry.url} failed ({getattr(exc, 'reason', exc)}); "
                f"{_resume_hint(part)}without network access, copy the file in with `pigeonhole weights import`"
            ) from exc
        if total is not None and received < total:
            raise WeightsDownloadError(
                f"weights {entry.name!r}: the download from {entry.url} stopped after {received:,} of {total:,} "
                f"bytes; {_resume_hint(part)}")
        actual = sha256_file(part)
        if not hash_matches(entry, actual):
            part.unlink(missing_ok=True)
            raise WeightsIntegrityError(
                f"weights {entry.name!r}: download from {entry.url} has sha256 {actual}, catalog expects "
                f"{entry.sha256}; discarded")
        os.replace(part, path)
        _fsync_dir(path.parent)
    return path


def _resume_hint(part: Path) -> str:
    return "the bytes received are kept and the next fetch resumes from there; " if part.is_file() else ""


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fetch(catalog: WeightsCatalog, name: str, *, progress: Progress | None = None) -> Path:
    """Bring one entry's file into the weights directory (nothing to do when it is here and verified)."""
    entry = catalog.get(name)
    path = catalog.file_path(entry)
    if path is None:
        raise WeightsError(f"weights {name!r}: {catalog.missing_reason(entry)}")
    if not path.is_file():
        if not entry.url:
            raise WeightsDownloadError(f"weights {name!r}: {catalog.missing_reason(entry)}")
        download(entry, path, timeout_s=catalog.download_timeout_s, progress=progress)
    catalog.verify(entry, path)
    return path


def missing_recommended(catalog: WeightsCatalog) -> list[str]:
    """The recommended publisher entries to fetch: missing, and no entry of the same architecture is here (say the
    operator's MobileNetV2, which torchvision's would only duplicate)."""
    return [e.name for e in catalog if e.recommended and e.url
            and not catalog.is_present((catalog.find(e.architecture) or e).name)]


def prefetch(catalog: WeightsCatalog, names: Sequence[str] | None = None) -> dict[str, str]:
    """Fetch ``names`` (default: :func:`missing_recommended`): name -> "present", "fetched" or why it failed. Never
    raises, so a training goes on with what is here when the network is not."""
    if names is None:
        missing = set(missing_recommended(catalog))
        names = [e.name for e in catalog if e.recommended and e.url]
    else:
        missing = {n for n in names if not catalog.is_present(n)}
    outcome: dict[str, str] = {}
    for name in names:
        if name not in missing:
            outcome[name] = "present"
            continue
        try:
            fetch(catalog, name)
            outcome[name] = "fetched"
        except WeightsError as exc:
            outcome[name] = str(exc)
    return outcome


# ------------------------------------------------------------------------------------------- imports
def _write_catalog(root: Path, entries: list[WeightsEntry]) -> None:
    path = root / CATALOG_FILE
    tmp = path.with_name(f".{CATALOG_FILE}.tmp")
    tmp.write_text(json.dumps({"weights": [e.to_json() for e in entries]}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def register(catalog: WeightsCatalog, entry: WeightsEntry, source_file: Path) -> WeightsEntry:
    """Copy ``source_file`` into the weights directory as ``entry.file`` (verified, atomically) and add or
    replace the entry in ``weights.json``."""
    if catalog.root is None:
        raise WeightsError("no weights directory is configured (PIGEONHOLE_WEIGHTS_DIR)")
    root = catalog.root
    root.mkdir(parents=True, exist_ok=True)
    target = root / entry.file
    if Path(entry.file).is_absolute() or ".." in Path(entry.file).parts:
        raise WeightsError(f"weights {entry.name!r}: file {entry.file!r} must be a plain name inside the directory")
    actual = sha256_file(source_file)
    if not hash_matches(entry, actual):
        raise WeightsIntegrityError(
            f"weights {entry.name!r}: {source_file} has sha256 {actual}, its catalog entry says {entry.sha256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        if source_file.resolve() != target.resolve():
            tmp = target.with_name(f".{target.name}.importing")
            shutil.copyfile(source_file, tmp)
            os.replace(tmp, target)
        entry = replace(entry, origin="operator", sha256=actual)
        kept = [e for e in catalog.operator_entries() if e.name != entry.name]
        _write_catalog(root, [*kept, entry])
    return entry


def import_dir(catalog: WeightsCatalog, source: Path) -> list[WeightsEntry]:
    """Every entry of another weights directory (its ``weights.json``), or the files in it that some catalog
    entry names (a copy of ``../shared/weights``, or torchvision's downloads on a machine with network)."""
    listed = source / CATALOG_FILE
    if listed.is_file():
        foreign = WeightsCatalog(source, builtin=False)
        pairs = [(e, source / e.file) for e in foreign.operator_entries()]
    else:
        by_file = {Path(e.file).name: e for e in catalog}
        pairs = [(by_file[p.name], p) for p in sorted(source.iterdir()) if p.name in by_file]
        pairs = [(replace(e, file=Path(e.file).name), p) for e, p in pairs]
    missing = [str(p) for _, p in pairs if not p.is_file()]
    if missing:
        raise WeightsError(f"files listed in {listed} are missing: {', '.join(missing)}")
    if not pairs:
        raise WeightsError(f"{source} holds no weights.json and no file that the catalog knows by name")
    return [register(catalog, entry, path) for entry, path in pairs]


def onnx_entry(name: str, path: Path, *, size: int, color: str = "RGB", mean: Sequence[float] = (0.0, 0.0, 0.0),
               std: Sequence[float] = (1.0, 1.0, 1.0), title: str = "", license: str = "") -> WeightsEntry:
    """A catalog entry for an operator's ONNX extractor, its graph checked first (see ``onnx_extractor``)."""
    from pigeonhole.learn.onnx_extractor import count_mflops, describe_onnx

    channels = 1 if color == "L" else 3
    if color not in ("RGB", "L"):
        raise WeightsError("the colour order must be RGB or L (grey)")
    if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
        raise WeightsError(f"give {channels} mean and {channels} positive std values (one per channel)")
    if not 16 <= size <= 1024:
        raise WeightsError("the input size must be between 16 and 1024 pixels")
    dim = describe_onnx(path, size=size, channels=channels)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    preprocessing: dict[str, Any] = {"color": color, "mean": list(mean), "std": list(std), "size": size}
    return WeightsEntry(name=name, file=f"{name}.onnx", sha256=digest, architecture="onnx", format="onnx",
                        feature_dim=dim, preprocessing=preprocessing, title=title or name, license=license,
                        source=f"imported from {path.name}",
                        extra={"mflops": round(count_mflops(path.read_bytes()), 1)})


def import_onnx(catalog: WeightsCatalog, path: Path, **kwargs: Any) -> WeightsEntry:
    name = kwargs.pop("name")
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise WeightsError("the name may hold letters, digits, '-', '_' and '.' only")
    return register(catalog, onnx_entry(name, path, **kwargs), path)
