from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from pigeonhole.storage.archives import (
    ArchiveEntry,
    ArchiveLimits,
    ArchiveReason,
    ArchiveRejected,
    EntryReason,
    EntryRejected,
    RejectedEntry,
    _EntryStream,
    _TotalBudget,
    iter_zip,
)
from pigeonhole.storage.blobs import BlobStore
from pigeonhole.storage.images import decode_for_model
from tests.factories import jpeg_bytes, make_zip, patch_central, patch_name, patch_sizes

JPEG = jpeg_bytes(16, 16)


def collect(archive: bytes | Path, **kwargs: object) -> tuple[list[tuple[str, str, bytes]], dict[str, EntryReason]]:
    """Read everything like the upload service would: (label, file name, bytes), rejections."""
    accepted: list[tuple[str, str, bytes]] = []
    rejections: dict[str, EntryReason] = {}
    source = archive if isinstance(archive, Path) else io.BytesIO(archive)
    for item in iter_zip(source, **kwargs):  # type: ignore[arg-type]
        if isinstance(item, RejectedEntry):
            assert item.reason.startswith("Skipped: ") and item.reason.endswith(".")
            rejections[item.name] = item.code
            continue
        try:
            accepted.append((item.label, item.filename, item.stream.read()))
        except EntryRejected as exc:
            rejections[exc.rejection.name] = exc.rejection.code
    return accepted, rejections


def test_one_folder_per_class() -> None:
    accepted, rejections = collect(make_zip({"cats/1.jpg": JPEG, "dogs/2.jpg": b"dog", "cats/3.jpg": b"c"}))
    assert accepted == [("cats", "1.jpg", JPEG), ("dogs", "2.jpg", b"dog"), ("cats", "3.jpg", b"c")]
    assert rejections == {}


def test_one_enclosing_folder_is_skipped() -> None:
    archive = make_zip({"photos/": b"", "photos/cats/1.jpg": b"1", "photos/dogs/2.jpg": b"2", "photos/notes.txt": b"n"})
    accepted, rejections = collect(archive)
    assert [(label, name) for label, name, _ in accepted] == [("cats", "1.jpg"), ("dogs", "2.jpg")]
    assert rejections == {"photos/notes.txt": EntryReason.NO_CLASS_FOLDER}


def test_a_single_class_folder_is_not_mistaken_for_an_enclosing_one() -> None:
    accepted, _ = collect(make_zip({"cats/1.jpg": b"1", "cats/2.jpg": b"2", "cats/old/3.jpg": b"3"}))
    assert {label for label, _, _ in accepted} == {"cats"}


def test_sub_folders_join_their_class() -> None:
    accepted, _ = collect(make_zip({"cats/kittens/1.jpg": b"1", "dogs/2.jpg": b"2"}))
    assert [(label, name) for label, name, _ in accepted] == [("cats", "1.jpg"), ("dogs", "2.jpg")]


def test_root_files_are_rejected_or_take_the_default_label() -> None:
    archive = make_zip({"loose.jpg": b"x", "cats/1.jpg": b"1"})
    accepted, rejections = collect(archive)
    assert rejections == {"loose.jpg": EntryReason.NO_CLASS_FOLDER}
    accepted, rejections = collect(archive, default_label="misc")
    assert [(label, name) for label, name, _ in accepted] == [("misc", "loose.jpg"), ("cats", "1.jpg")]
    assert rejections == {}


def test_junk_is_ignored_silently() -> None:
    archive = make_zip(
        {
            "cats/1.jpg": b"1",
            "__MACOSX/cats/._1.jpg": b"resource fork",
            "cats/.DS_Store": b"x",
            ".DS_Store": b"x",
            "cats/Thumbs.db": b"x",
            "cats/desktop.ini": b"x",
            "cats/.hidden.jpg": b"x",
            ".git/config": b"x",
            "cats/.thumbnails/a.jpg": b"x",
        }
    )
    accepted, rejections = collect(archive)
    assert [name for _, name, _ in accepted] == ["1.jpg"]
    assert rejections == {}


@pytest.mark.parametrize(
    "name",
    [
        "../x.jpg",
        "cats/../../x.jpg",
        "/etc/x.jpg",
        "C:\\x.jpg",
        "C:/x.jpg",
        "cats\\..\\..\\x.jpg",
        "cats/x\x00.jpg",
        "cats/\x1b[2Jx.jpg",
    ],
)
def test_zip_slip_and_other_unsafe_paths_are_rejected(name: str) -> None:
    placeholder = "".join("_" if ord(c) < 32 else c for c in name)  # zipfile cannot write those
    archive = make_zip([(placeholder, b"evil"), ("cats/ok.jpg", b"ok")])
    accepted, rejections = collect(patch_name(archive, placeholder, name.encode()))
    assert [n for _, n, _ in accepted] == ["ok.jpg"]
    assert list(rejections.values()) == [EntryReason.UNSAFE_PATH]


def test_symlink_entries_are_rejected() -> None:
    link = zipfile.ZipInfo("cats/passwd.jpg")
    link.create_system = 3
    link.external_attr = 0o120777 << 16
    fifo = zipfile.ZipInfo("cats/pipe.jpg")
    fifo.create_system = 3
    fifo.external_attr = 0o010644 << 16
    accepted, rejections = collect(make_zip([(link, b"/etc/passwd"), (fifo, b""), ("cats/1.jpg", b"1")]))
    assert [n for _, n, _ in accepted] == ["1.jpg"]
    assert rejections == {"cats/passwd.jpg": EntryReason.SYMLINK, "cats/pipe.jpg": EntryReason.SPECIAL_FILE}


def test_nested_archives_are_rejected() -> None:
    inner = make_zip({"a/1.jpg": b"1"})
    _, rejections = collect(make_zip({"cats/more.zip": inner, "cats/more.tar.gz": b"x", "cats/1.jpg": b"1"}))
    assert rejections == {"cats/more.zip": EntryReason.NESTED_ARCHIVE, "cats/more.tar.gz": EntryReason.NESTED_ARCHIVE}


def test_encrypted_and_unsupported_entries_are_rejected() -> None:
    archive = make_zip({"cats/locked.jpg": b"x", "cats/1.jpg": b"1", "cats/odd.jpg": b"y"})
    archive = patch_central(archive, "cats/locked.jpg", set_flags=0x1)
    data = bytearray(archive)  # compression method 99 (AES) on "odd.jpg", central header only
    central = data.find(b"PK\x01\x02")
    while data[central + 46 : central + 46 + 12] != b"cats/odd.jpg":
        central = data.find(b"PK\x01\x02", central + 4)
    data[central + 10 : central + 12] = (99).to_bytes(2, "little")
    accepted, rejections = collect(bytes(data))
    assert rejections == {"cats/locked.jpg": EntryReason.ENCRYPTED, "cats/odd.jpg": EntryReason.UNSUPPORTED_COMPRESSION}
    assert [n for _, n, _ in accepted] == ["1.jpg"]


def test_utf8_names_without_the_flag_are_decoded() -> None:
    archive = patch_central(make_zip({"café/1.jpg": b"1"}), "café/1.jpg", clear_utf8_flag=True)
    assert zipfile.ZipFile(io.BytesIO(archive)).namelist() != ["café/1.jpg"]  # mojibake by default
    accepted, _ = collect(archive)
    assert accepted[0][0] == "café"


def test_overlong_labels_are_rejected() -> None:
    _, rejections = collect(make_zip({("x" * 101) + "/1.jpg": b"1", "ok/2.jpg": b"2"}))
    assert list(rejections.values()) == [EntryReason.BAD_LABEL]


# ---- size, ratio and count caps ------------------------------------------------------------------


def test_ratio_bomb_is_rejected_without_reading_it() -> None:
    zeros = bytes(60 * 1024 * 1024)
    archive = make_zip({"cats/bomb.bmp": zeros, "cats/1.jpg": JPEG})
    del zeros
    assert len(archive) < 200_000
    limits = ArchiveLimits(max_entry_bytes=100 * 1024 * 1024)  # so that the ratio is what trips
    accepted, rejections = collect(archive, limits=limits)
    assert rejections == {"cats/bomb.bmp": EntryReason.SUSPICIOUS_RATIO}
    assert [n for _, n, _ in accepted] == ["1.jpg"]
    _, rejections = collect(archive)  # default limits: bigger than the per-file cap
    assert rejections == {"cats/bomb.bmp": EntryReason.TOO_LARGE}


def test_small_compressible_entries_are_fine() -> None:
    accepted, rejections = collect(make_zip({"blank/1.bmp": bytes(500_000)}))
    assert rejections == {} and len(accepted[0][2]) == 500_000


def test_a_header_lying_about_the_size_cannot_make_an_entry_bigger() -> None:
    """The directory claims 1,000 bytes; the data inflates to 10 MB. The zip reader stops at
    the declared size and the CRC then fails: at most the declared bytes are ever produced."""
    archive = patch_sizes(make_zip({"cats/liar.jpg": bytes(10 * 1024 * 1024)}), "cats/liar.jpg", file_size=1000)
    limits = ArchiveLimits(max_entry_bytes=1024 * 1024)
    produced = 0
    for item in iter_zip(io.BytesIO(archive), limits=limits):
        assert isinstance(item, ArchiveEntry)
        with pytest.raises(EntryRejected) as info:
            while chunk := item.stream.read(4096):
                produced += len(chunk)
        assert info.value.rejection.code == EntryReason.CORRUPT
    assert produced <= 1000


class Endless(io.RawIOBase):
    """A decompressor that ignores every declared size: what the stream caps are for."""

    def __init__(self) -> None:
        self.produced = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.produced += size
        return bytes(size)


def test_entry_stream_enforces_the_per_entry_cap_while_streaming() -> None:
    limits = ArchiveLimits(max_entry_bytes=3 * 1024 * 1024, max_ratio=10**9)
    raw = Endless()
    stream = _EntryStream(raw, "cats/x.jpg", limits, _TotalBudget(limits), compressed=1)
    with pytest.raises(EntryRejected) as info:
        stream.read()
    assert info.value.rejection.code == EntryReason.TOO_LARGE
    assert raw.produced <= limits.max_entry_bytes + 1024 * 1024  # at most one chunk past the cap
    with pytest.raises(EntryRejected):
        stream.read(10)  # stays failed


def test_entry_stream_enforces_the_ratio_while_streaming() -> None:
    limits = ArchiveLimits(max_ratio=100, ratio_grace_bytes=1024 * 1024)
    raw = Endless()
    stream = _EntryStream(raw, "cats/x.jpg", limits, _TotalBudget(limits), compressed=60_000)
    with pytest.raises(EntryRejected) as info:
        while stream.read(65536):
            pass
    assert info.value.rejection.code == EntryReason.SUSPICIOUS_RATIO
    assert raw.produced <= 100 * 60_000 + 65536


def test_entry_streams_share_the_total_budget() -> None:
    limits = ArchiveLimits(max_total_bytes=5 * 1024 * 1024, max_ratio=10**9)
    budget = _TotalBudget(limits)
    first = _EntryStream(Endless(), "a/1", limits, budget, compressed=1)
    for _ in range(4):
        first.read(1024 * 1024)
    second = _EntryStream(Endless(), "a/2", limits, budget, compressed=1)
    with pytest.raises(ArchiveRejected) as info:
        for _ in range(2):
            second.read(1024 * 1024)
    assert info.value.code == ArchiveReason.TOO_LARGE


def test_declared_total_over_the_cap_refuses_the_archive() -> None:
    archive = make_zip({f"cats/{i}.jpg": bytes(300_000) for i in range(4)})
    with pytest.raises(ArchiveRejected) as info:
        collect(archive, limits=ArchiveLimits(max_total_bytes=1_000_000))
    assert info.value.code == ArchiveReason.TOO_LARGE
    assert "GB" in info.value.sentence


def test_entry_count_cap_refuses_the_archive_before_reading() -> None:
    archive = make_zip({f"cats/{i}.jpg": b"x" for i in range(11)})
    with pytest.raises(ArchiveRejected) as info:
        next(iter_zip(io.BytesIO(archive), limits=ArchiveLimits(max_entries=10)))
    assert info.value.code == ArchiveReason.TOO_MANY_ENTRIES
    assert collect(archive, limits=ArchiveLimits(max_entries=11))[1] == {}


def test_junk_counts_towards_the_entry_cap() -> None:
    archive = make_zip({**{f"__MACOSX/{i}": b"" for i in range(10)}, "cats/1.jpg": b"1"})
    with pytest.raises(ArchiveRejected):
        collect(archive, limits=ArchiveLimits(max_entries=10))


def test_overlapping_entries_refuse_the_archive() -> None:
    archive = make_zip({"cats/1.jpg": bytes(5000), "cats/2.jpg": bytes(5000)})
    with pytest.raises(ArchiveRejected) as info:
        collect(patch_central(archive, "cats/2.jpg", offset=0))
    assert info.value.code == ArchiveReason.CORRUPT


# ---- broken archives and entries -----------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"not a zip at all", jpeg_bytes()])
def test_not_a_zip(data: bytes) -> None:
    with pytest.raises(ArchiveRejected) as info:
        collect(data)
    assert info.value.code == ArchiveReason.NOT_A_ZIP
    assert info.value.sentence == "This file is not a zip archive."


def test_truncated_archive() -> None:
    archive = make_zip({f"cats/{i}.jpg": JPEG for i in range(5)})
    with pytest.raises(ArchiveRejected) as info:
        collect(archive[: len(archive) - 60])
    assert info.value.code in (ArchiveReason.NOT_A_ZIP, ArchiveReason.CORRUPT)


def test_damaged_entry_data_rejects_only_that_entry() -> None:
    archive = bytearray(make_zip([("cats/1.jpg", jpeg_bytes(64, 64)), ("cats/2.jpg", JPEG)]))
    archive[80:120] = bytes(40)  # inside the first entry's compressed data
    accepted, rejections = collect(bytes(archive))
    assert rejections == {"cats/1.jpg": EntryReason.CORRUPT}
    assert [n for _, n, _ in accepted] == ["2.jpg"]


def test_streams_are_closed_when_iteration_moves_on() -> None:
    entries = list(iter_zip(io.BytesIO(make_zip({"a/1.jpg": b"1", "b/2.jpg": b"2"}))))
    assert all(isinstance(e, ArchiveEntry) and e.stream.closed for e in entries)


def test_an_entry_rejected_mid_stream_leaves_no_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", fsync=False)
    archive = patch_sizes(make_zip({"cats/liar.jpg": bytes(2 * 1024 * 1024)}), "cats/liar.jpg", file_size=1000)
    for item in iter_zip(io.BytesIO(archive)):
        assert isinstance(item, ArchiveEntry)
        with pytest.raises(EntryRejected):
            store.put_stream(item.stream)
    assert list(store.iter_blobs()) == []


def test_real_dataset_archive(hymenoptera_zip: Path, tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", fsync=False)
    counts: dict[str, int] = {}
    for item in iter_zip(hymenoptera_zip):
        assert isinstance(item, ArchiveEntry), item
        ref = store.put_stream(item.stream)
        counts[item.label] = counts.get(item.label, 0) + 1
        if counts[item.label] <= 3 or item.filename.endswith(".gif"):
            path = store.local_path(ref.sha256)
            assert path is not None
            assert min(decode_for_model(path, 64).image.size) >= 8
    assert set(counts) == {"ants", "bees"} and sum(counts.values()) == 245
