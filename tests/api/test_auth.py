"""Sign-up, sign-in, sign-out, /me, throttling and CSRF, on every database backend."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import PASSWORD, Account


def test_first_user_becomes_admin_and_later_ones_do_not(signup) -> None:
    first, second = signup("first@example.com"), signup("second@example.com")
    assert first.is_admin and not second.is_admin


def test_signup_signs_in_and_me_describes_the_session(signup) -> None:
    account = signup("Mixed.Case@Example.com")
    me = account.client.get("/api/v1/me").json()
    assert me["email"] == "mixed.case@example.com"
    assert me["auth"] == "session" and "write" in me["scopes"] and "admin" in me["scopes"]


def test_signup_rejects_bad_input_with_sentences(client: TestClient, signup) -> None:
    signup("taken@example.com")
    cases = [
        ({"email": "not-an-email", "password": PASSWORD}, 422, "invalid_email"),
        ({"email": "x@example.com", "password": "short"}, 422, "weak_password"),
        ({"email": "TAKEN@example.com", "password": PASSWORD}, 409, "email_taken"),
        ({"email": "x@example.com"}, 422, "invalid_input"),
    ]
    for body, status, code in cases:
        response = client.post("/api/v1/auth/signup", json=body)
        assert response.status_code == status, body
        assert response.json()["code"] == code
        assert response.json()["detail"].endswith(".")


def test_closed_signup_still_lets_the_first_admin_in(app, client: TestClient, signup) -> None:
    app.state.settings.signup_open = False
    assert signup("owner@example.com").is_admin
    response = client.post("/api/v1/auth/signup", json={"email": "late@example.com", "password": PASSWORD})
    assert response.status_code == 403 and response.json()["code"] == "signup_closed"


def test_login_logout_cycle(client: TestClient, signup, new_client) -> None:
    signup("carol@example.com")
    browser = new_client()
    assert browser.get("/api/v1/me").status_code == 401
    bad = browser.post("/api/v1/auth/login", json={"email": "carol@example.com", "password": "wrong password"})
    assert bad.status_code == 401 and bad.json()["code"] == "bad_credentials"
    ok = browser.post("/api/v1/auth/login", json={"email": "carol@example.com", "password": PASSWORD})
    assert ok.status_code == 200
    set_cookies = ok.headers.get_list("set-cookie")
    session_cookie = next(c for c in set_cookies if c.startswith("pgh_session="))
    assert "HttpOnly" in session_cookie and "samesite=lax" in session_cookie.lower()
    assert "Secure" not in session_cookie  # plain http in tests
    csrf_cookie = next(c for c in set_cookies if c.startswith("pgh_csrf="))
    assert "HttpOnly" not in csrf_cookie
    assert browser.get("/api/v1/me").json()["email"] == "carol@example.com"

    stolen_cookie = browser.cookies["pgh_session"]
    assert browser.post("/api/v1/auth/logout").status_code == 403  # no CSRF header
    logout = browser.post("/api/v1/auth/logout", headers={"X-CSRF-Token": browser.cookies["pgh_csrf"]})
    assert logout.status_code == 204
    assert browser.get("/api/v1/me").status_code == 401
    replay = new_client()
    replay.cookies.set("pgh_session", stolen_cookie)
    assert replay.get("/api/v1/me").status_code == 401  # the session is gone server-side


def test_secure_cookie_over_https(app, signup) -> None:
    signup("dave@example.com")
    with TestClient(app, base_url="https://testserver") as https:
        response = https.post("/api/v1/auth/login", json={"email": "dave@example.com", "password": PASSWORD})
        session_cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("pgh_session="))
        assert "Secure" in session_cookie


def test_repeated_failures_are_throttled_per_account(app, client: TestClient, signup, new_client) -> None:
    signup("eve@example.com")
    limit = app.state.settings.login_max_failures_per_account
    attacker = new_client()
    for _ in range(limit):
        r = attacker.post("/api/v1/auth/login", json={"email": "eve@example.com", "password": "guess guess"})
        assert r.status_code == 401
    blocked = attacker.post("/api/v1/auth/login", json={"email": "eve@example.com", "password": PASSWORD})
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) > 0
    assert "try again" in blocked.json()["detail"]


def test_repeated_failures_are_throttled_per_address(app, client: TestClient, new_client) -> None:
    app.state.settings.login_max_failures_per_address = 3
    attacker = new_client()
    for i in range(3):
        r = attacker.post("/api/v1/auth/login", json={"email": f"nobody{i}@example.com", "password": "guess guess"})
        assert r.status_code == 401
    r = attacker.post("/api/v1/auth/login", json={"email": "someone-else@example.com", "password": "guess guess"})
    assert r.status_code == 429 and r.json()["code"] == "login_throttled"


def test_success_clears_the_account_failures(app, signup, new_client) -> None:
    signup("frank@example.com")
    browser = new_client()
    for _ in range(app.state.settings.login_max_failures_per_account - 1):
        browser.post("/api/v1/auth/login", json={"email": "frank@example.com", "password": "nope nope"})
    success = browser.post("/api/v1/auth/login", json={"email": "frank@example.com", "password": PASSWORD})
    assert success.status_code == 200
    for _ in range(app.state.settings.login_max_failures_per_account - 1):
        r = browser.post("/api/v1/auth/login", json={"email": "frank@example.com", "password": "nope nope"})
        assert r.status_code == 401


def test_state_change_with_cookie_needs_csrf_header(alice: Account, new_client) -> None:
    browser = new_client()
    browser.cookies.set("pgh_session", alice.client.cookies["pgh_session"])
    missing = browser.post("/api/v1/tokens", json={"name": "x"})
    assert missing.status_code == 403 and missing.json()["code"] == "csrf_failed"
    wrong = browser.post("/api/v1/tokens", json={"name": "x"}, headers={"X-CSRF-Token": "forged"})
    assert wrong.status_code == 403
    assert browser.get("/api/v1/tokens").status_code == 200  # reads need no proof
    right = browser.post("/api/v1/tokens", json={"name": "x"},
                         headers={"X-CSRF-Token": alice.client.cookies["pgh_csrf"]})
    assert right.status_code == 201
