"""Bad input always answers a 4xx in the documented shape with a sentence, never a 500."""

from __future__ import annotations

from fastapi.testclient import TestClient


def _assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"detail", "code"} and isinstance(body["detail"], str) and body["detail"]
    if code:
        assert body["code"] == code
    return body


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    _assert_error(client.get("/api/v1/does-not-exist"), 404, "not_found")
    body = _assert_error(client.put("/api/v1/auth/login", json={}), 405, "method_not_allowed")
    assert "PUT" in body["detail"]


def test_bad_json_and_wrong_types(client: TestClient) -> None:
    bad_json = client.post("/api/v1/auth/login", content=b"{not json", headers={"content-type": "application/json"})
    assert _assert_error(bad_json, 422, "invalid_input")["detail"] == "The request body is not valid JSON."
    wrong_type = client.post("/api/v1/auth/login", json={"email": 5, "password": ["x"]})
    body = _assert_error(wrong_type, 422, "invalid_input")
    assert "email" in body["detail"] and body["errors"]
    _assert_error(client.post("/api/v1/auth/login"), 422, "invalid_input")
    _assert_error(client.post("/api/v1/auth/login", json=[1, 2]), 422)


def test_query_parameters_are_validated(alice) -> None:
    body = _assert_error(alice.client.get("/api/v1/tokens", params={"limit": "lots"}), 422)
    assert "limit" in body["detail"]
    _assert_error(alice.client.get("/api/v1/tokens", params={"limit": 0}), 422)


def test_oversized_bodies_are_refused_before_reading(app, client: TestClient) -> None:
    app_limit = app.state.settings.max_body_bytes
    big = b"x" * (app_limit + 1)
    _assert_error(client.post("/api/v1/auth/login", content=big, headers={"content-type": "application/json"}),
                  413, "payload_too_large")

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(app_limit // 65536 + 2):
            yield b"x" * 65536

    _assert_error(client.post("/api/v1/auth/login", content=chunks(), headers={"content-type": "application/json"}),
                  413, "payload_too_large")


def test_unicode_and_huge_strings_do_not_break_anything(client: TestClient) -> None:
    _assert_error(client.post("/api/v1/auth/login", json={"email": "ü" * 10_000, "password": "x"}), 422)
    nul = client.post("/api/v1/auth/login", json={"email": "\u0000@example.com", "password": "x" * 1000})
    assert "NUL" in _assert_error(nul, 422)["detail"]


def test_nul_in_paths_and_queries_is_refused(alice) -> None:
    _assert_error(alice.client.delete("/api/v1/tokens/%00abc"), 400)
    _assert_error(alice.client.get("/api/v1/tokens", params={"cursor": "\x00"}), 400)
