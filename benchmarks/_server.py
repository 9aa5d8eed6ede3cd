"""A real ``pigeonhole serve`` process for benchmarks, with a signed-up user and an API token."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

PIGEONHOLE = Path(sys.executable).with_name("pigeonhole")


@dataclass
class Server:
    base: str
    process: subprocess.Popen[bytes]
    token: str
    data_dir: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.token}"},
                            timeout=600, **kwargs)  # type: ignore[arg-type]

    def api_pids(self) -> list[int]:
        """The API process and, with ``--workers`` > 1, its worker processes (not the dispatcher or Ray)."""
        pids = [self.process.pid]
        for child in Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"spawn_main" in cmdline:
                pids.append(int(child))
        return pids

    def peak_rss_mib(self) -> float:
        """High-water mark of the API's resident memory (VmHWM, summed over its worker processes), in MiB."""
        return self._status_mib("VmHWM:")

    def rss_mib(self) -> float:
        """The API's resident memory now (VmRSS, summed over its worker processes), in MiB."""
        return self._status_mib("VmRSS:")

    def _status_mib(self, field: str) -> float:
        total = 0.0
        for pid in self.api_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1]) / 1024
        return total or float("nan")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(extra_env: dict[str, str] | None = None, data_dir: Path | None = None) -> Server:
    """``data_dir``: the server's data directory (kept between runs by the caller); default a new one."""
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="pgh-bench-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {**os.environ, "PIGEONHOLE_DATA_DIR": str(data_dir), **(extra_env or {})}
    process = subprocess.Popen([str(PIGEONHOLE), "serve", "--port", str(port), "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        process.kill()
        raise RuntimeError("the server did not become ready")
    with httpx.Client(base_url=base) as browser:
        account = {"email": "bench@example.com", "password": "benchmark password"}
        if browser.post("/api/v1/auth/signup", json=account).status_code != 201:  # a database kept from a run
            browser.post("/api/v1/auth/login", json=account).raise_for_status()
        token = browser.post("/api/v1/tokens", json={"name": "bench"},
                             headers={"X-CSRF-Token": browser.cookies["pgh_csrf"]}).json()["token"]
    return Server(base=base, process=process, token=token, data_dir=data_dir)
