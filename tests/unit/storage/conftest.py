"""Fixtures for storage tests: a few real photos from the shared ants/bees set."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
SHARED_DIR = Path(os.environ.get("PIGEONHOLE_SHARED_DIR", REPO_ROOT.parent / "shared"))
HYMENOPTERA_TRAIN = SHARED_DIR / "datasets" / "hymenoptera" / "train.zip"


@pytest.fixture(scope="session")
def hymenoptera_zip() -> Path:
    if not HYMENOPTERA_TRAIN.is_file():
        pytest.skip(f"shared dataset not found: {HYMENOPTERA_TRAIN}")
    return HYMENOPTERA_TRAIN


@pytest.fixture(scope="session")
def real_photos(hymenoptera_zip: Path) -> dict[str, bytes]:
    """The largest JPEG, two ordinary ones and the GIF placeholder, by archive name.

    Read-only bytes, so sharing them across tests cannot make tests depend on each other.
    """
    with zipfile.ZipFile(hymenoptera_zip) as zf:
        files = [i for i in zf.infolist() if not i.is_dir()]
        jpegs = sorted((i for i in files if i.filename.lower().endswith((".jpg", ".jpeg"))), key=lambda i: i.file_size)
        chosen = [jpegs[-1], jpegs[0], jpegs[len(jpegs) // 2]]
        chosen += [i for i in files if i.filename.lower().endswith(".gif")]
        return {i.filename: zf.read(i) for i in chosen}
