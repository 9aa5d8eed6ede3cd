"""The authorization matrix, generated from the app's route table rather than listed by hand.

For every API route: no credentials → 401; a normal user on an admin route → 403; a token missing
the route's scope → 403; user B on user A's ids → 404. A new route that forgets its auth
dependency, or takes an id this file cannot create for user A, fails here until it is covered.

The whole matrix runs against one app per database backend, with its users and user A's resources made
once: every case is a refused request, so none may change what the next one sees (the 404 cases check
that user A still has everything after each of them).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from pigeonhole.api.app import create_app
from pigeonhole.auth.scopes import Scope
from pigeonhole.jobs.service import create_job
from pigeonhole.settings import Settings
from tests.api.conftest import PASSWORD, Account
from tests.api.models_helpers import add_version, trainable_dataset
from tests.conftest import BACKENDS, FAST_PASSWORDS, empty_tables
from tests.factories import png_bytes

PUBLIC_ROUTES = {
    ("POST", "/api/v1/auth/signup"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/logout"),
}
_UNSET = object()


def _required_scope(dependant: Dependant) -> object:
    for sub in dependant.dependencies:
        if hasattr(sub.call, "required_scope"):
            return sub.call.required_scope
        found = _required_scope(sub)
        if found is not _UNSET:
            return found
    return _UNSET


def _api_routes() -> list[tuple[str, str, object]]:
    app = create_app(Settings(database_url="sqlite://", secret_key="x" * 40))
    rows = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.path.startswith("/api/"):
            for method in sorted(route.methods):
                rows.append((method, route.path, _required_scope(route.dependant)))
    return rows


ROUTES = _api_routes()
PROTECTED = [(m, p, s) for m, p, s in ROUTES if (m, p) not in PUBLIC_ROUTES]
ids = [f"{m} {p}" for m, p, _ in PROTECTED]


# What user A owns, one of each kind of resource a path parameter can name. A new kind of id needs a
# line here, or test_every_id_parameter_has_a_factory fails.
def _world_of(owner: Account) -> dict[str, str]:
    token_id = owner.client.post("/api/v1/tokens", json={"name": "owned by A"}).json()["id"]
    dataset_id = owner.client.post("/api/v1/datasets", json={"name": "A's photos"}).json()["id"]
    uploaded = owner.client.post(f"/api/v1/datasets/{dataset_id}/uploads", data={"label": "cats"},
                                 files=[("files", ("a.png", png_bytes(), "image/png"))])
    assert uploaded.json()["accepted"] == 1, uploaded.text
    image_id = owner.client.get(f"/api/v1/datasets/{dataset_id}/images").json()["items"][0]["id"]
    with owner.client.app.state.session_factory() as db:  # jobs are created by other domains, not by a route
        job_id = create_job(db, owner.id, "selftest", {"steps": 1}, settings=owner.client.app.state.settings).id
        db.commit()
    waiting = owner.client.post(f"/api/v1/datasets/{dataset_id}/uploads", data={"unlabelled": "true"},
                                files=[("files", ("later.png", png_bytes(seed=1), "image/png"))])
    assert waiting.json()["accepted"] == 1, waiting.text
    pool_id = owner.client.get(f"/api/v1/datasets/{dataset_id}/pool").json()["items"][0]["id"]
    model_id = owner.client.post("/api/v1/models", json={"name": "A's model",
                                                         "dataset_id": trainable_dataset(owner)}).json()["id"]
    add_version(owner.client.app, model_id)
    return {"token_id": token_id, "dataset_id": dataset_id, "image_id": image_id, "name": "cats", "job_id": job_id,
            "model_id": model_id, "v": "1", "pool_id": pool_id}


# node_id names a compute node, owned by no user: only admin routes take it (403 for others, tested above).
KNOWN_PARAMETERS = {"token_id", "dataset_id", "image_id", "name", "job_id", "node_id", "model_id", "v", "pool_id"}


@dataclass
class Matrix:
    """One running app with an admin, user A (alice) with one of each resource, and user B (bob)."""

    app: FastAPI
    client: TestClient
    admin: Account
    alice: Account
    bob: Account
    world: dict[str, str]

    def new_client(self, token: str | None = None) -> TestClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return TestClient(self.app, headers=headers)

    def signup(self, email: str) -> Account:
        test_client = self.new_client()
        response = test_client.post("/api/v1/auth/signup", json={"email": email, "password": PASSWORD})
        assert response.status_code == 201, response.text
        test_client.headers["X-CSRF-Token"] = test_client.cookies["pgh_csrf"]
        body = response.json()
        return Account(id=body["id"], email=email, is_admin=body["is_admin"], client=test_client)


@pytest.fixture(scope="module", params=BACKENDS)
def matrix(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    folder: Path = tmp_path_factory.mktemp("matrix")
    url = (f"sqlite:///{folder / 'test.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_url"))
    settings = Settings(data_dir=folder / "data", database_url=url, secret_key="test-" + secrets.token_urlsafe(32),
                        usage_flush_interval_s=0.05, **FAST_PASSWORDS)
    app = create_app(settings)
    with TestClient(app) as client:
        matrix = Matrix(app=app, client=client, admin=None, alice=None, bob=None, world={})  # type: ignore[arg-type]
        matrix.admin = matrix.signup("admin@example.com")
        assert matrix.admin.is_admin
        matrix.alice = matrix.signup("alice@example.com")
        assert not matrix.alice.is_admin
        matrix.bob = matrix.signup("bob@example.com")
        matrix.world = _world_of(matrix.alice)
        yield matrix
    if request.param == "postgres":
        empty_tables(url)


@pytest.fixture
def new_client(matrix: Matrix) -> Callable[..., TestClient]:
    return matrix.new_client


def _fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values.get(m.group(1), "01aaaaaaaaaaaaaaaaaaaaaaaa"), path)


def _params(path: str) -> list[str]:
    return re.findall(r"\{(\w+)(?::\w+)?\}", path)


def test_every_api_route_declares_who_may_call_it() -> None:
    missing = [f"{m} {p}" for m, p, scope in PROTECTED if scope is _UNSET]
    assert not missing, f"routes without an auth dependency (Reader/Writer/Predictor/AdminUser/CurrentUser): {missing}"


@pytest.mark.parametrize(("method", "path", "scope"), PROTECTED, ids=ids)
def test_no_credentials_gets_401(matrix: Matrix, method: str, path: str, scope: object) -> None:
    response = matrix.client.request(method, _fill(path, {}))
    assert response.status_code == 401, response.text
    assert response.json()["code"] in ("not_authenticated",)


ADMIN_ROUTES = [r for r in PROTECTED if r[2] is Scope.ADMIN]


@pytest.mark.parametrize(("method", "path", "scope"), ADMIN_ROUTES, ids=[f"{m} {p}" for m, p, _ in ADMIN_ROUTES])
def test_admin_routes_refuse_normal_users(matrix: Matrix, new_client, method: str, path: str, scope: object) -> None:
    alice = matrix.alice
    assert alice.client.request(method, _fill(path, {})).status_code == 403
    full_token = new_client(alice.token(["read", "write", "predict"]))
    assert full_token.request(method, _fill(path, {})).status_code == 403


@pytest.mark.parametrize(("method", "path", "scope"),
                         [r for r in PROTECTED if isinstance(r[2], Scope) and r[2] is not Scope.ADMIN],
                         ids=[i for i, r in zip(ids, PROTECTED, strict=True)
                              if isinstance(r[2], Scope) and r[2] is not Scope.ADMIN])
def test_token_without_the_scope_gets_403(matrix: Matrix, new_client, method: str, path: str, scope: Scope) -> None:
    alice = matrix.alice
    others = [s.value for s in (Scope.READ, Scope.WRITE, Scope.PREDICT) if s is not scope]
    response = new_client(alice.token(others)).request(method, _fill(path, {}))
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "missing_scope"


WITH_IDS = [r for r in PROTECTED if _params(r[1])]
# Admin routes answer 403 to everyone else before looking at ids; isolation applies to users' own resources.
USER_WITH_IDS = [r for r in WITH_IDS if r[2] is not Scope.ADMIN]


def test_every_id_parameter_has_a_factory() -> None:
    unknown = {p for _, path, _ in WITH_IDS for p in _params(path)} - KNOWN_PARAMETERS
    assert not unknown, f"add a factory for these path parameters so isolation is tested: {unknown}"


@pytest.mark.parametrize(("method", "path", "scope"), USER_WITH_IDS, ids=[f"{m} {p}" for m, p, _ in USER_WITH_IDS])
def test_another_users_ids_answer_404(matrix: Matrix, new_client, method: str, path: str, scope: object) -> None:
    alice, bob = matrix.alice, matrix.bob
    url = _fill(path, matrix.world)
    as_bob = bob.client.request(method, url)
    assert as_bob.status_code == 404, f"{method} {url} as another user: {as_bob.status_code} {as_bob.text}"
    bob_token = new_client(bob.token(["read", "write", "predict"]))
    assert bob_token.request(method, url).status_code == 404
    # and everything is still there for its owner
    assert alice.client.get("/api/v1/tokens").json()["items"]
    assert {d["image_count"] for d in alice.client.get("/api/v1/datasets").json()["items"]} == {1, 10}
    assert alice.client.get("/api/v1/models").json()["items"][0]["active_version"] == 1


STATE_CHANGING = [r for r in PROTECTED if r[0] not in ("GET", "HEAD", "OPTIONS")]


@pytest.mark.parametrize(("method", "path", "scope"), STATE_CHANGING,
                         ids=[f"{m} {p}" for m, p, _ in STATE_CHANGING])
def test_cookie_state_changes_need_the_csrf_proof(matrix: Matrix, new_client, method: str, path: str,
                                                  scope: object) -> None:
    admin = matrix.admin
    forged = new_client()  # a page on another site can make the browser send the cookie, not the header
    forged.cookies.set("pgh_session", admin.client.cookies["pgh_session"])
    response = forged.request(method, _fill(path, {}))
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "csrf_failed"
