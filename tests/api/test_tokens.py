"""API tokens: created once, listed without secrets, scoped, expiring, revocable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pigeonhole.auth.secrets import is_well_formed_token
from pigeonhole.db.tables import ApiToken
from tests.api.conftest import Account


def test_token_is_shown_once_and_listed_without_secret(alice: Account, app) -> None:
    created = alice.client.post("/api/v1/tokens", json={"name": "laptop"})
    assert created.status_code == 201
    body = created.json()
    token = body["token"]
    assert token.startswith("pgh_") and is_well_formed_token(token)
    assert token.startswith(body["prefix"]) and body["scopes"] == ["predict", "read", "write"]

    listed = alice.client.get("/api/v1/tokens").json()
    assert [t["id"] for t in listed["items"]] == [body["id"]]
    assert "token" not in listed["items"][0] and listed["next_cursor"] is None
    assert listed["items"][0]["last_used_at"] is None
    with app.state.session_factory() as db:
        stored = db.get(ApiToken, body["id"])
        assert token not in (stored.digest, stored.prefix)  # only an HMAC is at rest


def test_bearer_token_authenticates_and_records_last_use(alice: Account, new_client) -> None:
    token = alice.token()
    program = new_client(token)
    me = program.get("/api/v1/me").json()
    assert me["email"] == alice.email and me["auth"] == "token"
    listed = alice.client.get("/api/v1/tokens").json()["items"]
    assert listed[0]["last_used_at"] is not None


def test_invalid_tokens_are_refused_with_a_sentence(new_client, alice: Account) -> None:
    token = alice.token()
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for header in (f"Bearer {tampered}", "Bearer pgh_nonsense", "Basic abc", "Bearer "):
        response = new_client().get("/api/v1/me", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.json()["detail"]


def test_revoked_token_stops_working(alice: Account, new_client) -> None:
    token = alice.token()
    token_id = next(t["id"] for t in alice.client.get("/api/v1/tokens").json()["items"])
    assert new_client(token).get("/api/v1/me").status_code == 200
    assert alice.client.delete(f"/api/v1/tokens/{token_id}").status_code == 204
    assert new_client(token).get("/api/v1/me").status_code == 401
    assert alice.client.get("/api/v1/tokens").json()["items"] == []
    assert alice.client.delete(f"/api/v1/tokens/{token_id}").status_code == 404


def test_expired_token_is_refused(alice: Account, new_client, app) -> None:
    token = alice.token(expires_in_days=1)
    assert new_client(token).get("/api/v1/me").status_code == 200
    with app.state.session_factory() as db, db.begin():
        for row in db.query(ApiToken).all():
            row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    # The edit stands for time passing; the few-second token memory checks expiry itself
    # (tests/unit/test_token_cache.py), but it remembers the expiry the row had.
    app.state.token_cache.clear()
    response = new_client(token).get("/api/v1/me")
    assert response.status_code == 401 and "expired" in response.json()["detail"]


def test_expiry_must_be_in_the_future_and_unambiguous(alice: Account) -> None:
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert alice.client.post("/api/v1/tokens", json={"name": "x", "expires_at": past}).status_code == 422
    both = {"name": "x", "expires_at": "2099-01-01T00:00:00Z", "expires_in_days": 3}
    assert alice.client.post("/api/v1/tokens", json=both).status_code == 422
    naive = {"name": "x", "expires_at": "2099-01-01T00:00:00"}
    assert alice.client.post("/api/v1/tokens", json=naive).status_code == 422


def test_predict_only_token_cannot_manage_anything(alice: Account, new_client) -> None:
    program = new_client(alice.token(["predict"]))
    assert program.get("/api/v1/tokens").status_code == 403
    refused = program.post("/api/v1/tokens", json={"name": "escalate"})
    assert refused.status_code == 403 and refused.json()["code"] == "missing_scope"
    assert program.get("/api/v1/usage").status_code == 403
    assert program.get("/api/v1/me").status_code == 200


def test_tokens_cannot_grant_more_than_they_hold(alice: Account, admin: Account, new_client) -> None:
    writer = new_client(alice.token(["write"]))
    refused = writer.post("/api/v1/tokens", json={"name": "more", "scopes": ["write", "read"]})
    assert refused.status_code == 403 and refused.json()["code"] == "scope_not_allowed"
    assert writer.post("/api/v1/tokens", json={"name": "same", "scopes": ["write"]}).status_code == 201
    assert alice.client.post("/api/v1/tokens", json={"name": "a", "scopes": ["admin"]}).status_code == 403
    assert admin.client.post("/api/v1/tokens", json={"name": "a", "scopes": ["admin"]}).status_code == 201
    bad = alice.client.post("/api/v1/tokens", json={"name": "a", "scopes": ["everything"]})
    assert bad.status_code == 422 and "Unknown scope" in bad.json()["detail"]
    assert alice.client.post("/api/v1/tokens", json={"name": "a", "scopes": []}).status_code == 422
    assert alice.client.post("/api/v1/tokens", json={"name": "  "}).status_code == 422


def test_admin_token_loses_admin_powers_with_its_user(admin: Account, new_client, app) -> None:
    from pigeonhole.db.tables import User

    program = new_client(admin.token(["admin", "read"]))
    assert program.get("/api/v1/admin/users").status_code == 200
    with app.state.session_factory() as db, db.begin():
        db.get(User, admin.id).is_admin = False
    assert program.get("/api/v1/admin/users").status_code == 403


def test_token_list_paginates(alice: Account) -> None:
    made = {alice.client.post("/api/v1/tokens", json={"name": f"t{i}"}).json()["id"] for i in range(5)}
    seen, cursor = [], None
    while True:
        page = alice.client.get("/api/v1/tokens", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and set(seen) == made and seen == sorted(seen, reverse=True)
    bad = alice.client.get("/api/v1/tokens", params={"cursor": "garbage!"})
    assert bad.status_code == 400 and bad.json()["code"] == "bad_cursor"
