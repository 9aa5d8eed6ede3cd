"""A full disk: uploads stop with a clear reason, what was stored stays intact, and it works again once
space is freed. The blob store lives on a real, tiny filesystem (a tmpfs mounted for the test), so the
writes fail with the operating system's own "no space left on device", not a simulation of it.

Mounting needs root (CI runs as root); elsewhere the test is skipped with that reason.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pigeonhole.doctor import check
from pigeonhole.errors import StorageFull, is_storage_full
from pigeonhole.settings import Settings
from tests.api.conftest import Account
from tests.api.datasets_helpers import all_images, snapshot, upload
from tests.conftest import FAST_PASSWORDS

DISK_BYTES = 3 * 1024 * 1024


def _noise_png(seed: int, side: int = 200) -> bytes:
    """About 120 KB: random pixels do not compress."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tiny-disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root (CI runs as root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def settings(settings: Settings, tiny_disk: Path) -> Settings:
    """The usual test settings (SQLite and PostgreSQL), with the blob store on the tiny disk."""
    return settings.model_copy(update={"blob_url": str(tiny_disk / "blobs")})


def test_a_full_disk_stops_uploads_cleanly_and_loses_nothing(app, alice: Account, tiny_disk: Path) -> None:
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "photos"}).json()["id"]
    accepted_before_full = 0
    for start in range(0, 60, 6):  # several files per request, until the disk fills up mid-request
        files = [(f"p{i}.png", _noise_png(i)) for i in range(start, start + 6)]
        response = upload(alice, dataset_id, files, label="noise")
        assert response.status_code == 201, response.text
        body = response.json()
        accepted_before_full += body["accepted"]
        if body["rejected"]:
            break
    else:
        pytest.fail("the tiny disk never filled up")

    # The request that hit the full disk kept the files it stored, and reported the rest in plain words.
    assert {r["code"] for r in body["rejected"]} == {StorageFull.code}
    assert "run out of storage space" in body["rejected"][0]["reason"]
    assert body["accepted"] + len(body["rejected"]) == 6
    stored = snapshot(alice, dataset_id)  # every recorded image's bytes are read back and checked
    assert len(stored) == accepted_before_full
    assert not list((tiny_disk / "blobs").rglob("tmp/*")), "a half-written file was left behind"
    assert check(app.state.session_factory, app.state.blob_store, fix=False, grace_s=0).healthy

    # Later uploads are refused the same way while the disk is full, and change nothing.
    again = upload(alice, dataset_id, [("late.png", _noise_png(999))], label="noise").json()
    assert again["accepted"] == 0 and again["rejected"][0]["code"] == StorageFull.code
    assert snapshot(alice, dataset_id) == stored

    # Free space (delete some images): uploads work again.
    for image in all_images(alice, dataset_id)[:4]:
        assert alice.client.delete(f"/api/v1/datasets/{dataset_id}/images/{image['id']}").status_code == 204
    check(app.state.session_factory, app.state.blob_store, fix=True, grace_s=0)  # sweeps the freed files
    after = upload(alice, dataset_id, [("late.png", _noise_png(999))], label="noise").json()
    assert after["accepted"] == 1, after


def test_a_full_database_disk_answers_507_and_keeps_the_data(tiny_disk: Path, tmp_path: Path) -> None:
    """The SQLite file itself on the full disk: a write fails inside the database, the transaction rolls
    back, and the answer is a 507 with a sentence (not a 500); reads keep working and nothing is lost."""
    from fastapi.testclient import TestClient

    from pigeonhole.api.app import create_app

    local = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tiny_disk / 'db.sqlite'}",
                     blob_url=str(tiny_disk / "blobs"), secret_key="test-" + "k" * 40, **FAST_PASSWORDS)
    with TestClient(create_app(local), raise_server_exceptions=False) as client:
        signed_up = client.post("/api/v1/auth/signup", json={"email": "a@example.com", "password": "a long password"})
        assert signed_up.status_code == 201
        client.headers["X-CSRF-Token"] = client.cookies["pgh_csrf"]
        kept = client.post("/api/v1/datasets", json={"name": "kept"}).json()["id"]
        filler = tiny_disk / "filler"
        # Take every remaining byte of the disk, unbuffered: a buffered file would try its last block again when
        # closed and fail there, outside the loop.
        with filler.open("wb", buffering=0) as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
            except OSError:
                pass
        answers = [client.post("/api/v1/datasets", json={"name": f"new {i} " + "x" * 150}) for i in range(200)]
        failed = [a for a in answers if a.status_code != 201]
        assert failed, "the database never ran out of space"
        assert {a.status_code for a in failed} == {507}, [a.text for a in failed[:3]]
        assert failed[0].json()["code"] == "storage_full" and "storage space" in failed[0].json()["detail"]
        assert client.get(f"/api/v1/datasets/{kept}").status_code == 200
        filler.unlink()
        assert client.post("/api/v1/datasets", json={"name": "after"}).status_code == 201


def test_no_space_is_recognised_however_it_surfaces() -> None:
    import errno
    import sqlite3

    assert is_storage_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_storage_full(sqlite3.OperationalError("database or disk is full"))
    wrapped = RuntimeError("while saving")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert is_storage_full(wrapped)
    assert not is_storage_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_storage_full(ValueError("bad"))
