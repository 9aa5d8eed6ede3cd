"""Remote imports through the API and the import job, against a tiny HTTP server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import Account
from tests.api.datasets_helpers import all_images
from tests.api.models_helpers import run_job
from tests.factories import jpeg_bytes, png_bytes
from tests.local_http import local_http

IMAGES = {"/a.png": png_bytes(seed=1), "/b.jpg": jpeg_bytes(seed=2), "/c.png": png_bytes(seed=3)}


@pytest.fixture(scope="module")
def remote() -> Iterator[str]:
    with local_http({path: ("image/png", body) for path, body in IMAGES.items()}) as url:
        yield url


def test_import_fetches_stores_and_reports(app, alice: Account, remote: str, tmp_path: Path) -> None:
    settings = app.state.settings
    settings.fetch_allow_private, settings.fetch_timeout_s, settings.max_image_bytes = True, 1.5, 1_000_000
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "remote"}).json()["id"]
    items = [{"url": f"{remote}/a.png", "label": "cats"}, {"url": f"{remote}/b.jpg", "label": "cats"},
             {"url": f"{remote}/c.png", "label": "dogs"}, {"url": f"{remote}/a.png", "label": "cats"},
             {"url": f"{remote}/slow.png", "label": "dogs"}, {"url": f"{remote}/huge.png", "label": "dogs"},
             {"url": f"{remote}/missing.png", "label": "dogs"}]
    queued = alice.client.post(f"/api/v1/datasets/{dataset_id}/imports", json={"items": items})
    assert queued.status_code == 202 and queued.json()["kind"] == "import"
    result = run_job(app, queued.json()["id"], tmp_path)
    summary = result["summary"]
    assert summary["accepted"] == 3 and summary["duplicates"] == 1
    codes = sorted(r["code"] for r in summary["rejected"])
    assert codes == ["http_error", "timeout", "too_large"]
    stored = all_images(alice, dataset_id)
    assert sorted(i["label"] for i in stored) == ["cats", "cats", "dogs"]
    assert all(i["source_url"].startswith(remote) for i in stored)
    health = alice.client.get(f"/api/v1/datasets/{dataset_id}").json()["health"]
    assert health["unreadable_urls"] == 3


def test_private_addresses_are_refused_unless_allowed(app, alice: Account, remote: str, tmp_path: Path) -> None:
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "guarded"}).json()["id"]
    queued = alice.client.post(f"/api/v1/datasets/{dataset_id}/imports",
                               json={"items": [{"url": f"{remote}/a.png", "label": "cats"}]})
    result = run_job(app, queued.json()["id"], tmp_path)
    assert [r["code"] for r in result["summary"]["rejected"]] == ["private_address"]
    assert all_images(alice, dataset_id) == []


def test_bad_import_requests_are_4xx(alice: Account) -> None:
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "x"}).json()["id"]
    url = f"/api/v1/datasets/{dataset_id}/imports"
    assert alice.client.post(url, json={"items": []}).json()["code"] == "no_items"
    bad = alice.client.post(url, json={"items": [{"url": "file:///etc/passwd", "label": "a"}]})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_url"
    assert alice.client.post(url, json={"items": [{"url": "http://x.org/a.png", "label": "../a"}]}
                             ).json()["code"] == "invalid_label"
