from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pigeonhole.storage.cache import DiskCache


def entries(cache: DiskCache) -> set[str]:
    return {p.relative_to(cache.root).as_posix() for p in cache.root.rglob("*") if p.is_file()}


def test_round_trip(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", 10_000)
    path = cache.put_bytes("features/mnv3/abc.npy", b"vector")
    assert path == tmp_path / "cache" / "features" / "mnv3" / "abc.npy"
    assert cache.get_bytes("features/mnv3/abc.npy") == b"vector"
    assert "features/mnv3/abc.npy" in cache
    assert cache.get("features/mnv3/missing.npy") is None
    assert cache.delete("features/mnv3/abc.npy") and not cache.delete("features/mnv3/abc.npy")


def test_evicts_least_recently_used_under_budget(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", 1000, low_water=1.0)
    for key in ("a", "b", "c"):
        cache.put_bytes(key, bytes(300))
    assert cache.get("a") is not None  # "a" is now more recent than "b" and "c"
    cache.put_bytes("d", bytes(300))  # 1200 bytes > 1000: the oldest ("b") goes
    assert entries(cache) == {"a", "c", "d"}
    assert cache.stats().bytes == 900


def test_eviction_goes_down_to_the_low_water_mark(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", 1000, low_water=0.5)
    for i in range(4):
        cache.put_bytes(f"k{i}", bytes(250))
    assert len(entries(cache)) == 4  # exactly at the budget
    cache.put_bytes("k4", bytes(250))  # over 1000: evict down to 500
    assert entries(cache) == {"k3", "k4"}


def test_recency_is_set_explicitly_not_left_to_the_mount_options(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", 1000, low_water=1.0)
    cache.put_bytes("old", bytes(400))
    cache.put_bytes("new", bytes(400))
    os.utime(cache.path_for("new"), (1, 1))  # as if "new" had not been read for decades
    cache.get("old")
    cache.put_bytes("third", bytes(400))
    assert entries(cache) == {"old", "third"}


def test_an_entry_bigger_than_the_budget_is_not_kept(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", 1000)
    cache.put_bytes("small", b"x")
    cache.put_bytes("huge", b"old value")
    assert cache.put_bytes("huge", bytes(2000)) is None
    assert entries(cache) == {"small"}  # and the stale value is gone too


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", 10_000)
    with pytest.raises(RuntimeError), cache.writer("pixels/abc.npy") as f:
        f.write(b"half of it")
        raise RuntimeError("worker killed")
    assert entries(cache) == set()


def test_writes_are_atomic_replacements(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", 10_000)
    cache.put_bytes("k", b"first")
    with cache.writer("k") as f:
        f.write(b"sec")
        assert cache.get_bytes("k") == b"first"  # readers see the old value until the end
        f.write(b"ond")
    assert cache.get_bytes("k") == b"second"


def test_temp_files_are_not_entries_and_stale_ones_are_removed(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", 10_000)
    cache.put_bytes("k", b"v")
    live = cache.root / ".tmp-live"
    stale = cache.root / ".tmp-stale"
    live.write_bytes(bytes(100))
    stale.write_bytes(bytes(100))
    day_ago = time.time() - 24 * 3600
    os.utime(stale, (day_ago, day_ago))
    assert cache.stats().entries == 1
    assert live.exists() and not stale.exists()


def test_processes_sharing_a_directory_respect_one_budget(tmp_path: Path) -> None:
    one = DiskCache(tmp_path / "cache", 1000, low_water=1.0)
    two = DiskCache(tmp_path / "cache", 1000, low_water=1.0, rescan_interval_s=0)
    one.put_bytes("a", bytes(400))
    one.put_bytes("b", bytes(400))
    two.put_bytes("c", bytes(400))  # "two" rescans and sees what "one" wrote
    assert cache_size(tmp_path / "cache") <= 1000
    assert one.get_bytes("a") is None and one.get_bytes("c") is not None


def cache_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", ".hidden", "a/.tmp-x", "a\\b", ""])
def test_unsafe_keys_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        DiskCache(tmp_path / "cache", 1000).put_bytes(key, b"x")


def test_clear(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", 1000)
    cache.put_bytes("a/b", b"x")
    cache.clear()
    assert cache.stats().entries == 0
