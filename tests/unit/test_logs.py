"""The log redaction filter: every shape a secret can take in a log line, and records that stay usable."""

from __future__ import annotations

import io
import logging

import pytest

from pigeonhole.logs import MARK, RedactSecrets, redact, uvicorn_log_config

TOKEN = "pgh_" + "Zx9" * 10 + "AbCdEf"


@pytest.mark.parametrize(("line", "secret"), [
    (f"GET /api/v1/me?token={TOKEN}&page=2 HTTP/1.1", TOKEN),
    ("GET /x?access_token=abc123def&page=2", "abc123def"),
    (f"calling with {TOKEN}", TOKEN),
    ('{"email": "a@example.com", "password": "a long \\"quoted\\" password"}', "long"),
    ("{'email': 'a@example.com', 'new_password': 'hunter2 hunter2'}", "hunter2"),
    ("email=a%40example.com&password=a+long+password&x=1", "a+long+password"),
    (f"{{'authorization': 'Bearer {TOKEN}', 'host': 'example.com'}}", TOKEN),
    ("[(b'authorization', b'Basic dXNlcjpwYXNz'), (b'host', b'x')]", "dXNlcjpwYXNz"),
    ("Authorization: Bearer sometoken", "sometoken"),
    ("Cookie: pgh_session=sess-value; pgh_csrf=csrf-value", "sess-value"),
    ("Cookie: pgh_session=sess-value; pgh_csrf=csrf-value", "csrf-value"),
    ("set-cookie: pgh_session=sess-value; HttpOnly; Path=/", "sess-value"),
    ("cookies {'pgh_session': 'sess-value'}", "sess-value"),
    ("X-CSRF-Token: csrf-value", "csrf-value"),
    ("PIGEONHOLE_SECRET_KEY=very-secret-key-value", "very-secret-key-value"),
    ("connecting to postgresql://pigeon:db-pass@db:5432/pigeonhole", "db-pass"),
])
def test_secrets_are_redacted(line: str, secret: str) -> None:
    redacted = redact(line)
    assert secret not in redacted and MARK in redacted
    assert redact(redacted) == redacted  # two handlers may filter the same record


def test_harmless_text_is_left_alone() -> None:
    for line in ("token pgh_Ab12Cd34 created (prefix only)", "token_id=01J9ZX password_hash updated",
                 "the pgh_session cookie expired", 'POST /api/v1/tokens HTTP/1.1" 201 Created'):
        assert redact(line) == line


def _emit(record_logger: str, message: str, *args: object, exc: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger(record_logger)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        if exc:
            try:
                raise ValueError(f"bad header Authorization: Bearer {TOKEN}")
            except ValueError:
                logger.exception(message, *args)
        else:
            logger.info(message, *args)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_arguments_are_redacted_once_formatted() -> None:
    written = _emit("pigeonhole.test", "sign-in body password=%s for %s (%d tries)", "hunter2", "a@example.com", 3)
    assert written == f"sign-in body password={MARK} for a@example.com (3 tries)\n"


def test_tracebacks_are_redacted() -> None:
    written = _emit("pigeonhole.test", "request failed", exc=True)
    assert "Traceback" in written and "ValueError" in written and TOKEN not in written


def test_uvicorn_access_log_keeps_its_arguments() -> None:
    """uvicorn's access formatter unpacks (client, method, path, version, status): they must survive."""
    from uvicorn.logging import AccessFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets())
    handler.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False))
    logger = logging.getLogger("uvicorn.access")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", f"/api/v1/me?token={TOKEN}", "1.1", 401)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    assert stream.getvalue() == f'127.0.0.1:5000 - "GET /api/v1/me?token={MARK} HTTP/1.1" 401 Unauthorized\n'


def test_serve_log_config_redacts_in_every_handler() -> None:
    config = uvicorn_log_config("debug")
    assert all("redact" in handler["filters"] for handler in config["handlers"].values())
    assert config["filters"]["redact"] == {"()": RedactSecrets}
    assert config["loggers"]["pigeonhole"] == {"handlers": ["default"], "level": "DEBUG", "propagate": False}
    assert config["root"]["handlers"] == ["default"]  # other libraries' warnings pass the filter too
