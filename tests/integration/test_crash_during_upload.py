"""Fault injection: the server (its API processes too) is killed (SIGKILL) in the middle of a large upload.

After a restart, every image the database knows is readable and intact, no half-written file is
visible, and the server accepts the same upload again without duplicates.
"""

from __future__ import annotations

import io
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pigeonhole.db.engine import create_db_engine, create_session_factory
from pigeonhole.doctor import check
from pigeonhole.storage.blobs import BlobStore
from tests.integration.live_server import start_live_server

pytestmark = pytest.mark.slow
IMAGES = 800  # enough that the kill, after 100 are stored, lands mid-upload


def _archive(path: Path, images: int) -> None:
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(images):
            out = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(out, "PNG")
            archive.writestr(f"photos/class{i % 4}/{i:05d}.png", out.getvalue())


def test_kill_during_upload_leaves_consistent_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    archive = tmp_path / "big.zip"
    _archive(archive, IMAGES)
    server = start_live_server(data_dir)
    token = server.signup_token()
    headers = {"Authorization": f"Bearer {token}"}
    dataset = httpx.post(f"{server.base}/api/v1/datasets", json={"name": "crash"}, headers=headers).json()["id"]

    def upload() -> None:
        with archive.open("rb") as f, pytest.raises(httpx.HTTPError):
            httpx.post(f"{server.base}/api/v1/datasets/{dataset}/uploads", headers=headers, timeout=120,
                       files={"files": ("big.zip", f, "application/zip")})

    uploader = threading.Thread(target=upload)
    uploader.start()
    # wait until the server has committed some images, then kill it without warning
    engine = create_db_engine(f"sqlite:///{data_dir / 'pigeonhole.db'}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            if connection.exec_driver_sql("SELECT count(*) FROM images").scalar() >= 100:
                break
        time.sleep(0.05)
    server.crash()
    uploader.join(timeout=60)

    with engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT count(*) FROM images").scalar()
    assert 100 <= stored < IMAGES
    findings = check(create_session_factory(engine), BlobStore(str(data_dir / "blobs")), fix=False, grace_s=3600)
    assert findings.healthy, findings.lines()  # every recorded image has its complete file
    engine.dispose()

    again = start_live_server(data_dir)
    try:
        with archive.open("rb") as f:
            result = httpx.post(f"{again.base}/api/v1/datasets/{dataset}/uploads", headers=headers, timeout=300,
                                files={"files": ("big.zip", f, "application/zip")}).json()
        assert result["accepted"] + result["duplicates"] == IMAGES and result["duplicates"] == stored
        detail = httpx.get(f"{again.base}/api/v1/datasets/{dataset}", headers=headers).json()
        assert detail["image_count"] == IMAGES
    finally:
        again.stop()
