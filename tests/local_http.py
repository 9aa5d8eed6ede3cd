"""A tiny HTTP server on 127.0.0.1 for fetch and import tests: images, a web page, 404s, redirects,
a redirect loop, a slow trickle (``/slow…``) and an oversized body without Content-Length (``/huge…``)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextlib.contextmanager
def local_http(files: dict[str, tuple[str, bytes]]) -> Iterator[str]:
    """Serve ``files`` (path -> (content type, body)) plus the special paths; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client hangs up on purpose
                self._answer()

        def _answer(self) -> None:
            if self.path in files:
                kind, body = files[self.path]
                self._head(200, kind, len(body))
                self.wfile.write(body)
            elif self.path in ("/redirect", "/loop"):
                self.send_response(302)
                self.send_header("Location", "/loop" if self.path == "/loop" else next(iter(files)))
                self.end_headers()
            elif self.path.startswith("/slow"):
                self._head(200, "image/png")
                for _ in range(40):
                    self.wfile.write(b"x" * 10)
                    self.wfile.flush()
                    time.sleep(0.1)
            elif self.path.startswith("/huge"):
                self._head(200, "image/png")  # no Content-Length: the size is counted while streaming
                for _ in range(100):
                    self.wfile.write(b"\x00" * 65536)
            else:
                self._head(404, "text/plain", 4)
                self.wfile.write(b"nope")

        def _head(self, status: int, kind: str, length: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            if length is not None:
                self.send_header("Content-Length", str(length))
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
