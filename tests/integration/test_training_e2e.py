"""The whole product on one machine: a real server (API + dispatcher + Ray), real photos, real training.

Upload a tiny real dataset, press Train, get a served version with metrics within the budget, predict
over HTTP, export the ONNX file and get the same answers in-process, then add a class in seconds.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pigeonhole.client import Client
from pigeonhole.serving.model import load_model, split_answers
from pigeonhole.serving.preprocess import pixels_for
from pigeonhole.storage.images import ImageLimits
from tests.conftest import SHARED_DIR
from tests.integration.live_server import LiveServer, start_live_server

pytestmark = pytest.mark.slow
HYMENOPTERA = SHARED_DIR / "datasets" / "hymenoptera"
FLOWERS = SHARED_DIR / "datasets" / "flowers5"


def _extract(zip_path: Path, root: Path, per_class: int, classes: set[str] | None = None) -> Path:
    with zipfile.ZipFile(zip_path) as archive:
        counts: dict[str, int] = {}
        for name in sorted(archive.namelist()):
            parts = [p for p in name.split("/") if p]
            if name.endswith("/") or len(parts) < 2 or not name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            label = parts[-2]
            if (classes and label not in classes) or counts.get(label, 0) >= per_class:
                continue
            counts[label] = counts.get(label, 0) + 1
            (root / label).mkdir(parents=True, exist_ok=True)
            (root / label / parts[-1]).write_bytes(archive.read(name))
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    if not (HYMENOPTERA / "train.zip").exists():
        pytest.skip(f"shared dataset missing: {HYMENOPTERA}")
    live = start_live_server(tmp_path_factory.mktemp("e2e-server"),
                             extra_env={"PIGEONHOLE_WEIGHTS_DIR": str(SHARED_DIR / "weights")}, timeout_s=180)
    yield live
    assert live.stop() == 0


def test_train_predict_export_and_grow(server: LiveServer, tmp_path: Path) -> None:
    photos = _extract(HYMENOPTERA / "train.zip", tmp_path / "insects", per_class=12)
    _extract(FLOWERS / "train.zip", tmp_path / "insects", per_class=12, classes={"daisy"})
    with Client(server.base, server.signup_token()) as pgh:
        dataset = pgh.create_dataset("insects")
        assert pgh.upload_folder(dataset["id"], photos).accepted == 36
        model = pgh.create_model("insects", dataset["id"], classes=["ants", "bees"], time_budget_s=20,
                                 preference="fast")
        pressed = time.monotonic()
        job = pgh.wait_for_job(model["job_id"], poll_s=1, timeout_s=240)
        assert job["status"] == "succeeded", (job["error"], job["log_tail"][-3000:])
        current = pgh.get_model(model["id"])
        assert current["status"] == "ready" and current["active_version"] is not None
        version = pgh.get_version(model["id"], current["active_version"])
        assert 0 <= version["metrics"]["accuracy"] <= 1 and "confusion" in str(version["metrics"]).lower()
        assert version["input"]["dtype"] == "uint8" and version["size_bytes"] > 0
        # how an image becomes the input, as the chosen candidate was trained and the exported file records it
        assert version["input"]["crop"] == version["lineage"]["candidate"]["config"]["crop"]
        assert time.monotonic() - pressed < 200

        probe = sorted((photos / "bees").iterdir())[:3] + sorted((photos / "ants").iterdir())[:3]
        answer = pgh.predict(model["id"], probe, top_k=2)
        exported = tmp_path / "insects.onnx"
        pgh.export_model(model["id"], current["active_version"], exported)
        local = load_model(exported.read_bytes())
        assert local.crop == version["input"]["crop"]
        probs, familiar, _ = split_answers(
            local, local.run(np.stack([pixels_for(local, p.read_bytes(), ImageLimits()) for p in probe])))
        for row, fam, prediction in zip(probs, familiar, answer["predictions"], strict=True):
            by_label = {t["label"]: t["confidence"] for t in prediction["top"]}
            assert all(abs(by_label[c] - float(p)) < 1e-4 for c, p in zip(local.classes, row, strict=True))
            # the downloaded file says "unknown" for exactly the images the service does
            assert (prediction["label"] is None) == (float(fam) < local.threshold)

        started = time.monotonic()
        change = pgh.add_classes(model["id"], ["daisy"])
        grown = pgh.wait_for_job(change["job_id"], poll_s=0.2, timeout_s=120)
        seconds = time.monotonic() - started
        assert grown["status"] == "succeeded", grown
        assert pgh.get_model(model["id"])["classes"] == [*version["classes"], "daisy"]
        bigger = pgh.get_model(model["id"])["active_version"]
        assert pgh.get_version(model["id"], bigger)["input"] == version["input"]
        print(f"\nfirst training: {job['result']}\nadded a class in {seconds:.1f} s")
