"""Fetching images from user-supplied URLs without letting users reach internal services (SSRF).

Every address a host name resolves to must be public unless private addresses are allowed;
the connection then goes to the vetted IP itself (the Host header and TLS SNI keep the name), so
a DNS answer that changes between the check and the connect (DNS rebinding) cannot redirect it.
Redirects are followed by hand and each hop is vetted again. Sizes are capped while streaming,
time is capped per read and in total, and only image content types are accepted.
"""

from __future__ import annotations

import ipaddress
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import IO
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

MAX_REDIRECTS = 5
ACCEPTED_CONTENT_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


class FetchRefused(Exception):
    """The URL could not be fetched; ``sentence`` says why in plain words, ``code`` for programs."""

    def __init__(self, code: str, sentence: str):
        super().__init__(sentence)
        self.code = code
        self.sentence = sentence


@dataclass(frozen=True)
class FetchPolicy:
    allow_private: bool = False
    timeout_s: float = 20.0
    max_bytes: int = 50 * 1024 * 1024
    user_agent: str = "Pigeonhole image fetcher"


@dataclass
class Fetched:
    url: str  # the final URL after redirects
    content_type: str
    size: int
    body: IO[bytes]  # spooled to disk past a few MB; the caller closes it


def _address_allowed(address: str, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return False
    return allow_private or ip.is_global


def _vet(url: str, policy: FetchPolicy) -> tuple[str, str, int, str]:
    """(scheme, host, port, ip) for a URL that may be fetched, or FetchRefused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchRefused("bad_url", "Only http:// and https:// addresses can be fetched.")
    if not parts.hostname:
        raise FetchRefused("bad_url", "This address has no host name.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise FetchRefused("bad_url", "This address has an invalid port.") from exc
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchRefused("unreachable", f"The host '{parts.hostname}' could not be found.") from exc
    addresses = sorted({info[4][0] for info in infos})
    if not addresses:
        raise FetchRefused("unreachable", f"The host '{parts.hostname}' could not be found.")
    if not all(_address_allowed(a, policy.allow_private) for a in addresses):
        raise FetchRefused("private_address", "This address points to a private or local network, which this "
                                              "server is not allowed to fetch from.")
    return parts.scheme, parts.hostname, port, addresses[0]


def _pinned_url(url: str, ip: str, port: int) -> str:
    parts = urlsplit(url)
    host = f"[{ip}]" if ":" in ip else ip
    return urlunsplit((parts.scheme, f"{host}:{port}", parts.path or "/", parts.query, ""))


def fetch(url: str, policy: FetchPolicy, *, client: httpx.Client | None = None) -> Fetched:
    """Download one image; raises FetchRefused with a reason for anything unusable."""
    deadline = time.monotonic() + policy.timeout_s
    own_client = client is None
    client = client or httpx.Client(timeout=httpx.Timeout(policy.timeout_s), follow_redirects=False)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            scheme, host, port, ip = _vet(url, policy)
            default_port = 443 if scheme == "https" else 80
            headers = {"Host": host if port == default_port else f"{host}:{port}", "User-Agent": policy.user_agent,
                       "Accept": "image/*"}
            request = client.build_request("GET", _pinned_url(url, ip, port), headers=headers,
                                           extensions={"sni_hostname": host, "timeout": _timeouts(deadline)})
            try:
                response = client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise FetchRefused("timeout", "The server took too long to answer.") from exc
            except httpx.HTTPError as exc:
                raise FetchRefused("unreachable", "The server could not be reached.") from exc
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                return _read(url, response, policy, deadline)
            finally:
                response.close()
        raise FetchRefused("too_many_redirects", "The address redirects too many times.")
    finally:
        if own_client:
            client.close()


def _timeouts(deadline: float) -> dict[str, float]:
    left = max(0.1, deadline - time.monotonic())
    return {"connect": left, "read": left, "write": left, "pool": left}


def _read(url: str, response: httpx.Response, policy: FetchPolicy, deadline: float) -> Fetched:
    if response.status_code != 200:
        raise FetchRefused("http_error", f"The server answered with status {response.status_code}.")
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and not content_type.startswith(ACCEPTED_CONTENT_TYPES):
        raise FetchRefused("not_an_image", f"The address returned '{content_type}', not an image.")
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
        raise FetchRefused("too_large", f"The image is larger than {policy.max_bytes // 2**20} MiB.")
    body: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=4 * 1024 * 1024)  # noqa: SIM115
    size = 0
    try:
        for chunk in response.iter_bytes():  # as data arrives, so a trickle meets the deadline
            size += len(chunk)
            if size > policy.max_bytes:
                raise FetchRefused("too_large", f"The image is larger than {policy.max_bytes // 2**20} MiB.")
            if time.monotonic() > deadline:
                raise FetchRefused("timeout", "The server took too long to send the image.")
            body.write(chunk)
    except httpx.TimeoutException as exc:
        body.close()
        raise FetchRefused("timeout", "The server took too long to send the image.") from exc
    except httpx.HTTPError as exc:
        body.close()
        raise FetchRefused("unreachable", "The download was interrupted.") from exc
    except BaseException:
        body.close()
        raise
    body.seek(0)
    return Fetched(url=url, content_type=content_type, size=size, body=body)
