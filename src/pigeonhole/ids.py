"""Opaque, time-ordered ids (ULID layout: 48-bit milliseconds + 80 random bits, Crockford base32).

Ordering ids by value orders rows by creation time, so keyset pagination needs only the id.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id() -> str:
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def looks_like_id(value: str) -> bool:
    return len(value) == 26 and all(c in _ALPHABET for c in value)
