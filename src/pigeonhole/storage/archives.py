"""Safe streaming iteration over uploaded zip archives holding one folder per class.

Nothing is extracted to disk: each accepted entry is handed over as a read-only stream
whose reads are counted against the limits, so a hostile archive can cost at most the
limits' worth of CPU and bytes, whatever its headers claim.

Layout accepted (what people get by zipping their folders)::

    cats/1.jpg, dogs/2.png            -> labels "cats", "dogs"
    photos/cats/1.jpg, photos/dogs/…  -> one enclosing folder is skipped
    cats/kittens/3.jpg                -> label "cats" (sub-folders join their class)
    1.jpg                             -> rejected (no class folder) unless a default label is given

Two kinds of refusal:

- :class:`RejectedEntry` items, yielded in order, for a bad entry (unsafe path, symlink,
  nested archive, too big…): the rest of the archive is still usable.
- :class:`ArchiveRejected`, raised, when the archive as a whole cannot be trusted (not a
  zip, damaged or overlapping directory, too many entries, too much data in total).

Reads of an entry's stream raise :class:`EntryRejected` when that entry turns out to be
bad while streaming (bigger than declared, suspicious compression ratio, damaged data).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import struct
import unicodedata
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, Final

_CHUNK: Final = 1024 * 1024
_IGNORED_NAMES: Final = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", ".ds_store", "icon\r"})
_ARCHIVE_SUFFIXES: Final = (".zip", ".7z", ".rar", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".cab")
_DRIVE_RE: Final = re.compile(r"^[A-Za-z]:")
_LOCAL_HEADER_SIZE: Final = 30
_CENTRAL_HEADER: Final = struct.Struct("<4s4B4HL2L5H2L")
_CENTRAL_SIGNATURE: Final = b"PK\x01\x02"
_SUPPORTED_METHODS: Final = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})


class ArchiveReason(StrEnum):
    NOT_A_ZIP = "not_a_zip"
    CORRUPT = "corrupt_archive"
    TOO_MANY_ENTRIES = "too_many_entries"
    TOO_LARGE = "archive_too_large"


class EntryReason(StrEnum):
    UNSAFE_PATH = "unsafe_path"
    SYMLINK = "symlink"
    SPECIAL_FILE = "special_file"
    ENCRYPTED = "encrypted"
    UNSUPPORTED_COMPRESSION = "unsupported_compression"
    NESTED_ARCHIVE = "nested_archive"
    NO_CLASS_FOLDER = "no_class_folder"
    BAD_LABEL = "bad_label"
    TOO_LARGE = "entry_too_large"
    SUSPICIOUS_RATIO = "suspicious_ratio"
    CORRUPT = "corrupt_entry"


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_entries: int = 100_000
    max_entry_bytes: int = 50 * 1024 * 1024
    max_total_bytes: int = 20 * 1024**3
    max_ratio: float = 100.0
    # Small entries may compress extremely well (blank images) without being a threat:
    # the ratio is judged only once an entry has produced this many bytes.
    ratio_grace_bytes: int = 1024 * 1024
    max_label_length: int = 100


DEFAULT_LIMITS: Final = ArchiveLimits()


class ArchiveRejected(ValueError):
    """The whole archive is refused; ``sentence`` is written for the person uploading."""

    def __init__(self, code: ArchiveReason, sentence: str) -> None:
        super().__init__(sentence)
        self.code = code
        self.sentence = sentence


@dataclass(frozen=True, slots=True)
class RejectedEntry:
    name: str
    code: EntryReason
    reason: str


class EntryRejected(ValueError):
    """Raised by an entry's stream when the entry proves bad while being read."""

    def __init__(self, name: str, code: EntryReason, sentence: str) -> None:
        super().__init__(f"{name}: {sentence}")
        self.rejection = RejectedEntry(name, code, sentence)


@dataclass(frozen=True, slots=True)
class ArchiveEntry:
    """An accepted file: its class, its base name, its path in the archive and its data.

    ``stream`` is readable (not seekable) until the iteration moves to the next item.
    """

    label: str
    filename: str
    name: str
    declared_size: int
    stream: IO[bytes]


# ---- opening and archive-level checks ------------------------------------------------------


def _archive_size(fp: IO[bytes]) -> int:
    pos = fp.tell()
    size = fp.seek(0, io.SEEK_END)
    fp.seek(pos)
    return size


def _count_central_entries(fp: IO[bytes], limits: ArchiveLimits) -> None:
    """Count directory entries without building them, so a directory of millions of
    entries is refused before ``zipfile`` spends memory on every one of them.

    Uses ``zipfile``'s end-record reader (private but unchanged for decades) to find the
    directory exactly as ``ZipFile`` will.
    """
    try:
        endrec = zipfile._EndRecData(fp)  # type: ignore[attr-defined]
    except (OSError, struct.error):
        endrec = None
    if not endrec:
        raise ArchiveRejected(ArchiveReason.NOT_A_ZIP, "This file is not a zip archive.")
    size_cd = endrec[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    offset_cd = endrec[zipfile._ECD_OFFSET]  # type: ignore[attr-defined]
    concat = endrec[zipfile._ECD_LOCATION] - size_cd - offset_cd  # type: ignore[attr-defined]
    if endrec[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
        concat -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
    start = offset_cd + concat
    if start < 0 or size_cd < 0:
        raise _corrupt_archive()
    fp.seek(start)
    consumed = count = 0
    while consumed < size_cd:
        header = fp.read(_CENTRAL_HEADER.size)
        if len(header) != _CENTRAL_HEADER.size or header[:4] != _CENTRAL_SIGNATURE:
            raise _corrupt_archive()
        fields = _CENTRAL_HEADER.unpack(header)
        variable = fields[12] + fields[13] + fields[14]  # name, extra, comment lengths
        fp.seek(variable, io.SEEK_CUR)
        consumed += _CENTRAL_HEADER.size + variable
        count += 1
        if count > limits.max_entries:
            raise _too_many(limits)


def _corrupt_archive() -> ArchiveRejected:
    return ArchiveRejected(ArchiveReason.CORRUPT, "This zip archive is damaged (its table of contents cannot be read).")


def _too_many(limits: ArchiveLimits) -> ArchiveRejected:
    return ArchiveRejected(
        ArchiveReason.TOO_MANY_ENTRIES,
        f"This zip archive holds more than {limits.max_entries:,} files; please split it.",
    )


def _too_large_total(limits: ArchiveLimits) -> ArchiveRejected:
    return ArchiveRejected(
        ArchiveReason.TOO_LARGE,
        f"This zip archive unpacks to more than {limits.max_total_bytes / 1e9:.3g} GB; please split it.",
    )


def _check_layout(infos: list[zipfile.ZipInfo], limits: ArchiveLimits) -> None:
    if len(infos) > limits.max_entries:
        raise _too_many(limits)
    if sum(info.file_size for info in infos) > limits.max_total_bytes:
        raise _too_large_total(limits)
    # Entries whose data overlap are how "overlapping" zip bombs reuse one compressed
    # block thousands of times; a real archive never does that. The bound is conservative
    # (local header without its name), so only true overlaps are caught.
    spans = sorted((info.header_offset, info.compress_size) for info in infos)
    for (offset, length), (next_offset, _) in zip(spans, spans[1:], strict=False):
        if offset + _LOCAL_HEADER_SIZE + length > next_offset:
            raise ArchiveRejected(
                ArchiveReason.CORRUPT,
                "This zip archive is malformed (its files overlap, a trick used by zip bombs).",
            )


@contextlib.contextmanager
def _open_zip(
    source: str | os.PathLike[str] | IO[bytes], limits: ArchiveLimits
) -> Iterator[tuple[zipfile.ZipFile, int]]:
    with contextlib.ExitStack() as stack:
        if isinstance(source, str | os.PathLike):
            fp: IO[bytes] = stack.enter_context(open(source, "rb"))
        else:
            fp = source
        if not fp.seekable():
            raise ValueError("zip archives must be read from a seekable file")
        size = _archive_size(fp)
        _count_central_entries(fp, limits)
        fp.seek(0)
        try:
            zf = stack.enter_context(zipfile.ZipFile(fp))
        except Exception:  # BadZipFile, NotImplementedError (version), UnicodeDecodeError…
            raise _corrupt_archive() from None
        yield zf, size


# ---- per-entry classification ----------------------------------------------------------------


def _entry_name(info: zipfile.ZipInfo) -> str:
    """The entry's path as its author meant it.

    Without the UTF-8 flag the zip format says cp437, but macOS and many tools write UTF-8
    anyway; re-decoding fixes mojibake labels such as "cafÃ©" and is harmless otherwise.
    """
    name = info.orig_filename
    if not info.flag_bits & 0x800:
        with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
            name = name.encode("cp437").decode("utf-8")
    return unicodedata.normalize("NFC", name)


def _unsafe(name: str, why: str) -> RejectedEntry:
    return RejectedEntry(name, EntryReason.UNSAFE_PATH, f"Skipped: its path {why}, which is not allowed.")


def _classify(info: zipfile.ZipInfo, name: str) -> RejectedEntry | list[str] | None:
    """Path segments of a file worth reading, a rejection, or None for directories and junk."""
    segments = [s for s in name.split("/") if s not in ("", ".")]
    if segments and segments[-1].lower() in _IGNORED_NAMES:
        return None
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return _unsafe(name, "contains control characters")
    if "\\" in name:
        return _unsafe(name, "uses backslashes")
    if name.startswith("/"):
        return _unsafe(name, "is absolute (starts with /)")
    if _DRIVE_RE.match(name):
        return _unsafe(name, "starts with a drive letter")
    if ".." in segments:
        return _unsafe(name, "goes up a folder (..)")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return RejectedEntry(name, EntryReason.SYMLINK, "Skipped: symbolic links are not accepted.")
    if info.is_dir() or stat.S_ISDIR(mode) or not segments:
        return None
    if any(s.startswith(".") or s == "__MACOSX" for s in segments):
        return None  # hidden files and macOS resource forks
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        return RejectedEntry(name, EntryReason.SPECIAL_FILE, "Skipped: it is not a regular file.")
    if info.flag_bits & 0x1:
        return RejectedEntry(name, EntryReason.ENCRYPTED, "Skipped: password-protected files cannot be read.")
    if info.compress_type not in _SUPPORTED_METHODS:
        return RejectedEntry(
            name,
            EntryReason.UNSUPPORTED_COMPRESSION,
            "Skipped: it is compressed with a method this server cannot read; re-create the zip "
            "with standard (deflate) compression.",
        )
    if segments[-1].lower().endswith(_ARCHIVE_SUFFIXES):
        return RejectedEntry(
            name,
            EntryReason.NESTED_ARCHIVE,
            "Skipped: archives inside the archive are not opened; upload that archive on its own.",
        )
    return segments


def _strip_enclosing_folder(paths: list[list[str]]) -> bool:
    """True when everything sits in one enclosing folder that holds the class folders.

    ``photos/cats/1.jpg`` is skipped to ``cats/1.jpg``; but ``cats/1.jpg`` alone is the
    class "cats". With a single top folder, the majority decides whether its direct
    files (classes) or its sub-folders (an enclosing folder) are meant.
    """
    if not paths or len({p[0] for p in paths}) != 1:
        return False
    deep = sum(len(p) >= 3 for p in paths)
    shallow = sum(len(p) == 2 for p in paths)
    return deep > shallow


def _label(segments: list[str], default_label: str | None) -> str | None:
    return segments[0] if len(segments) > 1 else default_label


# ---- the counted stream --------------------------------------------------------------------


class _TotalBudget:
    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.used = 0

    def spend(self, n: int) -> None:
        self.used += n
        if self.used > self.limits.max_total_bytes:
            raise _too_large_total(self.limits)


class _EntryStream(io.RawIOBase):
    """An entry's bytes, counted as they are produced, whatever the headers declared.

    Each read asks the decompressor for at most one chunk, so exceeding a cap is noticed
    after at most one chunk past it: memory and CPU stay bounded even if the zip library
    ever trusted a lying header.
    """

    def __init__(self, raw: IO[bytes], name: str, limits: ArchiveLimits, budget: _TotalBudget, compressed: int) -> None:
        super().__init__()
        self._raw = raw
        self._name = name
        self._limits = limits
        self._budget = budget
        self._ratio_cap = max(limits.max_ratio * max(compressed, 1), limits.ratio_grace_bytes)
        self._failure: BaseException | None = None
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._failure is not None:
            raise self._failure
        if size is None or size < 0:
            parts = []
            while chunk := self.read(_CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        try:
            data = self._raw.read(min(size, _CHUNK))
        except Exception as exc:  # CRC (BadZipFile), zlib/bz2/lzma errors, EOFError: damaged data
            raise self._fail(EntryReason.CORRUPT, "Skipped: its data in the archive is damaged.") from exc
        self._count(len(data))
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _fail(self, code: EntryReason, sentence: str) -> EntryRejected:
        """Remember the failure so that later reads repeat it instead of resuming."""
        failure = EntryRejected(self._name, code, sentence)
        self._failure = failure
        return failure

    def _count(self, n: int) -> None:
        self.bytes_read += n
        if self.bytes_read > self._limits.max_entry_bytes:
            raise self._fail(EntryReason.TOO_LARGE, _entry_too_large_sentence(self._limits))
        if self.bytes_read > self._ratio_cap:
            raise self._fail(EntryReason.SUSPICIOUS_RATIO, _RATIO_SENTENCE)
        try:
            self._budget.spend(n)
        except ArchiveRejected as exc:
            self._failure = exc
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()
        super().close()


def _entry_too_large_sentence(limits: ArchiveLimits) -> str:
    return f"Skipped: it is larger than the limit of {limits.max_entry_bytes / 1e6:.3g} MB per file."


_RATIO_SENTENCE: Final = (
    "Skipped: it expands far more than any image would (a “zip bomb” pattern), so it was not unpacked."
)


# ---- iteration ----------------------------------------------------------------------------------


def iter_zip(
    source: str | os.PathLike[str] | IO[bytes],
    *,
    limits: ArchiveLimits = DEFAULT_LIMITS,
    default_label: str | None = None,
) -> Iterator[ArchiveEntry | RejectedEntry]:
    """Yield every accepted file of a zip upload with its label, and every rejection.

    ``source`` is a path or a seekable binary file (an upload's spooled file). Files at the
    archive's root get ``default_label`` or are rejected. Each entry's stream is closed when
    the iteration moves on. Raises :class:`ArchiveRejected` for archive-level problems,
    possibly in the middle (total size is counted while reading).
    """
    with _open_zip(source, limits) as (zf, archive_size):
        infos = zf.infolist()
        _check_layout(infos, limits)
        planned: list[tuple[zipfile.ZipInfo, str, RejectedEntry | list[str]]] = []
        for info in infos:
            name = _entry_name(info)
            outcome = _classify(info, name)
            if outcome is not None:
                planned.append((info, name, outcome))
        strip = _strip_enclosing_folder([o for _, _, o in planned if isinstance(o, list)])
        budget = _TotalBudget(limits)
        for info, name, outcome in planned:
            if isinstance(outcome, RejectedEntry):
                yield outcome
                continue
            segments = outcome[1:] if strip else outcome
            item = _prepare(zf, info, name, segments, limits, default_label, archive_size, budget)
            if isinstance(item, RejectedEntry):
                yield item
                continue
            try:
                yield item
            finally:
                item.stream.close()


def _prepare(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    name: str,
    segments: list[str],
    limits: ArchiveLimits,
    default_label: str | None,
    archive_size: int,
    budget: _TotalBudget,
) -> ArchiveEntry | RejectedEntry:
    label = _label(segments, default_label)
    if label is None:
        return RejectedEntry(
            name,
            EntryReason.NO_CLASS_FOLDER,
            "Skipped: it is not inside a class folder; put each class's images in a folder named after the class.",
        )
    label = label.strip()
    if not label or len(label) > limits.max_label_length:
        return RejectedEntry(
            name,
            EntryReason.BAD_LABEL,
            f"Skipped: its class folder name must be 1 to {limits.max_label_length} characters.",
        )
    if info.file_size > limits.max_entry_bytes:
        return RejectedEntry(name, EntryReason.TOO_LARGE, _entry_too_large_sentence(limits))
    # A lying compressed size cannot exceed what the archive holds after the entry.
    compressed = max(1, min(info.compress_size, archive_size - info.header_offset))
    if info.file_size > max(limits.max_ratio * compressed, limits.ratio_grace_bytes):
        return RejectedEntry(name, EntryReason.SUSPICIOUS_RATIO, _RATIO_SENTENCE)
    try:
        raw = zf.open(info)
    except NotImplementedError:
        return RejectedEntry(
            name, EntryReason.UNSUPPORTED_COMPRESSION, "Skipped: its compression method cannot be read."
        )
    except Exception:  # bad local header, name mismatch, overlap (newer Pythons)…
        return RejectedEntry(name, EntryReason.CORRUPT, "Skipped: its data in the archive is damaged.")
    stream = _EntryStream(raw, name, limits, budget, compressed)
    return ArchiveEntry(label, segments[-1], name, info.file_size, stream)
