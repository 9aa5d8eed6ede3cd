"""The built web app at ``/``: SPA fallback, cache headers, JSON 404s kept for the API; a current typed client."""

from __future__ import annotations

import importlib.util
import json
import secrets
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pigeonhole.api import web
from pigeonhole.api.app import create_app
from pigeonhole.settings import Settings
from tests.conftest import FAST_PASSWORDS, REPO_ROOT

SNAPSHOT = REPO_ROOT / "web" / "src" / "lib" / "api" / "openapi.json"


def _app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dist: Path) -> TestClient:
    monkeypatch.setattr(web, "WEB_DIST", dist)
    settings = Settings(data_dir=tmp_path / "data", secret_key=secrets.token_urlsafe(32), **FAST_PASSWORDS)
    return TestClient(create_app(settings, migrate=False))


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    root = tmp_path / "web_dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>Pigeonhole app</title><div id=app></div>")
    (root / "assets" / "index-AbC123.js").write_text("console.log('app')")
    (root / "assets" / "index-XyZ789.css").write_text("body{}")
    (root / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (tmp_path / "secret.txt").write_text("not for the web")
    return root


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dist: Path) -> TestClient:
    return _app(tmp_path, monkeypatch, dist)


BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.mark.parametrize("path", ["/", "/datasets", "/datasets/01abc", "/tokens?x=1", "/some/deep/link"])
def test_app_pages_answer_index_without_caching(client: TestClient, path: str) -> None:
    response = client.get(path, headers=BROWSER)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"
    assert "Pigeonhole app" in response.text


def test_head_of_an_app_page(client: TestClient) -> None:
    response = client.head("/models", headers=BROWSER)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-cache"


def test_scripts_asking_for_unknown_pages_get_the_json_404(client: TestClient) -> None:
    response = client.get("/no/such/page", headers={"Accept": "*/*"})
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert client.get("/", headers={"Accept": "*/*"}).status_code == 200  # the app's own page is always there


def test_hashed_assets_are_cached_for_a_year(client: TestClient) -> None:
    script = client.get("/assets/index-AbC123.js")
    assert script.status_code == 200 and script.text == "console.log('app')"
    assert script.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "javascript" in script.headers["content-type"]
    assert client.get("/assets/index-XyZ789.css").headers["content-type"].startswith("text/css")


def test_other_build_files_are_cached_briefly(client: TestClient) -> None:
    icon = client.get("/favicon.svg")
    assert icon.status_code == 200 and icon.headers["cache-control"] == "public, max-age=3600"
    assert icon.headers["content-type"].startswith("image/svg+xml")


@pytest.mark.parametrize("path", ["/assets/missing.js", "/assets/%2e%2e/%2e%2e/secret.txt",
                                  "/assets/..%2F..%2Fsecret.txt"])
def test_missing_assets_are_404_not_the_app(client: TestClient, path: str) -> None:
    response = client.get(path, headers=BROWSER)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert "not for the web" not in response.text


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "HEAD"])
def test_unknown_api_paths_keep_the_json_404(client: TestClient, method: str) -> None:
    response = client.request(method, "/api/v1/no-such-endpoint", headers=BROWSER)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    if method != "HEAD":
        assert response.json()["code"] == "not_found"
    assert client.get("/api", headers=BROWSER).status_code == 404


def test_api_and_server_pages_are_untouched(client: TestClient) -> None:
    assert client.delete("/api/v1/me").status_code == 405  # a real path with the wrong method stays 405
    assert client.get("/api/v1/me").json()["code"] == "not_authenticated"
    assert client.get("/openapi.json").json()["info"]["title"] == "Pigeonhole"
    assert client.get("/healthz").json() == {"status": "ok"}
    assert "swagger" in client.get("/docs").text.lower()
    post = client.post("/datasets", headers=BROWSER)  # not a page to post to: a JSON 404, not the app
    assert post.status_code == 404 and post.headers["content-type"] == "application/json"


def test_landing_page_when_the_app_is_not_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _app(tmp_path, monkeypatch, tmp_path / "nothing-built")
    home = client.get("/")
    assert home.status_code == 200 and "Pigeonhole is running" in home.text
    other = client.get("/datasets", headers=BROWSER)
    assert other.status_code == 404 and other.json()["code"] == "not_found"


def test_the_web_clients_openapi_snapshot_is_current() -> None:
    """The web app's typed client is generated from web/src/lib/api/openapi.json; it must match the API.

    When this fails after an API change, run `make web-client` (it rewrites openapi.json and the
    generated TypeScript; the web's own test then checks the TypeScript matches the snapshot).
    """
    spec = importlib.util.spec_from_file_location("dump_openapi", REPO_ROOT / "web" / "scripts" / "dump_openapi.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = module.openapi_document()
    committed = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert committed == current, "web/src/lib/api/openapi.json is stale: run `make web-client`"
