"""API fuzzing: Schemathesis generates requests for every operation of our own OpenAPI schema.

Authenticated as a normal user who owns seeded data (a dataset with images, a model with a version,
a token). Every response must be non-5xx and conform to the schema; bad input must be refused.
The number of generated cases is printed at the end.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from pigeonhole.api.app import create_app
from pigeonhole.db.migrate import upgrade
from pigeonhole.settings import Settings
from tests.api.models_helpers import add_version
from tests.conftest import FAST_PASSWORDS
from tests.factories import png_bytes

pytestmark = pytest.mark.slow

CASES = {"count": 0}
TOKEN: dict[str, str] = {}


def _seed(app) -> str:  # type: ignore[no-untyped-def]
    """A user with a dataset of images, a model with a version and a token; returns the token."""
    with TestClient(app) as browser:
        browser.post("/api/v1/auth/signup", json={"email": "admin@example.com", "password": "a long password"})
        user = TestClient(app)
        user.post("/api/v1/auth/signup", json={"email": "fuzz@example.com", "password": "a long password"})
        csrf = {"X-CSRF-Token": user.cookies["pgh_csrf"]}
        dataset = user.post("/api/v1/datasets", json={"name": "seed"}, headers=csrf).json()["id"]
        for label, seed in (("a", 0), ("b", 10)):
            files = [("files", (f"{i}.png", png_bytes(seed=seed + i))) for i in range(5)]
            user.post(f"/api/v1/datasets/{dataset}/uploads", data={"label": label}, files=files, headers=csrf)
        model = user.post("/api/v1/models", json={"name": "m", "dataset_id": dataset}, headers=csrf).json()["id"]
        add_version(app, model)
        return user.post("/api/v1/tokens", json={"name": "fuzz"}, headers=csrf).json()["token"]


# The schema is read at collection time, so the app exists then (cheap: no database connection yet);
# migrations and seeding happen in the fixture, and everything is removed afterwards.
DATA_DIR = Path(tempfile.mkdtemp(prefix="pgh-fuzz-"))
APP = create_app(Settings(data_dir=DATA_DIR, secret_key="fuzz-" + secrets.token_urlsafe(32), **FAST_PASSWORDS))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def seeded() -> Iterator[None]:
    upgrade(APP.state.engine)
    TOKEN["value"] = _seed(APP)
    yield
    APP.state.engine.dispose()
    shutil.rmtree(DATA_DIR, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_schema(case: schemathesis.Case) -> None:
    CASES["count"] += 1
    # Excluded: "schema-valid data must be accepted". Business rules go beyond any schema (a name of
    # only spaces, a class with too few images, a full quota) and answer a 4xx with a sentence.
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN['value']}"},
                           excluded_checks=[schemathesis.checks.positive_data_acceptance])


def test_report_generated_case_count() -> None:
    print(f"\nschemathesis generated {CASES['count']} cases")
