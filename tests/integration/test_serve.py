"""``pigeonhole serve`` as a real process: starts, becomes ready, serves a full sign-up → token flow, stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.live_server import FAST_ENV, PIGEONHOLE, LiveServer, start_live_server


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    live = start_live_server(tmp_path / "data", database_url)
    yield live
    if live.process.poll() is None:
        live.process.kill()
        live.process.wait()


def test_serve_end_to_end(server: LiveServer) -> None:
    base, process = server.base, server.process
    with httpx.Client(base_url=base) as browser:
        signup = browser.post("/api/v1/auth/signup", json={"email": "owner@example.com", "password": "a long password"})
        assert signup.status_code == 201 and signup.json()["is_admin"]
        created = browser.post("/api/v1/tokens", json={"name": "script"},
                               headers={"X-CSRF-Token": browser.cookies["pgh_csrf"]})
        assert created.status_code == 201
        token = created.json()["token"]
    me = httpx.get(f"{base}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["email"] == "owner@example.com" and me.json()["auth"] == "token"

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    output = process.stdout.read() if process.stdout else ""
    assert f"Pigeonhole is starting on {base}" in output
    assert "first account becomes the administrator" in output


def test_serve_with_several_api_processes(tmp_path: Path) -> None:
    """`serve --workers 2`: two API processes on one port share the data, the database and the generated
    secret, so a token created through one works through the other."""
    live = start_live_server(tmp_path / "data", extra_env={"PIGEONHOLE_API_WORKERS": "2"})
    try:
        token = live.signup_token()
        children = Path(f"/proc/{live.process.pid}/task/{live.process.pid}/children").read_text().split()
        workers = [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) == 2
        bearer = {"Authorization": f"Bearer {token}"}
        answers = [httpx.get(f"{live.base}/api/v1/me", headers=bearer)
                   for _ in range(20)]  # new connections: the kernel spreads them over both processes
        assert {a.status_code for a in answers} == {200}
        # /metrics adds up both processes' figures, whichever of them answers.
        for _ in range(4):
            text = httpx.get(f"{live.base}/metrics").text
            counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                          if line.startswith("pigeonhole_http_requests_total{") and '"/api/v1/me"' in line)
            assert counted == 20
        # A revoked token stops working at once in both processes (each had it in its few-second memory).
        token_id = httpx.get(f"{live.base}/api/v1/tokens", headers=bearer).json()["items"][0]["id"]
        assert httpx.delete(f"{live.base}/api/v1/tokens/{token_id}", headers=bearer).status_code == 204
        after = [httpx.get(f"{live.base}/api/v1/me", headers=bearer).status_code for _ in range(20)]
        assert set(after) == {401}
        assert live.stop() == 0
    finally:
        if live.process.poll() is None:
            live.process.kill()
            live.process.wait()


def test_cli_create_admin_and_migrate(tmp_path: Path) -> None:
    env = {**os.environ, "PIGEONHOLE_DATA_DIR": str(tmp_path / "data"), **FAST_ENV}
    migrated = subprocess.run([str(PIGEONHOLE), "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert migrated.returncode == 0 and "up to date" in migrated.stdout
    made = subprocess.run([str(PIGEONHOLE), "create-admin", "--email", "Root@Example.com", "--password-stdin"],
                          input="a long password\n", env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert "Created administrator root@example.com" in made.stdout
    weak = subprocess.run([str(PIGEONHOLE), "create-admin", "--email", "x@example.com", "--password-stdin"],
                          input="short\n", env=env, capture_output=True, text=True, timeout=60)
    assert weak.returncode != 0 and "too short" in weak.stderr
    bad_settings = subprocess.run([str(PIGEONHOLE), "migrate"], env={**env, "PIGEONHOLE_ENV": "production"},
                                  capture_output=True, text=True, timeout=60)
    assert bad_settings.returncode != 0 and "PIGEONHOLE_SECRET_KEY" in bad_settings.stderr
