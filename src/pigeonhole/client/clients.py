"""``Client`` (blocking) and ``AsyncClient`` (asyncio): the same methods, run over httpx."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from pigeonhole.client.calls import Call, Plan, Sleep
from pigeonhole.client.errors import ConnectionFailed, error_for
from pigeonhole.client.methods import Methods

RETRY_DELAYS_S = (0.5, 1.0, 2.0)


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _content_headers(call: Call) -> dict[str, str] | None:
    return {"Content-Type": "application/octet-stream"} if call.content is not None else None


def _rewind(call: Call) -> None:
    """Files of a retried request are read again from the start."""
    for _, (_, body, _) in call.files or []:
        if hasattr(body, "seek"):
            body.seek(0)


def _result(response: httpx.Response, call: Call) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        raise error_for(response.status_code, body, response.headers.get("Retry-After"))
    if call.download_to is not None or response.status_code == 204 or not response.content:
        return None
    return response.json()


class Client(Methods):
    """Blocking client. ``Client("http://127.0.0.1:8000", token="pgh_…")``."""

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 120.0, retries: int = 3,
                 transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        self.retries = retries
        self._http = httpx.Client(base_url=self.url, headers=_headers(token), timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self, plan: Plan) -> Any:
        try:
            step = next(plan)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = plan.send(None)
                else:
                    step = plan.send(self._send(step))
        except StopIteration as done:
            return done.value

    def _send(self, call: Call) -> Any:
        attempts = self.retries + 1 if call.idempotent else 1
        for attempt in range(attempts):
            try:
                if call.download_to is not None:
                    with self._http.stream(call.method, call.path, params=call.params) as response:
                        if response.status_code < 400:
                            with call.download_to.open("wb") as out:
                                for chunk in response.iter_bytes():
                                    out.write(chunk)
                        else:
                            response.read()
                        return _result(response, call)
                response = self._http.request(call.method, call.path, params=call.params, json=call.json,
                                              files=call.files, data=call.data, content=call.content,
                                              headers=_content_headers(call))
                return _result(response, call)
            except httpx.TransportError as exc:
                if attempt + 1 >= attempts:
                    raise ConnectionFailed(f"Could not reach Pigeonhole at {self.url}: {exc}") from exc
                time.sleep(RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)])
                _rewind(call)
        raise AssertionError("unreachable")


class AsyncClient(Methods):
    """asyncio client with the same methods as :class:`Client` (each returns an awaitable)."""

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 120.0, retries: int = 3,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.url = url.rstrip("/")
        self.retries = retries
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(token), timeout=timeout_s,
                                       transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _run(self, plan: Plan) -> Any:  # type: ignore[override]
        try:
            step = next(plan)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = plan.send(None)
                else:
                    step = plan.send(await self._send(step))
        except StopIteration as done:
            return done.value

    async def _send(self, call: Call) -> Any:
        attempts = self.retries + 1 if call.idempotent else 1
        for attempt in range(attempts):
            try:
                if call.download_to is not None:
                    async with self._http.stream(call.method, call.path, params=call.params) as response:
                        if response.status_code < 400:
                            with call.download_to.open("wb") as out:
                                async for chunk in response.aiter_bytes():
                                    out.write(chunk)
                        else:
                            await response.aread()
                        return _result(response, call)
                response = await self._http.request(call.method, call.path, params=call.params, json=call.json,
                                                    files=call.files, data=call.data, content=call.content,
                                                    headers=_content_headers(call))
                return _result(response, call)
            except httpx.TransportError as exc:
                if attempt + 1 >= attempts:
                    raise ConnectionFailed(f"Could not reach Pigeonhole at {self.url}: {exc}") from exc
                await asyncio.sleep(RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)])
                _rewind(call)
        raise AssertionError("unreachable")
