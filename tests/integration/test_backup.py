"""Backups: what `pigeonhole backup` saves, `pigeonhole restore` brings back, working, on a fresh install.

Each round trip seeds real data through the API, backs it up, restores it into an empty database
and blob store, and checks it through the API of a new app on the restored store: people sign in,
tokens work, images are byte-identical and the model predicts the same. SQLite always, PostgreSQL
(and SQLite <-> PostgreSQL) when ``PIGEONHOLE_TEST_POSTGRES_URL`` is set.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select, text

from pigeonhole.api.app import create_app
from pigeonhole.backup import BackupError, BackupSummary, create_backup
from pigeonhole.db.engine import create_db_engine, normalise_url
from pigeonhole.db.tables import ModelVersion
from pigeonhole.doctor import check
from pigeonhole.restore import restore_backup
from pigeonhole.settings import Settings
from tests.api.conftest import PASSWORD, Account
from tests.api.datasets_helpers import all_images, snapshot, upload
from tests.api.models_helpers import add_version, trainable_dataset
from tests.conftest import FAST_PASSWORDS, POSTGRES_URL
from tests.factories import jpeg_bytes, png_bytes
from tests.integration.live_server import PIGEONHOLE
from tests.model_factories import grey_png

# ---- stores ---------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL whose search_path is a fresh, empty schema (dropped afterwards)."""
    assert POSTGRES_URL
    schema = f"pgh_backup_{secrets.token_hex(4)}"
    admin = create_db_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    base = normalise_url(POSTGRES_URL)
    try:
        yield f"{base}{'&' if '?' in base else '?'}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def target(settings: Settings, database_url: str, tmp_path: Path) -> Iterator[Settings]:
    """An empty install on the same kind of database, sharing the source's secret key (as an operator would)."""
    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{tmp_path / 'restored.db'}" if database_url.startswith("sqlite")
               else stack.enter_context(postgres_schema()))
        yield Settings(data_dir=tmp_path / "restored", database_url=url, secret_key=settings.secret_key,
                       **FAST_PASSWORDS)


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[FastAPI]:
    app = create_app(settings)
    with TestClient(app):
        yield app


def table_names(settings: Settings) -> list[str]:
    engine = create_db_engine(settings.resolved_database_url)
    try:
        return inspect(engine).get_table_names()
    finally:
        engine.dispose()


def stored_files(settings: Settings) -> list[Path]:
    root = Path(settings.resolved_blob_url)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# ---- people and data ------------------------------------------------------------------------


def signup(app: FastAPI, email: str) -> Account:
    client = TestClient(app)
    response = client.post("/api/v1/auth/signup", json={"email": email, "password": PASSWORD})
    assert response.status_code == 201, response.text
    client.headers["X-CSRF-Token"] = client.cookies["pgh_csrf"]
    body = response.json()
    return Account(id=body["id"], email=email, is_admin=body["is_admin"], client=client)


def sign_in(app: FastAPI, email: str) -> Account:
    client = TestClient(app)
    response = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    client.headers["X-CSRF-Token"] = client.cookies["pgh_csrf"]
    body = response.json()
    return Account(id=body["id"], email=email, is_admin=body["is_admin"], client=client)


PROBES = [("dark.png", grey_png(40, 900)), ("bright.png", grey_png(210, 901))]


def predict(app: FastAPI, token: str, model_id: str) -> list[dict]:
    client = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    response = client.post(f"/api/v1/models/{model_id}/predict", params={"top_k": 2},
                           files=[("files", probe) for probe in PROBES])
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


@dataclass
class Seeded:
    emails: list[str]
    token: str
    manifest_key: str
    datasets: dict[str, list[tuple[str, str, str, int]]]  # id -> snapshot (label, sha256, split, size)
    model_id: str
    versions: list[dict]
    predictions: list[dict]


def seed(app: FastAPI) -> Seeded:
    """Two people, a token, two datasets (one image in both), a model with two versions (one growable)."""
    admin, alice = signup(app, "admin@example.com"), signup(app, "alice@example.com")
    token = alice.token()
    shades = trainable_dataset(alice)
    photos = alice.client.post("/api/v1/datasets", json={"name": "photos"}).json()["id"]
    assert upload(alice, photos, [("cat.jpg", jpeg_bytes(seed=1)), ("dog.png", png_bytes(seed=2)),
                                  ("d0.png", grey_png(40, 0))], label="pets").status_code == 201
    model_id = alice.client.post("/api/v1/models", json={"name": "shades", "dataset_id": shades}).json()["id"]
    add_version(app, model_id)
    add_version(app, model_id, growable=True)
    with app.state.session_factory() as db:  # a file no row names, kept with its version (as training does)
        version_id = db.scalars(select(ModelVersion.id).where(ModelVersion.model_id == model_id)
                                 .order_by(ModelVersion.v)).all()[-1]
    manifest_key = f"models/{model_id}/{version_id}/images.json"
    app.state.blob_store.put_bytes(manifest_key, b'{"images": []}')
    return Seeded(
        emails=[admin.email, alice.email], token=token, manifest_key=manifest_key,
        datasets={d: snapshot(alice, d) for d in (shades, photos)}, model_id=model_id,
        versions=alice.client.get(f"/api/v1/models/{model_id}/versions").json()["items"],
        predictions=predict(app, token, model_id),
    )


def assert_restored(app: FastAPI, seeded: Seeded) -> None:
    """The restored service answers as the original did."""
    alice = [sign_in(app, email) for email in seeded.emails][-1]  # everyone signs in with their password
    me = TestClient(app, headers={"Authorization": f"Bearer {seeded.token}"}).get("/api/v1/me")
    assert me.status_code == 200 and me.json()["email"] == "alice@example.com"
    for dataset_id, expected in seeded.datasets.items():
        assert snapshot(alice, dataset_id) == expected  # byte-identical (the helper re-hashes every file)
    assert alice.client.get(f"/api/v1/models/{seeded.model_id}/versions").json()["items"] == seeded.versions
    assert predict(app, seeded.token, seeded.model_id) == seeded.predictions
    assert app.state.blob_store.read_bytes(seeded.manifest_key) == b'{"images": []}'
    assert check(app.state.session_factory, app.state.blob_store, fix=False, grace_s=0).healthy


# ---- round trips ----------------------------------------------------------------------------


def test_round_trip_restores_people_tokens_datasets_and_models(settings: Settings, target: Settings,
                                                              tmp_path: Path) -> None:
    with running(settings) as app:
        seeded = seed(app)
        summary = create_backup(settings, tmp_path / "backup.tar")
    assert summary.rows["users"] == 2 and summary.rows["images"] == 13 and summary.rows["model_versions"] == 2
    assert summary.files == 12 + 4  # 12 distinct images; two model files, a head file and an images.json

    restored = restore_backup(target, summary.path)
    assert restored.rows == summary.rows and restored.warnings == []
    with running(target) as app:
        assert_restored(app, seeded)


def test_manifest_describes_the_archive(settings: Settings, tmp_path: Path) -> None:
    with running(settings) as app:
        seed(app)
    archive = create_backup(settings, tmp_path).path  # a folder: a dated name is chosen in it
    assert archive.parent == tmp_path and archive.name.startswith("pigeonhole-backup-")
    assert oct(archive.stat().st_mode & 0o777) == "0o600"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert names[-1] == "manifest.json" and set(names[:-1]) == set(manifest["members"])
    assert manifest["format"] == "pigeonhole-backup" and manifest["format_version"] == 1
    assert manifest["alembic_revision"] and manifest["pigeonhole_version"] and manifest["created_at"]
    assert manifest["database"]["dialect"] == ("sqlite" if "sqlite" in settings.resolved_database_url
                                                else "postgresql")
    tables = [t["name"] for t in manifest["database"]["tables"]]
    assert tables.index("users") < tables.index("datasets") < tables.index("images")  # foreign-key order
    assert "compute_nodes" not in tables and "secret_key" not in names  # runtime state; configured key
    assert all(len(m["sha256"]) == 64 for m in manifest["members"].values())


@pytest.mark.postgres
def test_backups_move_between_sqlite_and_postgresql(tmp_path: Path) -> None:
    if not POSTGRES_URL:
        pytest.skip("PIGEONHOLE_TEST_POSTGRES_URL is not set")
    key = "test-" + secrets.token_urlsafe(32)

    def install(name: str, url: str) -> Settings:
        return Settings(data_dir=tmp_path / name, database_url=url, secret_key=key, **FAST_PASSWORDS)

    lite = install("lite", f"sqlite:///{tmp_path / 'lite.db'}")
    with running(lite) as app:
        seeded = seed(app)
    first = create_backup(lite, tmp_path / "from-sqlite.tar")
    with postgres_schema() as url:
        pg = install("pg", url)
        restore_backup(pg, first.path)
        with running(pg) as app:
            assert_restored(app, seeded)
        second = create_backup(pg, tmp_path / "from-postgres.tar")
    back = install("back", f"sqlite:///{tmp_path / 'back.db'}")
    restore_backup(back, second.path)
    with running(back) as app:
        assert_restored(app, seeded)


def test_backup_taken_during_uploads_is_consistent(settings: Settings, tmp_path: Path) -> None:
    with running(settings) as app:
        alice = signup(app, "alice@example.com")
        dataset_id = alice.client.post("/api/v1/datasets", json={"name": "busy"}).json()["id"]
        stop, sent = threading.Event(), []

        def keep_uploading() -> None:
            while not stop.is_set():
                n = len(sent)
                assert upload(alice, dataset_id, [(f"{n}.png", png_bytes(seed=5000 + n))], label="a"
                              ).status_code == 201
                sent.append(n)

        writer = threading.Thread(target=keep_uploading)
        writer.start()
        try:
            _wait_for(lambda: len(sent) >= 3)
            backups: list[tuple[BackupSummary, bool]] = []  # (backup, an upload finished while it ran)
            while len(backups) < 20 and sum(overlapped for _, overlapped in backups) < 2:
                before = len(sent)
                backups.append((create_backup(settings, tmp_path / f"busy-{len(backups)}.tar"), len(sent) > before))
        finally:
            stop.set()
            writer.join(timeout=60)
    concurrent = [summary for summary, overlapped in backups if overlapped]
    assert concurrent, "no upload finished while a backup ran: the test proved nothing"
    # Each snapshot holds every file its rows need: restoring it gives a healthy store.
    for i, summary in enumerate(concurrent):
        with contextlib.ExitStack() as stack:
            url = (f"sqlite:///{tmp_path / f'busy-{i}.db'}" if "sqlite" in settings.resolved_database_url
                   else stack.enter_context(postgres_schema()))
            into = Settings(data_dir=tmp_path / f"busy-{i}", database_url=url, secret_key=settings.secret_key,
                            **FAST_PASSWORDS)
            restore_backup(into, summary.path)
            with running(into) as app:
                restored = sign_in(app, "alice@example.com")
                images = all_images(restored, dataset_id)
                assert 3 <= len(images) == summary.rows["images"] < len(sent)
                assert len(snapshot(restored, dataset_id)) == len(images)  # every file there, byte-identical
                assert check(app.state.session_factory, app.state.blob_store, fix=False, grace_s=0).healthy


def _wait_for(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ---- refusals -------------------------------------------------------------------------------


@pytest.fixture
def archive(settings: Settings, tmp_path: Path) -> Path:
    with running(settings) as app:
        alice = signup(app, "alice@example.com")
        dataset_id = alice.client.post("/api/v1/datasets", json={"name": "d"}).json()["id"]
        upload(alice, dataset_id, [(f"{i}.png", png_bytes(seed=i)) for i in range(3)], label="a")
    return create_backup(settings, tmp_path / "backup.tar").path


def assert_nothing_written(target: Settings) -> None:
    assert table_names(target) == [] and stored_files(target) == []


def test_damaged_archive_is_refused_before_anything_is_written(archive: Path, target: Settings,
                                                               tmp_path: Path) -> None:
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.startswith("blobs/sha256/"))
    damaged = tmp_path / "damaged.tar"
    data = bytearray(archive.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0xFF  # one flipped byte inside one image
    damaged.write_bytes(bytes(data))
    with pytest.raises(BackupError, match=f"damaged: {member.name} does not match its checksum"):
        restore_backup(target, damaged)
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(archive.read_bytes()[: member.offset_data + 100])
    with pytest.raises(BackupError, match="damaged|not a complete Pigeonhole backup|incomplete"):
        restore_backup(target, truncated)
    not_a_tar = tmp_path / "notes.txt"
    not_a_tar.write_text("hello")
    with pytest.raises(BackupError, match="is damaged or is not a Pigeonhole backup"):
        restore_backup(target, not_a_tar)
    assert_nothing_written(target)


def rewrite(archive: Path, dest: Path, change: Callable[[dict], None], extra: dict[str, bytes] | None = None) -> Path:
    """A copy of the archive with an edited manifest (and extra members), as a tampered or future file would be."""
    with tarfile.open(archive) as tar, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "manifest.json":
                manifest = json.loads(data)
                change(manifest)
                data = json.dumps(manifest).encode()
                for name, content in (extra or {}).items():
                    info = tarfile.TarInfo(name)
                    info.size = len(content)
                    out.addfile(info, io.BytesIO(content))
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return dest


def test_archive_from_a_newer_schema_is_refused(archive: Path, target: Settings, tmp_path: Path) -> None:
    newer = rewrite(archive, tmp_path / "newer.tar", lambda m: m.update(alembic_revision="9999_future",
                                                                         pigeonhole_version="9.0"))
    with pytest.raises(BackupError, match=r"made by a newer Pigeonhole \(9.0, database revision 9999_future\)"):
        restore_backup(target, newer)
    future_format = rewrite(archive, tmp_path / "format.tar", lambda m: m.update(format_version=2))
    with pytest.raises(BackupError, match="format this version cannot read"):
        restore_backup(target, future_format)
    assert_nothing_written(target)


def test_unlisted_or_escaping_members_are_refused(archive: Path, target: Settings, tmp_path: Path) -> None:
    smuggled = rewrite(archive, tmp_path / "extra.tar", lambda m: None, extra={"blobs/models/x/y": b"evil"})
    with pytest.raises(BackupError, match="unexpected entry 'blobs/models/x/y'"):
        restore_backup(target, smuggled)

    def escape(manifest: dict) -> None:
        manifest["members"]["blobs/../../etc/passwd"] = {"sha256": "0" * 64, "size": 4}

    with pytest.raises(BackupError, match="which Pigeonhole never writes"):
        restore_backup(target, rewrite(archive, tmp_path / "escape.tar", escape))
    assert_nothing_written(target)


def test_restore_refuses_a_database_with_data_unless_forced(archive: Path, target: Settings) -> None:
    restore_backup(target, archive)
    with running(target) as app:
        signup(app, "bob@example.com")
    with pytest.raises(BackupError, match="already holds data.*add --force to replace"):
        restore_backup(target, archive)

    restore_backup(target, archive, force=True)  # replaces everything: bob is gone, alice is back
    with running(target) as app:
        refused = TestClient(app).post("/api/v1/auth/login", json={"email": "bob@example.com", "password": PASSWORD})
        assert refused.status_code == 401
        assert len(all_images(sign_in(app, "alice@example.com"), all_datasets(app)[0])) == 3


def test_failed_restore_leaves_the_old_data(archive: Path, target: Settings,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropping, recreating and loading the tables is one transaction, on SQLite as on PostgreSQL."""
    with running(target) as app:
        signup(app, "bob@example.com")

    def crash(*_: object) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr("pigeonhole.restore._reset_sequences", crash)  # after every row is in
    with pytest.raises(RuntimeError, match="power cut"):
        restore_backup(target, archive, force=True)
    with running(target) as app:
        sign_in(app, "bob@example.com")
        refused = TestClient(app).post("/api/v1/auth/login", json={"email": "alice@example.com", "password": PASSWORD})
        assert refused.status_code == 401


def all_datasets(app: FastAPI) -> list[str]:
    alice = sign_in(app, "alice@example.com")
    return [d["id"] for d in alice.client.get("/api/v1/datasets").json()["items"]]


def test_missing_file_fails_the_backup_with_a_clear_message(settings: Settings, tmp_path: Path) -> None:
    with running(settings) as app:
        alice = signup(app, "alice@example.com")
        dataset_id = alice.client.post("/api/v1/datasets", json={"name": "d"}).json()["id"]
        upload(alice, dataset_id, [(f"{i}.png", png_bytes(seed=i)) for i in range(2)], label="a")
        lost = all_images(alice, dataset_id)[0]["sha256"]
        app.state.blob_store.delete(lost)
    with pytest.raises(BackupError, match=f"1 file.*missing.*image file {lost} is missing.*pigeonhole doctor"):
        create_backup(settings, tmp_path / "backup.tar")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("backup", ".pigeonhole"))) == []


def test_backup_never_overwrites_a_file(settings: Settings, tmp_path: Path) -> None:
    with running(settings):
        pass
    existing = tmp_path / "backup.tar"
    existing.write_text("keep me")
    with pytest.raises(BackupError, match="already exists"):
        create_backup(settings, existing)
    assert existing.read_text() == "keep me"


# ---- the real command -----------------------------------------------------------------------


def test_cli_backup_and_restore_with_the_generated_secret_key(tmp_path: Path) -> None:
    """Through the installed `pigeonhole` script, on a default install (SQLite, generated key)."""
    source = Settings(data_dir=tmp_path / "source", **FAST_PASSWORDS)
    with running(source) as app:
        alice = signup(app, "alice@example.com")
        token = alice.token(["read"])
        dataset_id = alice.client.post("/api/v1/datasets", json={"name": "d"}).json()["id"]
        upload(alice, dataset_id, [(f"{i}.png", png_bytes(seed=i)) for i in range(3)], label="a")
        expected = snapshot(alice, dataset_id)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIGEONHOLE_")}

    def pigeonhole(data_dir: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(PIGEONHOLE), *args], capture_output=True, text=True, timeout=120,
                              env={**env, "PIGEONHOLE_DATA_DIR": str(tmp_path / data_dir)})

    made = pigeonhole("source", "backup", str(tmp_path / "nightly.tar"))
    assert made.returncode == 0, made.stderr
    assert "Backed up" in made.stdout and "3 file(s)" in made.stdout
    restored = pigeonhole("restored", "restore", str(tmp_path / "nightly.tar"))
    assert restored.returncode == 0, restored.stderr
    assert "Restored" in restored.stdout and "Warning" not in restored.stderr

    again = pigeonhole("restored", "restore", str(tmp_path / "nightly.tar"))
    assert again.returncode == 1 and "already holds data" in again.stderr and "--force" in again.stderr
    assert pigeonhole("restored", "restore", "--force", str(tmp_path / "nightly.tar")).returncode == 0
    missing = pigeonhole("restored", "restore", str(tmp_path / "nope.tar"))
    assert missing.returncode == 1 and "There is no backup file" in missing.stderr

    with running(Settings(data_dir=tmp_path / "restored", **FAST_PASSWORDS)) as app:
        reader = TestClient(app, headers={"Authorization": f"Bearer {token}"})
        assert reader.get("/api/v1/me").status_code == 200  # the generated key came back with the data
        assert snapshot(sign_in(app, "alice@example.com"), dataset_id) == expected
