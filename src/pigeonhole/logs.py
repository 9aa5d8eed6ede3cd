"""Logging set-up for the service's processes, with secrets redacted from every line.

No code path logs a secret on purpose, but log lines are built from things people send: a request line
with ``?token=…``, an exception message quoting a header, a library's debug output. The filter here is the
net under all of them: API tokens (``pgh_…``), ``Authorization``/``Cookie`` header values, session and CSRF
cookies, passwords and other secret fields in any form (JSON, Python reprs, form or query encoding), and
passwords inside URLs are replaced by ``<redacted>`` before a line is written anywhere.

It is a *handler* filter: a logger's own filters do not see records from its child loggers, while every
record, whichever logger made it, passes the handler that writes it.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

MARK = "<redacted>"
_QUOTED = r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'"
# `key: value`, `key=value`, `"key": "value"`, `'key': 'value'`, `(b'key', b'value')`.
_SEPARATOR = r"[\"']?\s*[:=,]\s*b?"

# Pigeonhole API tokens (pgh_ + 36 base62 characters); shorter runs are display prefixes (pgh_Ab12Cd34),
# cookie names (pgh_session) and the like, which are not secret. Truncated or mistyped tokens still match.
_TOKEN = re.compile(r"pgh_[0-9A-Za-z]{16,}")
# Whole header values: the scheme and credentials of Authorization, every cookie of Cookie / Set-Cookie.
_HEADER = re.compile(rf"(?i)\b((?:proxy-)?authorization|cookie|set-cookie|x-csrf-token)({_SEPARATOR})"
                     rf"({_QUOTED}|[^\r\n]+)")
# Single fields, wherever they appear: JSON bodies, dict reprs, form bodies, query strings.
_FIELD = re.compile(rf"(?i)\b((?:[a-z0-9]+[_-]){{0,4}}(?:password|passwd|passphrase|secret|secret[_-]?key|token|"
                    rf"api[_-]?key|pgh_session|pgh_csrf))\b([\"']?\s*[:=]\s*b?)({_QUOTED}|[^\s&;,'\"}}\])]+)")
# Passwords in URLs: postgresql://user:password@host/db, redis://:password@host.
# Bounded repeats: a pathological line must not make the filter slow (each try stops after a few characters).
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,30}://[^:/@\s'\"]{0,256}:)[^@\s'\"/]{1,1024}@")


def _masked(match: re.Match[str]) -> str:
    """Key and separator kept (they say what was there), the value replaced, its quotes kept."""
    value = match.group(3)
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group(1)}{match.group(2)}{quote}{MARK}{quote}"


def redact(text: str) -> str:
    """``text`` with every secret it contains replaced by ``<redacted>`` (applying it twice changes nothing)."""
    if not text:
        return text
    text = _TOKEN.sub(f"pgh_{MARK}", text)
    text = _HEADER.sub(_masked, text)
    text = _FIELD.sub(_masked, text)
    return _URL_PASSWORD.sub(rf"\g<1>{MARK}@", text)


# Loggers whose formatter reads the arguments themselves (uvicorn's access log unpacks a 5-tuple): their
# arguments are redacted one by one instead of being merged into the message.
_ARGUMENT_LOGGERS = frozenset({"uvicorn.access"})


def _redact_value(value: Any) -> Any:
    """Numbers stay numbers (uvicorn's access log needs its status code); anything else is text."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(value if isinstance(value, str) else str(value))


class RedactSecrets(logging.Filter):
    """Redacts the message, its arguments, and any traceback or stack attached to a record."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in _ARGUMENT_LOGGERS and isinstance(record.args, tuple):
            record.args = tuple(_redact_value(value) for value in record.args)
        else:
            # The finished message, not template and arguments apart: `password=%s` % "hunter2" only shows
            # what "hunter2" is once formatted (and redacting a template could break its placeholders).
            try:
                message = record.getMessage()
            except Exception:  # a malformed call: let the handler report it, as it would without us
                return True
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set, so the traceback is formatted (and redacted) only here.
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """uvicorn's own logging set-up, plus: every handler redacts, and Pigeonhole's loggers (``pigeonhole.*``)
    and other libraries' warnings are written by the same handler as uvicorn's messages."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {**config.get("filters", {}), "redact": {"()": RedactSecrets}}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "redact"]
    config["loggers"]["pigeonhole"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config


def redact_root_handlers() -> None:
    """For processes without uvicorn (the dispatcher): every handler of the root logger redacts."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(existing, RedactSecrets) for existing in handler.filters):
            handler.addFilter(RedactSecrets())
