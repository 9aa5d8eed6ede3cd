"""The token format lets scanners recognise leaked tokens offline."""

from __future__ import annotations

from pigeonhole.auth.secrets import TOKEN_LENGTH, is_well_formed_token, keyed_digest, new_api_token
from pigeonhole.ids import looks_like_id, new_id


def test_tokens_are_unique_prefixed_and_checksummed() -> None:
    tokens = {new_api_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert token.startswith("pgh_") and len(token) == TOKEN_LENGTH and is_well_formed_token(token)


def test_any_single_character_change_breaks_the_checksum() -> None:
    token = new_api_token()
    for i in range(4, len(token)):
        replacement = "a" if token[i] != "a" else "b"
        assert not is_well_formed_token(token[:i] + replacement + token[i + 1:])
    assert not is_well_formed_token(token + "x") and not is_well_formed_token("ghp_" + token[4:])


def test_digest_depends_on_the_server_secret() -> None:
    token = new_api_token()
    assert keyed_digest(b"one", token) != keyed_digest(b"two", token)


def test_ids_are_time_ordered() -> None:
    import time

    first = new_id()
    time.sleep(0.002)
    second = new_id()
    assert first < second and looks_like_id(first) and not looks_like_id("nope")
