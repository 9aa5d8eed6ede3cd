from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pigeonhole.storage.blob_types import (
    BlobCorrupt,
    BlobMissing,
    BlobRef,
    BlobTooLarge,
    InvalidKey,
    StorageUnavailable,
    blob_key,
)
from pigeonhole.storage.blobs import BlobStore

CONTENT = b"pigeonhole " * 1000
SHA = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield BlobStore(tmp_path / "blobs", fsync=False)
        return
    memory = BlobStore(f"memory://pgh-test-{uuid.uuid4().hex}/blobs")
    yield memory
    with contextlib.suppress(FileNotFoundError):
        memory.fs.rm(memory.root, recursive=True)


class ExplodingStream(io.RawIOBase):
    """Gives some bytes, then fails as a dropped connection or a killed client would."""

    def __init__(self, payload: bytes, fail_after: int) -> None:
        self._data = io.BytesIO(payload)
        self._fail_after = fail_after
        self._given = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._given >= self._fail_after:
            raise ConnectionResetError("client went away")
        chunk = self._data.read(min(size if size > 0 else 1 << 20, self._fail_after - self._given))
        self._given += len(chunk)
        return chunk


def temp_files(store: BlobStore) -> list[str]:
    try:
        return list(store.fs.find(store._path("tmp")))
    except FileNotFoundError:
        return []


def test_put_stream_is_content_addressed_and_sharded(store: BlobStore) -> None:
    ref = store.put_stream(io.BytesIO(CONTENT))
    assert ref == BlobRef(SHA, len(CONTENT))
    assert blob_key(SHA) == f"sha256/{SHA[:2]}/{SHA[2:4]}/{SHA}"
    assert store.fs.exists(store._path(blob_key(SHA)))
    assert store.read_blob(SHA, len(CONTENT)) == CONTENT
    assert [(b.sha256, b.size) for b in store.iter_blobs()] == [(SHA, len(CONTENT))]
    assert temp_files(store) == []


def test_put_file_hashes_while_copying_in_chunks(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", fsync=False, chunk_size=7)  # many chunks
    source = tmp_path / "photo.bin"
    source.write_bytes(CONTENT)
    assert store.put_file(source) == BlobRef(SHA, len(CONTENT))
    local = store.local_path(SHA)
    assert local is not None and local.read_bytes() == CONTENT


def test_writing_an_existing_blob_changes_nothing(store: BlobStore) -> None:
    first = store.put_stream(io.BytesIO(CONTENT))
    second = store.put_stream(io.BytesIO(CONTENT))
    assert first == second
    assert len(list(store.iter_blobs())) == 1
    assert store.read_blob(SHA, len(CONTENT)) == CONTENT
    assert temp_files(store) == []


def test_a_crash_mid_copy_leaves_no_visible_blob(store: BlobStore) -> None:
    with pytest.raises(ConnectionResetError):
        store.put_stream(ExplodingStream(CONTENT, fail_after=len(CONTENT) // 2))
    assert list(store.iter_blobs()) == []
    assert not store.exists(SHA)
    assert temp_files(store) == []  # the partial write was cleaned up too


def test_a_failed_rename_leaves_no_visible_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path / "blobs", fsync=False)

    def power_cut(src: str, dst: str) -> None:
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError, match="disk vanished"):
        store.put_stream(io.BytesIO(CONTENT))
    monkeypatch.undo()
    assert not store.exists(SHA)
    assert temp_files(store) == []


def test_a_killed_process_leaves_only_a_temp_file_that_cleanup_removes(tmp_path: Path) -> None:
    """kill -9 in the middle of a copy: no cleanup code runs, yet no blob is visible."""
    root = tmp_path / "blobs"
    script = textwrap.dedent(
        f"""
        import io, os
        from pigeonhole.storage.blobs import BlobStore

        class Dying(io.RawIOBase):
            calls = 0
            def readable(self): return True
            def read(self, size=-1):
                Dying.calls += 1
                if Dying.calls > 2:
                    os._exit(9)  # no finally, no except: like SIGKILL
                return b"x" * 1000

        BlobStore({str(root)!r}, chunk_size=1000).put_stream(Dying())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == 9, result.stderr.decode()
    store = BlobStore(root, fsync=False)
    assert list(store.iter_blobs()) == []
    leftovers = temp_files(store)
    assert len(leftovers) == 1 and leftovers[0].endswith(".part")
    assert store.cleanup_temp(older_than_s=3600) == 0  # too recent: could be a live writer
    assert store.cleanup_temp(older_than_s=0) == 1
    assert temp_files(store) == []


def test_max_size_stops_the_copy_and_leaves_nothing(store: BlobStore) -> None:
    with pytest.raises(BlobTooLarge):
        store.put_stream(io.BytesIO(CONTENT), max_size=100)
    assert list(store.iter_blobs()) == []
    assert temp_files(store) == []


def test_size_verification_detects_a_truncated_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", fsync=False)
    ref = store.put_stream(io.BytesIO(CONTENT))
    path = store.local_path(ref.sha256)
    assert path is not None
    path.write_bytes(CONTENT[:100])  # a disk that filled up during a restore
    with pytest.raises(BlobCorrupt, match="100 bytes but 11000"):
        store.open_blob(ref.sha256, ref.size)
    # Uploading the same content again repairs the damaged copy.
    store.put_stream(io.BytesIO(CONTENT))
    assert store.read_blob(ref.sha256, ref.size) == CONTENT


def test_verify_detects_same_size_damage(store: BlobStore) -> None:
    ref = store.put_stream(io.BytesIO(CONTENT))
    store.verify(ref.sha256, ref.size)
    damaged = bytearray(CONTENT)
    damaged[5] ^= 0xFF
    with store.fs.open(store._path(blob_key(ref.sha256)), "wb") as f:
        f.write(bytes(damaged))
    with pytest.raises(BlobCorrupt, match="does not match its hash"):
        store.verify(ref.sha256, ref.size)


def test_missing_blobs_raise_blob_missing(store: BlobStore) -> None:
    with pytest.raises(BlobMissing):
        store.open_blob(SHA, 10)
    with pytest.raises(BlobMissing):
        store.open("thumbs/none.webp")
    assert store.delete(SHA) is False


def test_delete(store: BlobStore) -> None:
    ref = store.put_stream(io.BytesIO(CONTENT))
    assert store.delete(ref.sha256) is True
    assert not store.exists(ref.sha256)
    assert list(store.iter_blobs()) == []


def test_memory_url_round_trip() -> None:
    store = BlobStore(f"memory://pgh-{uuid.uuid4().hex}")
    ref = store.put_stream(io.BytesIO(b"abc"))
    store.put_bytes(f"thumbs/{ref.sha256}.webp", b"thumb")
    assert store.read_blob(ref.sha256, 3) == b"abc"
    assert store.read_bytes(f"thumbs/{ref.sha256}.webp") == b"thumb"
    assert store.local_path(ref.sha256) is None  # decoders fall back to open_blob
    assert [b.sha256 for b in store.iter_blobs()] == [ref.sha256]  # derived keys are not blobs
    store.check()
    store.fs.rm(store.root, recursive=True)


def test_file_url_and_plain_path_are_the_same_store(tmp_path: Path) -> None:
    by_url = BlobStore(f"file://{tmp_path / 'blobs'}", fsync=False)
    assert by_url.is_local
    ref = by_url.put_stream(io.BytesIO(CONTENT))
    assert BlobStore(tmp_path / "blobs").read_blob(ref.sha256, ref.size) == CONTENT


def test_derived_artifacts_are_written_atomically_and_overwritable(store: BlobStore) -> None:
    key = "models/01jabc/3/model.onnx"
    assert not store.key_exists(key)
    store.put_bytes(key, b"v1")
    store.put_object(key, io.BytesIO(b"v2"))
    assert store.read_bytes(key) == b"v2"
    with pytest.raises(ConnectionResetError):
        store.put_object("models/01jabc/4/model.onnx", ExplodingStream(CONTENT, 10))
    assert not store.key_exists("models/01jabc/4/model.onnx")
    assert store.delete_key(key) is True
    assert store.delete_key(key) is False


@pytest.mark.parametrize(
    "key",
    [
        "../escape",
        "thumbs/../../etc/passwd",
        "/abs/path",
        "thumbs//x",
        ".hidden/x",
        "thumbs/a\\b",
        "sha256/ab/cd/x",
        "tmp/x.part",
        "",
        "thumbs/",
    ],
)
def test_unsafe_or_reserved_keys_are_refused(store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put_bytes(key, b"x")


@pytest.mark.parametrize("sha", ["ABC", "0" * 63, "../" + "0" * 61, "g" * 64])
def test_malformed_hashes_are_refused(store: BlobStore, sha: str) -> None:
    with pytest.raises(InvalidKey):
        store.open_blob(sha, 1)


def test_check_passes_and_leaves_nothing_behind(store: BlobStore) -> None:
    assert store.check() is None
    assert temp_files(store) == []


def test_check_explains_why_storage_is_unusable(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", fsync=False)
    (tmp_path / "blobs" / "tmp").write_text("a file where the temp folder should be")
    with pytest.raises(StorageUnavailable, match="cannot write to the blob store"):
        store.check()


def test_sweep_deletes_only_old_unreferenced_blobs(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", fsync=False)
    kept = store.put_stream(io.BytesIO(b"referenced"))
    old = store.put_stream(io.BytesIO(b"orphan, old"))
    young = store.put_stream(io.BytesIO(b"orphan, just uploaded"))
    day_ago = time.time() - 2 * 24 * 3600
    for ref in (kept, old):
        path = store.local_path(ref.sha256)
        assert path is not None
        os.utime(path, (day_ago, day_ago))
    result = store.sweep({kept.sha256}, min_age_s=24 * 3600)
    assert (result.deleted, result.freed_bytes, result.kept_recent) == (1, old.size, 1)
    assert store.exists(kept.sha256) and store.exists(young.sha256) and not store.exists(old.sha256)


def test_a_dedup_hit_protects_the_blob_from_the_sweep(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", fsync=False)
    ref = store.put_stream(io.BytesIO(CONTENT))
    path = store.local_path(ref.sha256)
    assert path is not None
    os.utime(path, (0, 0))
    store.put_stream(io.BytesIO(CONTENT))  # re-uploaded: its row is about to be committed
    assert store.sweep(set(), min_age_s=3600).deleted == 0


def test_iter_blobs_skips_stray_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", fsync=False)
    ref = store.put_stream(io.BytesIO(CONTENT))
    stray = tmp_path / "blobs" / "sha256" / "00" / "00" / ("f" * 64)  # not where its hash says
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"x")
    (tmp_path / "blobs" / "sha256" / "README").write_text("x")
    assert [b.sha256 for b in store.iter_blobs()] == [ref.sha256]
