"""The URL fetcher against a real HTTP server on 127.0.0.1: guards, caps and timeouts."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from pigeonhole.storage.fetch import FetchPolicy, FetchRefused, fetch
from tests.factories import png_bytes
from tests.local_http import local_http

IMAGE = png_bytes(seed=1)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with local_http({"/cat.png": ("image/png", IMAGE), "/page": ("text/html", b"<html>not an image</html>")}) as url:
        yield url


LOCAL = FetchPolicy(allow_private=True, timeout_s=2.0, max_bytes=1024 * 1024)


def _refused(url: str, policy: FetchPolicy = LOCAL) -> str:
    with pytest.raises(FetchRefused) as info:
        fetch(url, policy)
    assert info.value.sentence.endswith(".")
    return info.value.code


def test_fetches_an_image_and_follows_redirects(server: str) -> None:
    got = fetch(f"{server}/cat.png", LOCAL)
    assert got.body.read() == IMAGE and got.content_type == "image/png"
    redirected = fetch(f"{server}/redirect", LOCAL)
    assert redirected.body.read() == IMAGE and redirected.url.endswith("/cat.png")


def test_private_addresses_are_refused_by_default(server: str) -> None:
    strict = FetchPolicy(timeout_s=2.0)
    assert _refused(f"{server}/cat.png", strict) == "private_address"
    for url in ("http://10.0.0.1/x.png", "http://169.254.169.254/latest/meta-data", "http://[::1]/x",
                "http://0.0.0.0/x", "http://[::ffff:127.0.0.1]/x"):
        assert _refused(url, strict) == "private_address", url


def test_bad_urls_and_answers(server: str) -> None:
    assert _refused("ftp://example.com/x.png") == "bad_url"
    assert _refused("file:///etc/passwd") == "bad_url"
    assert _refused("http:///nohost") == "bad_url"
    assert _refused(f"{server}/page") == "not_an_image"
    assert _refused(f"{server}/missing") == "http_error"
    assert _refused(f"{server}/loop") == "too_many_redirects"
    assert _refused("http://no-such-host.invalid/x.png") == "unreachable"


def test_slow_and_oversized_responses_are_cut_off(server: str) -> None:
    started = time.monotonic()
    assert _refused(f"{server}/slow", FetchPolicy(allow_private=True, timeout_s=1.0)) == "timeout"
    assert time.monotonic() - started < 3
    assert _refused(f"{server}/huge") == "too_large"
