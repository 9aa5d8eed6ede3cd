"""A real ``pigeonhole serve`` process on a free port, shared by client and CLI tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

PIGEONHOLE = Path(sys.executable).with_name("pigeonhole")  # the installed console script
# Cheap Argon2, and one API process: a second one starts only after the dispatcher and costs a whole app import
# (a test server was ready in 3.3 s with one, 11.6 s with two on this 2-core machine). Several API processes,
# the default on a machine with more cores, have their own test (test_serve.py).
FAST_ENV = {"PIGEONHOLE_ARGON2_MEMORY_KIB": "1024", "PIGEONHOLE_ARGON2_TIME_COST": "1", "PIGEONHOLE_API_WORKERS": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    base: str
    process: subprocess.Popen[str]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def crash(self) -> None:
        """SIGKILL the server and every process it started (its API processes, the dispatcher), as a power cut
        would: killing only the first would leave its API worker processes running."""
        def tree(pid: int) -> list[int]:
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                return [pid]
            return [pid] + [p for child in children for p in tree(int(child))]

        for pid in tree(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def signup_token(self, email: str = "owner@example.com", scopes: list[str] | None = None) -> str:
        with httpx.Client(base_url=self.base) as browser:
            response = browser.post("/api/v1/auth/signup", json={"email": email, "password": "a long password"})
            if response.status_code == 409:
                response = browser.post("/api/v1/auth/login", json={"email": email, "password": "a long password"})
            response.raise_for_status()
            body = {"name": "test", **({"scopes": scopes} if scopes else {})}
            created = browser.post("/api/v1/tokens", json=body, headers={"X-CSRF-Token": browser.cookies["pgh_csrf"]})
            created.raise_for_status()
            return created.json()["token"]


def start_live_server(data_dir: Path, database_url: str | None = None, extra_env: dict[str, str] | None = None,
                      timeout_s: float = 90) -> LiveServer:
    port = free_port()
    env = {**os.environ, "PIGEONHOLE_DATA_DIR": str(data_dir), **FAST_ENV, **(extra_env or {})}
    if database_url:
        env["PIGEONHOLE_DATABASE_URL"] = database_url
    process = subprocess.Popen([str(PIGEONHOLE), "serve", "--port", str(port), "--log-level", "warning"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early:\n{process.stdout.read() if process.stdout else ''}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return LiveServer(base=base, process=process)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError("server did not become ready")
