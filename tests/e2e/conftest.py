"""Browser tests: Debian's Chromium, driven by Playwright, against a real ``pigeonhole serve`` on 127.0.0.1.

They need the built web app (``make web``) and a Chromium binary (``apt-get install -y chromium``); without
either they are skipped with the reason. Screenshots go to ``test-output/e2e/`` (or ``$PIGEONHOLE_E2E_OUTPUT``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import SHARED_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
PIGEONHOLE = Path(sys.executable).with_name("pigeonhole")
WEB_DIST = REPO_ROOT / "src" / "pigeonhole" / "web_dist"
OUTPUT = Path(os.environ.get("PIGEONHOLE_E2E_OUTPUT", REPO_ROOT / "test-output" / "e2e"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = _chromium()
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium); .ci/run installs it")
    if not (WEB_DIST / "index.html").is_file():
        pytest.skip("the web app is not built into src/pigeonhole/web_dist: run `make web`")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, chromium_path: str) -> Iterator[str]:
    data = tmp_path_factory.mktemp("e2e-data")
    port = _free_port()
    env = {**os.environ, "PIGEONHOLE_DATA_DIR": str(data), "PIGEONHOLE_ARGON2_MEMORY_KIB": "1024",
           "PIGEONHOLE_ARGON2_TIME_COST": "1", "PIGEONHOLE_USAGE_FLUSH_INTERVAL_S": "0.2"}
    env.pop("PIGEONHOLE_DATABASE_URL", None)
    weights = SHARED_DIR / "weights"
    if "PIGEONHOLE_WEIGHTS_DIR" not in env and weights.is_dir():  # pretrained extractors: training takes seconds
        env["PIGEONHOLE_WEIGHTS_DIR"] = str(weights)
    log = (data / "server.log").open("w")
    process = subprocess.Popen([str(PIGEONHOLE), "serve", "--host", "127.0.0.1", "--port", str(port),
                                "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"server exited early:\n{(data / 'server.log').read_text()}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not become ready")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# Module scope: Playwright's sync API runs an event loop on this thread until it stops, so it must stop
# before other tests (that call asyncio.run) run.
@pytest.fixture(scope="module")
def browser(chromium_path: str):  # type: ignore[no-untyped-def]
    sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def shots() -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for old in OUTPUT.glob("*.png"):
        old.unlink()
    return OUTPUT
