"""API token and session secrets.

Tokens look like ``pgh_<30 base62 chars><6 char checksum>``: the fixed prefix and the CRC32
checksum let secret scanners recognise a leaked Pigeonhole token without asking the server.
Only an HMAC (keyed with the server secret) of a token or session secret is stored, so a
database leak alone does not let anyone sign in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

TOKEN_PREFIX = "pgh_"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_CHARS = 30  # 30 base62 chars ≈ 178 bits of entropy
_CHECKSUM_CHARS = 6
TOKEN_LENGTH = len(TOKEN_PREFIX) + _RANDOM_CHARS + _CHECKSUM_CHARS
DISPLAY_PREFIX_LENGTH = len(TOKEN_PREFIX) + 8


def _base62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        chars.append(_BASE62[rem])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_CHARS)


def new_api_token() -> str:
    body = "".join(secrets.choice(_BASE62) for _ in range(_RANDOM_CHARS))
    return f"{TOKEN_PREFIX}{body}{_checksum(body)}"


def is_well_formed_token(token: str) -> bool:
    """True when the token has our shape and a valid checksum (no database needed)."""
    if len(token) != TOKEN_LENGTH or not token.startswith(TOKEN_PREFIX):
        return False
    body = token[len(TOKEN_PREFIX) : len(TOKEN_PREFIX) + _RANDOM_CHARS]
    checksum = token[len(TOKEN_PREFIX) + _RANDOM_CHARS :]
    if any(c not in _BASE62 for c in body):
        return False
    return hmac.compare_digest(checksum, _checksum(body))


def display_prefix(token: str) -> str:
    return token[:DISPLAY_PREFIX_LENGTH]


def keyed_digest(secret_key: bytes, value: str) -> str:
    return hmac.new(secret_key, value.encode(), hashlib.sha256).hexdigest()


def new_session_secret() -> str:
    return secrets.token_urlsafe(32)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)
