"""Helpers for dataset tests: upload files and take a byte-level snapshot of a dataset."""

from __future__ import annotations

import hashlib

from tests.api.conftest import Account


def upload(account: Account, dataset_id: str, files: list[tuple[str, bytes]], label: str | None = None,
           content_type: str = "application/octet-stream"):
    data = {"label": label} if label is not None else {}
    return account.client.post(f"/api/v1/datasets/{dataset_id}/uploads", data=data,
                               files=[("files", (name, content, content_type)) for name, content in files])


def all_images(account: Account, dataset_id: str) -> list[dict]:
    items, cursor = [], None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = account.client.get(f"/api/v1/datasets/{dataset_id}/images", params=params).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def snapshot(account: Account, dataset_id: str) -> list[tuple[str, str, str, int]]:
    """(label, sha256, split, size) of every image, after checking each stored file's bytes."""
    rows = []
    for image in all_images(account, dataset_id):
        content = account.client.get(f"/api/v1/datasets/{dataset_id}/images/{image['id']}/content")
        assert content.status_code == 200
        assert hashlib.sha256(content.content).hexdigest() == image["sha256"]
        rows.append((image["label"], image["sha256"], image["split"], image["size_bytes"]))
    return sorted(rows)
