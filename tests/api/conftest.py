"""An app per test on a real database, and helpers to act as signed-in users or token holders."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pigeonhole.api.app import create_app
from pigeonhole.settings import Settings

PASSWORD = "correct horse battery"
_counter = itertools.count()


@dataclass
class Account:
    """A signed-in user: ``client`` carries the session cookie and the CSRF header."""

    id: str
    email: str
    is_admin: bool
    client: TestClient

    def token(self, scopes: list[str] | None = None, **extra: object) -> str:
        body: dict[str, object] = {"name": f"token {next(_counter)}", **extra}
        if scopes is not None:
            body["scopes"] = scopes
        response = self.client.post("/api/v1/tokens", json=body)
        assert response.status_code == 201, response.text
        return response.json()["token"]


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """The client that runs the app's lifespan (migrations, usage recorder); anonymous."""
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def new_client(app: FastAPI, client: TestClient) -> Callable[..., TestClient]:
    """More clients on the same running app (each with its own cookie jar)."""

    def make(token: str | None = None) -> TestClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return TestClient(app, headers=headers)

    return make


@pytest.fixture
def signup(new_client: Callable[..., TestClient]) -> Callable[..., Account]:
    def make(email: str | None = None, password: str = PASSWORD) -> Account:
        email = email or f"user{next(_counter)}@example.com"
        test_client = new_client()
        response = test_client.post("/api/v1/auth/signup", json={"email": email, "password": password})
        assert response.status_code == 201, response.text
        test_client.headers["X-CSRF-Token"] = test_client.cookies["pgh_csrf"]
        body = response.json()
        return Account(id=body["id"], email=email, is_admin=body["is_admin"], client=test_client)

    return make


@pytest.fixture
def admin(signup: Callable[..., Account]) -> Account:
    account = signup("admin@example.com")
    assert account.is_admin
    return account


@pytest.fixture
def alice(admin: Account, signup: Callable[..., Account]) -> Account:
    account = signup("alice@example.com")
    assert not account.is_admin
    return account


@pytest.fixture
def bob(admin: Account, signup: Callable[..., Account]) -> Account:
    return signup("bob@example.com")
