"""Security headers on every response, forwarded headers believed only from trusted proxies, and crash logs
that never quote the request.

In-process: the app installs uvicorn's ProxyHeadersMiddleware itself, so ``TestClient(client=(ip, port))``
exercises exactly what a real server does with a peer at that address.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy import select

from pigeonhole.api import web
from pigeonhole.api.app import create_app
from pigeonhole.api.middleware import APP_CSP, DOCS_CSP, HSTS
from pigeonhole.db.tables import LoginFailure
from pigeonhole.settings import Settings, load_settings
from tests.conftest import FAST_PASSWORDS

PASSWORD = "correct horse battery"
UNTRUSTED_PEER = ("198.51.100.7", 40000)
PROXY_PEER = ("127.0.0.1", 40000)
COMMON = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "same-origin"}


def _assert_protected(response, csp: str = APP_CSP) -> None:  # type: ignore[no-untyped-def]
    for name, value in COMMON.items():
        assert response.headers.get(name) == value, (response.request.url, name, response.headers)
    assert response.headers.get("content-security-policy") == csp, response.request.url


@pytest.fixture
def built_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings) -> TestClient:
    """The app with a (tiny) built web app in place."""
    dist = tmp_path / "web_dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>app</title><div id=app></div>")
    (dist / "assets" / "index-AbC123.js").write_text("console.log('app')")
    (dist / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    monkeypatch.setattr(web, "WEB_DIST", dist)
    with TestClient(create_app(settings)) as client:
        yield client


def test_every_kind_of_response_carries_the_security_headers(built_client: TestClient) -> None:
    html = {"accept": "text/html"}
    responses = [
        built_client.get("/", headers=html),                      # the web app
        built_client.get("/datasets/123", headers=html),          # SPA fallback
        built_client.get("/assets/index-AbC123.js"),              # a built asset
        built_client.get("/favicon.svg"),
        built_client.get("/healthz"),                             # ops
        built_client.get("/api/v1/me"),                           # API error (401)
        built_client.get("/api/v1/nothing-here"),                 # JSON 404
        built_client.post("/api/v1/auth/login", content=b"x" * (33 * 1024 * 1024),
                          headers={"content-type": "application/json"}),  # refused before any route (413)
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 200, 401, 404, 413]
    for response in responses:
        _assert_protected(response)
        assert "strict-transport-security" not in response.headers  # plain HTTP: no HSTS promise
    _assert_protected(built_client.get("/docs"), DOCS_CSP)  # Swagger UI: its CDN and inline start script only


def test_the_policy_forbids_what_the_app_never_needs() -> None:
    directives = dict(d.strip().split(" ", 1) for d in APP_CSP.split(";"))
    assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"  # no 'unsafe-inline': the build has no inline styles
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert directives["base-uri"] == "'self'" and directives["form-action"] == "'self'"
    assert "blob:" in directives["img-src"]  # previews of picked files


def test_the_built_app_needs_no_inline_script_or_style() -> None:
    """The CSP above is only right while the build loads everything from files (checked on the real build)."""
    index = web.WEB_DIST / "index.html"
    if not index.is_file():
        pytest.skip("the web app is not built")
    page = index.read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), "inline <script> in index.html"
    assert "<style" not in page and " style=" not in page
    for bundle in (index.parent / "assets").glob("*.js"):
        code = bundle.read_text()
        # Svelte turns markup into HTML strings: a static style="…" there, or a style attribute set as an
        # attribute rather than through element.style, would be refused by style-src 'self'.
        assert not re.search(r"<[a-zA-Z][^<>]{0,200}?\sstyle=", code), f"inline style attribute in {bundle.name}"
        assert not re.search(r"setAttribute\(\s*[`'\"]style[`'\"]", code), f"style set as an attribute in {bundle.name}"


def test_landing_page_allows_only_its_own_inline_style(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web, "WEB_DIST", tmp_path / "not-built")
    settings = Settings(data_dir=tmp_path / "data", secret_key=secrets.token_urlsafe(32), **FAST_PASSWORDS)
    response = TestClient(create_app(settings, migrate=False)).get("/")
    style = re.search(r"<style>(.*?)</style>", response.text, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'self' 'sha256-{digest}';" in response.headers["content-security-policy"]
    assert "unsafe-inline" not in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"


def test_hsts_and_secure_cookies_over_https(app: FastAPI) -> None:
    with TestClient(app, base_url="https://testserver") as client:  # scheme https, as when serving TLS
        response = client.post("/api/v1/auth/signup", json={"email": "a@example.com", "password": PASSWORD})
    assert response.status_code == 201
    assert response.headers["strict-transport-security"] == HSTS == "max-age=31536000"
    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 2 and all("; secure" in c.lower() for c in cookies)


def test_forwarded_headers_from_a_trusted_proxy_are_believed(app: FastAPI) -> None:
    forwarded = {"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"}
    with TestClient(app, client=PROXY_PEER) as client:
        signup = client.post("/api/v1/auth/signup", json={"email": "a@example.com", "password": PASSWORD},
                             headers=forwarded)
        client.cookies.clear()
        failed = client.post("/api/v1/auth/login", json={"email": "a@example.com", "password": "wrong password"},
                             headers=forwarded)
    assert signup.status_code == 201 and failed.status_code == 401
    assert signup.headers["strict-transport-security"] == HSTS
    assert all("; secure" in c.lower() for c in signup.headers.get_list("set-cookie"))
    assert _failure_addresses(app) == ["203.0.113.9"]  # the browser behind the proxy, not the proxy


def test_forwarded_headers_from_anyone_else_are_ignored(app: FastAPI) -> None:
    """A client that talks to the server directly cannot pick its address (throttling) or claim HTTPS."""
    with TestClient(app, client=UNTRUSTED_PEER) as client:
        signup = client.post("/api/v1/auth/signup", json={"email": "a@example.com", "password": PASSWORD},
                             headers={"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"})
        client.cookies.clear()
        for n in range(3):
            client.post("/api/v1/auth/login", json={"email": f"u{n}@example.com", "password": "wrong password"},
                        headers={"x-forwarded-for": f"203.0.113.{n}"})
    assert signup.status_code == 201
    assert "strict-transport-security" not in signup.headers
    assert not any("; secure" in c.lower() for c in signup.headers.get_list("set-cookie"))
    assert _failure_addresses(app) == [UNTRUSTED_PEER[0]] * 3


def test_spoofed_addresses_do_not_escape_sign_in_throttling(settings: Settings) -> None:
    settings.login_max_failures_per_address = 3
    app = create_app(settings)
    with TestClient(app, client=UNTRUSTED_PEER) as client:
        statuses = [client.post("/api/v1/auth/login", json={"email": f"u{n}@example.com", "password": "nope"},
                                headers={"x-forwarded-for": f"203.0.113.{n}"}).status_code for n in range(4)]
    assert statuses == [401, 401, 401, 429]


def test_trusted_proxies_accept_networks_and_refuse_typos(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, trusted_proxies=" 10.0.0.0/8, 127.0.0.1 ,::1")
    assert settings.trusted_proxies == "10.0.0.0/8,127.0.0.1,::1"
    with pytest.raises(ValueError, match="'10.0.0.300' is not an IP address or a network"):
        load_settings(data_dir=tmp_path, trusted_proxies="10.0.0.300")


def test_a_proxy_in_a_trusted_network_is_believed(settings: Settings) -> None:
    settings.trusted_proxies = "10.20.0.0/16"
    app = create_app(settings)
    with TestClient(app, client=("10.20.3.4", 1234)) as client:
        client.post("/api/v1/auth/login", json={"email": "x@example.com", "password": "nope"},
                    headers={"x-forwarded-for": "198.51.100.1, 10.20.9.9"})  # the client, then an inner proxy
    assert _failure_addresses(app) == ["198.51.100.1"]


def test_a_crash_is_logged_without_the_request(app: FastAPI, caplog: pytest.LogCaptureFixture) -> None:
    token = "pgh_" + "A1b2C3d4E5" * 3 + "zzzzzz"

    @app.post("/api/v1/test-crash")
    async def crash(request: Request) -> None:
        await request.body()
        raise RuntimeError("something broke")

    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.DEBUG):
        response = client.post("/api/v1/test-crash?token=query-secret", json={"password": "body-secret"},
                               headers={"Authorization": f"Bearer {token}", "Cookie": "pgh_session=cookie-secret"})
    assert response.status_code == 500 and response.json()["code"] == "internal_error"
    _assert_protected(response)  # answered outside the middleware, headers added by the handler
    formatter = logging.Formatter()  # the server's records (with tracebacks), not the test client's own
    logged = "\n".join(formatter.format(r) for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert "unhandled error on POST /api/v1/test-crash" in logged and "something broke" in logged
    for secret in ("query-secret", "body-secret", token, "cookie-secret"):
        assert secret not in logged


def _failure_addresses(app: FastAPI) -> list[str]:
    with app.state.session_factory() as db:
        return list(db.scalars(select(LoginFailure.address).order_by(LoginFailure.created_at)))
