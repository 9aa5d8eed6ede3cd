"""The Python client against a real server process: typed errors, folder uploads, safe retries, async."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pigeonhole.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConnectionFailed,
    NotFound,
    PermissionDenied,
    ValidationFailed,
)
from tests.factories import jpeg_bytes, png_bytes
from tests.integration.live_server import LiveServer, free_port, start_live_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_live_server(tmp_path_factory.mktemp("client-server"))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def token(server: LiveServer) -> str:
    return server.signup_token()


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for label, make, ext, seed in (("cats", png_bytes, "png", 0), ("dogs", jpeg_bytes, "jpg", 100)):
        (root / label).mkdir(parents=True)
        for i in range(6):
            (root / label / f"{i}.{ext}").write_bytes(make(seed=seed + i))
    (root / "cats" / ".hidden.png").write_bytes(b"skip me")
    (root / "cats" / "notes.txt").write_text("not an image")
    return root


def test_folder_upload_export_and_typed_errors(server: LiveServer, token: str, photos: Path, tmp_path: Path) -> None:
    with Client(server.base, token) as pgh:
        assert pgh.me()["auth"] == "token"
        dataset = pgh.create_dataset("pets")
        seen: list[int] = []
        result = pgh.upload_folder(dataset["id"], photos, progress=lambda p: seen.append(p.files_done))
        assert (result.accepted, result.duplicates, result.rejected) == (12, 0, [])
        assert seen[-1] == 12
        detail = pgh.get_dataset(dataset["id"])
        assert {c["name"]: c["count"] for c in detail["classes"]} == {"cats": 6, "dogs": 6}
        again = pgh.upload_folder(dataset["id"], photos)
        assert (again.accepted, again.duplicates) == (0, 12)  # retrying a whole upload never duplicates
        assert len(pgh.list_images(dataset["id"])) == 12
        exported = tmp_path / "pets.zip"
        pgh.export_dataset(dataset["id"], exported)
        assert exported.stat().st_size > 0

        with pytest.raises(NotFound) as missing:
            pgh.get_dataset("01aaaaaaaaaaaaaaaaaaaaaaaa")
        assert missing.value.status == 404 and "no such dataset" in missing.value.detail
        with pytest.raises(ValidationFailed) as invalid:
            pgh.create_dataset("   ")
        assert invalid.value.code == "invalid_name"
        with pytest.raises(FileNotFoundError):
            pgh.upload_folder(dataset["id"], tmp_path / "nowhere")
    with Client(server.base, "pgh_" + "x" * 36) as wrong, pytest.raises(AuthenticationError):
        wrong.me()
    with Client(server.base, server.signup_token("p@example.com", ["predict"])) as limited, \
            pytest.raises(PermissionDenied):
        limited.list_datasets()
    with Client(f"http://127.0.0.1:{free_port()}", token, retries=1) as down, pytest.raises(ConnectionFailed):
        down.me()


class LoseFirstUploadResponse(httpx.HTTPTransport):
    """The first upload reaches the server, then its answer is lost: the client must retry safely."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.endswith("/uploads") and not self.lost:
            self.lost = True
            response.read()
            raise httpx.ReadError("connection dropped", request=request)
        return response


def test_an_interrupted_upload_is_retried_without_duplicates(server: LiveServer, token: str, photos: Path) -> None:
    transport = LoseFirstUploadResponse()
    with Client(server.base, token, transport=transport) as pgh:
        dataset = pgh.create_dataset("retry")
        result = pgh.upload_folder(dataset["id"], photos)
        assert transport.lost
        assert result.accepted + result.duplicates == 12
        assert len(pgh.list_images(dataset["id"])) == 12


def test_async_client_has_the_same_methods(server: LiveServer, token: str, photos: Path) -> None:
    async def flow() -> tuple[int, int]:
        async with AsyncClient(server.base, token) as pgh:
            dataset = await pgh.create_dataset("async pets")
            uploaded = await pgh.upload_folder(dataset["id"], photos)
            images = await pgh.list_images(dataset["id"], label="cats")
            return uploaded.accepted, len(images)

    assert asyncio.run(flow()) == (12, 6)
