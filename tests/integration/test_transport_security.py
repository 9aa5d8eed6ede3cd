"""Transport and secrets, on a real ``pigeonhole serve --certfile --keyfile`` process: HTTPS with HSTS and Secure
cookies, no secret in any log line (debug level), the embedded Ray runtime reachable from this machine only,
and CLI errors a person can act on when the certificate is wrong."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.live_server import FAST_ENV, PIGEONHOLE, free_port

PASSWORD = "plum-sunrise-7 harbour lantern"  # distinctive, so finding it anywhere in the logs means a leak
WRONG_PASSWORD = "wrong-kettle-4 meadow"
RAY_DASHBOARD_PORT = 8265


@dataclass
class TlsServer:
    base: str
    process: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    context: ssl.SSLContext

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, verify=self.context)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, its own trust anchor (as a private CA would be).

    With ``cryptography`` (installed with Ray's dependencies), else with the ``openssl`` command."""
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    try:
        import cryptography  # noqa: F401
    except ImportError:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "1", "-subj", "/CN=pigeonhole test", "-keyout", str(keyfile), "-out", str(certfile),
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-addext", "basicConstraints=critical,CA:TRUE",
                        "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
                        "-addext", "extendedKeyUsage=serverAuth"], check=True, capture_output=True)
    else:
        _write_with_cryptography(certfile, keyfile)
    keyfile.chmod(0o600)
    return certfile, keyfile


def _write_with_cryptography(certfile: Path, keyfile: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pigeonhole test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tls_files: tuple[Path, Path]) -> Iterator[TlsServer]:
    root = tmp_path_factory.mktemp("tls-server")
    certfile, keyfile = tls_files
    port, log = free_port(), root / "server.log"
    env = {**os.environ, "PIGEONHOLE_DATA_DIR": str(root / "data"), **FAST_ENV}
    with log.open("wb") as sink:  # a file, not a pipe: debug output must never block the server
        process = subprocess.Popen([str(PIGEONHOLE), "serve", "--port", str(port), "--log-level", "debug",
                                    "--certfile", str(certfile), "--keyfile", str(keyfile)],
                                   env=env, stdout=sink, stderr=subprocess.STDOUT)
    live = TlsServer(base=f"https://127.0.0.1:{port}", process=process, log=log, data_dir=root / "data",
                     context=ssl.create_default_context(cafile=str(certfile)))
    try:
        _wait_ready(live)
        yield live
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(live: TlsServer, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if live.process.poll() is not None:
            raise AssertionError(f"server exited early:\n{live.output()}")
        try:
            if httpx.get(f"{live.base}/readyz", verify=live.context, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"server did not become ready:\n{live.output()}")


def test_serves_https_with_hsts_and_secure_cookies(server: TlsServer) -> None:
    with server.client() as browser:
        health = browser.get("/healthz")
        signup = browser.post("/api/v1/auth/signup", json={"email": "tls@example.com", "password": PASSWORD})
    assert health.status_code == 200 and health.url.scheme == "https"
    assert health.headers["strict-transport-security"] == "max-age=31536000"
    assert "frame-ancestors 'none'" in health.headers["content-security-policy"]
    assert signup.status_code == 201, signup.text
    cookies = signup.headers.get_list("set-cookie")
    assert len(cookies) == 2 and all("; secure" in c.lower() for c in cookies)
    assert f"Pigeonhole is starting on {server.base}" in server.output()


def test_plain_http_is_not_served_on_the_tls_port(server: TlsServer) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.base.replace("https://", "http://") + "/healthz", timeout=5).raise_for_status()


def test_no_secret_reaches_the_logs(server: TlsServer) -> None:
    with server.client() as browser:
        signup = browser.post("/api/v1/auth/signup", json={"email": "logs@example.com", "password": PASSWORD})
        assert signup.status_code == 201, signup.text
        signup_cookies = {c: browser.cookies[c] for c in ("pgh_session", "pgh_csrf")}
        created = browser.post("/api/v1/tokens", json={"name": "logs"},
                               headers={"X-CSRF-Token": browser.cookies["pgh_csrf"]})
        assert created.status_code == 201, created.text
        token = created.json()["token"]
        browser.cookies.clear()
        wrong = browser.post("/api/v1/auth/login", json={"email": "logs@example.com", "password": WRONG_PASSWORD})
        assert wrong.status_code == 401
        # The same secrets as form fields and in query strings, as a careless client might send them.
        browser.post("/api/v1/auth/login", data={"email": "logs@example.com", "password": PASSWORD})
        browser.get(f"/api/v1/me?token={token}&password={PASSWORD.replace(' ', '+')}")
        login = browser.post("/api/v1/auth/login", json={"email": "logs@example.com", "password": PASSWORD})
        assert login.status_code == 200
        login_cookies = {c: browser.cookies[c] for c in ("pgh_session", "pgh_csrf")}
        me = browser.get("/api/v1/me", headers={"X-CSRF-Token": login_cookies["pgh_csrf"]})
        assert me.status_code == 200
    with server.client() as script:
        assert script.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert script.get("/api/v1/me", headers={"Authorization": "Bearer pgh_notARealTokenButSecretLooking1"}
                          ).status_code == 401
    time.sleep(1.0)  # access lines are written as responses finish; give the last ones a moment

    output = server.output()
    # Not vacuous: the access log is on at debug level and wrote the request lines, redacted.
    assert "/api/v1/auth/login" in output and "/api/v1/me?token=<redacted>&password=<redacted>" in output
    secrets = {"password": PASSWORD, "wrong password": WRONG_PASSWORD, "token": token,
               "made-up token": "pgh_notARealTokenButSecretLooking1",
               **{f"{name} at sign-up": value for name, value in signup_cookies.items()},
               **{f"{name} at sign-in": value for name, value in login_cookies.items()}}
    for what, value in secrets.items():
        assert value not in output, f"the {what} appears in the server's output"
        assert value.replace(" ", "+") not in output, f"the {what} (form-encoded) appears in the server's output"
    for path in (p for p in server.data_dir.rglob("*") if p.is_file()):  # log files, and everything else there
        content = path.read_bytes()
        for what, value in secrets.items():
            # The database keeps the CSRF token with its session (double submit, see architecture.md): by design.
            # Passwords, tokens and session secrets are stored only as hashes, so they never appear there.
            if path.name.startswith("pigeonhole.db") and "pgh_csrf" in what:
                continue
            assert value.encode() not in content, f"the {what} appears in {path}"


def test_the_embedded_ray_runtime_listens_on_loopback_only(server: TlsServer) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("reads listening sockets from /proc")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # the dispatcher starts Ray after the API is ready
        commands = [_command(pid) for pid in _descendants(server.process.pid)]
        if any("gcs_server" in c for c in commands) and any("raylet" in c for c in commands):
            break
        time.sleep(1)
    else:
        raise AssertionError("the local Ray runtime did not start")
    time.sleep(5)  # its agents open their ports a moment after the raylet starts

    pids = _descendants(server.process.pid)
    sockets = _listening_sockets(pids)
    ray_sockets = [s for s in sockets if "gcs_server" in s[0] or "raylet" in s[0]]
    assert ray_sockets, f"no Ray socket found among {sockets}"  # not vacuous: the GCS and raylet listen
    exposed = [s for s in sockets if not _is_loopback(s[1])]
    assert not exposed, f"listening beyond this machine: {exposed}"
    assert not [s for s in sockets if s[2] == RAY_DASHBOARD_PORT], "the Ray dashboard is running"


def test_serve_refuses_half_a_tls_configuration(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    certfile, keyfile = tls_files
    only_cert = _serve(tmp_path, "--certfile", str(certfile))
    assert only_cert.returncode != 0 and "give --certfile and --keyfile" in only_cert.stderr
    only_key = _serve(tmp_path, extra_env={"PIGEONHOLE_TLS_KEYFILE": str(keyfile)})
    assert only_key.returncode != 0 and "together" in only_key.stderr


def test_serve_explains_unusable_certificate_files(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    certfile, keyfile = tls_files
    missing = _serve(tmp_path, "--certfile", str(tmp_path / "nope.pem"), "--keyfile", str(keyfile))
    assert missing.returncode != 0 and "nope.pem does not exist or cannot be read" in missing.stderr
    other_key = write_self_signed(tmp_path)[1]
    mismatched = _serve(tmp_path, "--certfile", str(certfile), "--keyfile", str(other_key))
    assert mismatched.returncode != 0 and "the key must belong to the certificate" in mismatched.stderr
    not_pem = tmp_path / "garbage.pem"
    not_pem.write_text("this is not a certificate")
    garbage = _serve(tmp_path, "--certfile", str(not_pem), "--keyfile", str(keyfile))
    assert garbage.returncode != 0 and "could not be loaded" in garbage.stderr
    assert "Traceback" not in missing.stderr + mismatched.stderr + garbage.stderr


def _serve(tmp_path: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIGEONHOLE_DATA_DIR": str(tmp_path / "data"), **FAST_ENV, **(extra_env or {})}
    return subprocess.run([str(PIGEONHOLE), "serve", "--port", str(free_port()), *args], env=env,
                          capture_output=True, text=True, timeout=60)


# --- listening sockets from /proc (Linux): no extra dependency, and sees Ray's C++ processes too -------------

def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    except OSError:
        pass
    return inodes


def _address(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """/proc/net/tcp{,6} write addresses as host-order 32-bit words in hex."""
    ip_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(ip_hex)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words), int(port_hex, 16)


def _listening_sockets(pids: list[int]) -> list[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(command, address, port) of every TCP socket in LISTEN state that one of ``pids`` holds."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in owner:  # 0A: LISTEN
                ip, port = _address(fields[1])
                found.append((_command(owner[fields[9]])[:80], ip, port))
    return found


def _is_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 (an IPv6 socket bound to IPv4 loopback)
    return (mapped or ip).is_loopback
