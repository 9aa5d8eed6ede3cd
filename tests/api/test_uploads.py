"""Hostile and broken uploads: each is refused with a reason and the dataset stays byte-for-byte intact.

Also: export round-trips through upload, quotas, blob sweeping after deletion, thumbnail rebuilds.
"""

from __future__ import annotations

import io
import zipfile

import pytest

from pigeonhole.datasets.service import MISSING_FILE, export_zip
from pigeonhole.storage.blob_types import BlobMissing
from pigeonhole.storage.blobs import BlobStore
from tests.api.conftest import Account
from tests.api.datasets_helpers import all_images, snapshot, upload
from tests.conftest import SHARED_DIR
from tests.factories import jpeg_bytes, make_zip, png_bytes, png_from_rows, png_header_only


@pytest.fixture
def seeded(alice: Account) -> str:
    """A dataset holding a few good images, whose content must survive every bad upload."""
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "Precious"}).json()["id"]
    result = upload(alice, dataset_id, [("c1.jpg", jpeg_bytes(seed=1)), ("c2.png", png_bytes(seed=2))], label="cats")
    assert result.json()["accepted"] == 2
    assert upload(alice, dataset_id, [("d.zip", make_zip({"dogs/1.png": png_bytes(seed=3)}))]).json()["accepted"] == 1
    return dataset_id


def _bomb_png() -> bytes:
    # 20000 x 20000 RGBA of zeros (1.6 GB decoded) compressed to a few hundred KB.
    return png_from_rows(20_000, 20_000, 8, 6, b"\x00" * (20_000 * 4 + 1))


def _zip_with(names_and_data: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in names_and_data:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return out.getvalue()


def _symlink_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        info = zipfile.ZipInfo("cats/link.png")
        info.external_attr = (0o120777 << 16)  # a symbolic link entry
        archive.writestr(info, "/etc/passwd")
    return out.getvalue()


TRUNCATED_JPEG = jpeg_bytes(128, 128, seed=9)[:600]

BAD_FILES = {
    "corrupt jpeg": ([("broken.jpg", TRUNCATED_JPEG)], "cats", "truncated"),
    "text named png": ([("notes.png", b"these are my holiday notes, not a picture\n" * 20)], "cats", "not_an_image"),
    "bomb png": ([("bomb.png", _bomb_png())], "cats", "decompression_bomb"),
    "huge dimensions tiny file": ([("giant.png", png_header_only(100_000, 100_000))], "cats", None),
    "zero bytes": ([("empty.jpg", b"")], "cats", "empty_file"),
    "tiny image": ([("dot.png", png_bytes(size=2))], "cats", "too_small"),
    "zip slip": ([("evil.zip", _zip_with([("../evil.png", png_bytes(seed=11))]))], None, "unsafe_path"),
    "zip absolute path": ([("abs.zip", _zip_with([("/etc/cats/x.png", png_bytes(seed=12))]))], None, "unsafe_path"),
    "zip drive letter": ([("drive.zip", _zip_with([("C:/cats/x.png", png_bytes(seed=13))]))], None, "unsafe_path"),
    "zip symlink": ([("link.zip", _symlink_zip())], None, "symlink"),
    "zip ratio bomb": ([("ratio.zip", _zip_with([("cats/zeros.png", b"\x00" * (30 * 1024 * 1024))]))], None,
                       "suspicious_ratio"),
    "empty zip": ([("empty.zip", make_zip({}))], None, None),
    "corrupt zip": ([("bad.zip", b"PK\x03\x04" + b"\x00" * 100)], None, None),
    "no label": ([("lonely.png", png_bytes(seed=14))], None, "no_label"),
    "bad label": ([("x.png", png_bytes(seed=15))], "../etc", "invalid_label"),
}


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_bad_files_are_rejected_with_a_reason_and_nothing_changes(alice: Account, seeded: str, case: str) -> None:
    files, label, code = BAD_FILES[case]
    before = snapshot(alice, seeded)
    response = upload(alice, seeded, files, label=label)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["accepted"] == 0 and body["rejected"], body
    for rejection in body["rejected"]:
        assert rejection["reason"].endswith(".") and len(rejection["reason"]) > 15
    if code:
        assert code in {r["code"] for r in body["rejected"]}, body
    assert snapshot(alice, seeded) == before


def test_good_files_in_a_bad_batch_are_kept(alice: Account, seeded: str) -> None:
    before = snapshot(alice, seeded)
    mixed = upload(alice, seeded, [("ok.png", png_bytes(seed=20)), ("bad.jpg", TRUNCATED_JPEG),
                                   ("ok2.png", png_bytes(seed=21))], label="cats")
    assert mixed.json()["accepted"] == 2 and [r["name"] for r in mixed.json()["rejected"]] == ["bad.jpg"]
    after = snapshot(alice, seeded)
    assert set(before) < set(after) and len(after) == len(before) + 2


def test_request_level_problems_are_4xx_and_change_nothing(app, alice: Account, seeded: str) -> None:
    before = snapshot(alice, seeded)
    url = f"/api/v1/datasets/{seeded}/uploads"
    assert alice.client.post(url, json={"files": ["x"]}).status_code == 422  # wrong content type
    assert alice.client.post(url, data={"label": "cats"}).status_code == 422  # no files at all
    app.state.settings.max_upload_bytes = 50_000
    too_big = upload(alice, seeded, [("big.jpg", jpeg_bytes(400, 400, seed=30))], label="cats")
    assert too_big.status_code == 413 and too_big.json()["code"] == "payload_too_large"
    assert snapshot(alice, seeded) == before


def test_oversized_single_image_is_rejected(app, alice: Account, seeded: str) -> None:
    app.state.settings.max_image_bytes = 10_000
    result = upload(alice, seeded, [("big.jpg", jpeg_bytes(400, 400, seed=31))], label="cats").json()
    assert result["rejected"][0]["code"] == "file_too_large"


def test_export_then_upload_again_gives_the_same_classes_and_hashes(alice: Account, seeded: str) -> None:
    upload(alice, seeded, [("same name.png", png_bytes(seed=40)), ("same name.jpg", jpeg_bytes(seed=41))],
           label="cats")
    exported = alice.client.get(f"/api/v1/datasets/{seeded}/export")
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/zip"
    assert 'filename="Precious.zip"' in exported.headers["content-disposition"]
    copy_id = alice.client.post("/api/v1/datasets", json={"name": "Copy"}).json()["id"]
    result = upload(alice, copy_id, [("Precious.zip", exported.content)]).json()
    assert result["rejected"] == [] and result["accepted"] == 5
    original = sorted((i["label"], i["sha256"]) for i in all_images(alice, seeded))
    copied = sorted((i["label"], i["sha256"]) for i in all_images(alice, copy_id))
    assert original == copied


def test_export_sends_each_image_as_it_is_read(app, alice: Account, seeded: str) -> None:
    """A million-image export must not be built whole before its first byte: the zip streams image by image."""
    opened: list[str] = []
    store: BlobStore = app.state.blob_store

    class Counting:
        def open_blob(self, sha256: str, size: int):  # type: ignore[no-untyped-def]
            opened.append(sha256)
            return store.open_blob(sha256, size)

    chunks = export_zip(app.state.session_factory, Counting(), alice.id, seeded)  # type: ignore[arg-type]
    first = next(chunks)
    assert first.startswith(b"PK") and len(opened) == 1
    whole = first + b"".join(chunks)
    with zipfile.ZipFile(io.BytesIO(whole)) as archive:
        assert len(archive.namelist()) == len(opened) == len(all_images(alice, seeded)) > 1
        assert archive.testzip() is None


def test_an_export_lists_the_images_storage_lost(app, alice: Account, seeded: str) -> None:
    """Once the download has started no error status can be sent: an image whose file is gone is named in the
    archive instead, and the rest arrives whole."""
    images = all_images(alice, seeded)
    store: BlobStore = app.state.blob_store
    lost = images[0]["sha256"]

    class Losing:
        def open_blob(self, sha256: str, size: int):  # type: ignore[no-untyped-def]
            if sha256 == lost:
                raise BlobMissing(f"blob {sha256} is missing")
            return store.open_blob(sha256, size)

    whole = b"".join(export_zip(app.state.session_factory, Losing(), alice.id, seeded))  # type: ignore[arg-type]
    with zipfile.ZipFile(io.BytesIO(whole)) as archive:
        names = archive.namelist()
        assert MISSING_FILE in names and len(names) == len(images)  # the others, and the note
        assert lost[:10] in archive.read(MISSING_FILE).decode()


def test_real_photos_from_a_shared_archive(alice: Account) -> None:
    source = SHARED_DIR / "datasets" / "hymenoptera" / "val.zip"
    if not source.exists():
        pytest.skip(f"shared dataset missing: {source}")
    # A small archive of real photos (and the set's GIF placeholder, if present) in its original layout.
    with zipfile.ZipFile(source) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        picked = [n for n in names if "/ants/" in f"/{n}"][:6] + [n for n in names if "/bees/" in f"/{n}"][:6]
        small = make_zip({n: archive.read(n) for n in picked})
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "Insects"}).json()["id"]
    result = upload(alice, dataset_id, [("insects.zip", small)]).json()
    assert result["accepted"] + len(result["rejected"]) == 12 and result["accepted"] >= 10
    classes = alice.client.get(f"/api/v1/datasets/{dataset_id}").json()["classes"]
    assert {c["name"] for c in classes} == {"ants", "bees"}


def test_quota_stops_uploads_with_a_clear_reason(app, alice: Account, bob: Account) -> None:
    app.state.settings.quota_images_per_user = 3
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "Q"}).json()["id"]
    result = upload(alice, dataset_id, [(f"{i}.png", png_bytes(seed=60 + i)) for i in range(5)], label="cats").json()
    assert result["accepted"] == 3 and {r["code"] for r in result["rejected"]} == {"quota_exceeded"}
    assert "quota" in result["rejected"][0]["reason"]
    bobs = bob.client.post("/api/v1/datasets", json={"name": "B"}).json()["id"]
    assert upload(bob, bobs, [("b.png", png_bytes(seed=70))], label="x").json()["accepted"] == 1  # per user
    app.state.settings.quota_images_per_user = 1000
    app.state.settings.quota_bytes_per_user = 1
    result = upload(alice, dataset_id, [("big.png", png_bytes(seed=80))], label="cats").json()
    assert result["rejected"][0]["code"] == "quota_exceeded"


def test_deleting_a_dataset_sweeps_only_unreferenced_blobs(app, alice: Account) -> None:
    app.state.blob_sweeper.grace_s = 0
    shared, only_here = png_bytes(seed=90), png_bytes(seed=91)
    keep = alice.client.post("/api/v1/datasets", json={"name": "keep"}).json()["id"]
    drop = alice.client.post("/api/v1/datasets", json={"name": "drop"}).json()["id"]
    upload(alice, keep, [("s.png", shared)], label="a")
    upload(alice, drop, [("s.png", shared), ("o.png", only_here)], label="a")
    blobs: BlobStore = app.state.blob_store
    shas = {i["original_name"]: i["sha256"] for i in all_images(alice, drop)}
    assert alice.client.delete(f"/api/v1/datasets/{drop}").status_code == 204
    app.state.blob_sweeper.run()
    assert blobs.exists(shas["s.png"]) and not blobs.exists(shas["o.png"])
    assert snapshot(alice, keep)  # the shared image still reads back intact


def test_thumbnails_are_rebuilt_after_eviction(app, alice: Account) -> None:
    dataset_id = alice.client.post("/api/v1/datasets", json={"name": "T"}).json()["id"]
    upload(alice, dataset_id, [(f"{i}.jpg", jpeg_bytes(300, 200, seed=100 + i)) for i in range(3)], label="a")
    cache = app.state.derived_cache
    assert cache.stats().entries == 3
    cache.clear()
    for image in all_images(alice, dataset_id):
        assert alice.client.get(image["thumbnail_url"]).status_code == 200
    assert cache.stats().entries == 3
    cache.max_bytes = 1  # a budget smaller than one thumbnail: entries are evicted, originals never are
    cache.evict()
    assert snapshot(alice, dataset_id)


def test_markup_hidden_in_a_picture_is_refused_but_the_same_letters_among_binary_bytes_are_not(
    alice: Account, seeded: str
) -> None:
    """A photo's compressed bytes hold ``<svg`` in some letter case by chance (about one 3 MB photo in 170): only
    markup followed by text, as any payload is, refuses the file; the chance letters keep the photo."""
    photo = jpeg_bytes(seed=30)
    straddling = jpeg_bytes(seed=31)
    straddling += b"\x00" * (1024 * 1024 - 3 - len(straddling))  # the marker across the scan's 1 MiB chunks
    chance = photo + b"<sVg\x93\x00\xf1\x1e\xc4\x7f\x02\xe8" + b"\xff\x00" * 40  # binary after it: a photo's luck
    payloads = [photo + b"<svg/onload=alert(1)>", photo + b"\x00<ScRiPt>fetch('//x')</script>",
                photo + b"<?php system($_GET['c']); ?>", straddling + b"<html><body>hi"]
    before = snapshot(alice, seeded)
    refused = upload(alice, seeded, [(f"p{i}.jpg", data) for i, data in enumerate(payloads)], label="cats").json()
    assert refused["accepted"] == 0 and {r["code"] for r in refused["rejected"]} == {"not_an_image"}, refused
    assert snapshot(alice, seeded) == before
    kept = upload(alice, seeded, [("lucky.jpg", chance)], label="cats").json()
    assert kept["accepted"] == 1 and not kept["rejected"], kept
