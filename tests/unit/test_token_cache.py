"""The few-second memory of who a token belongs to: expiry still counts, and revocation clears it."""

from __future__ import annotations

from datetime import timedelta

from pigeonhole.auth.scopes import Principal, Scope
from pigeonhole.auth.token_cache import TokenCache
from pigeonhole.db.base import utcnow

PRINCIPAL = Principal(user_id="u1", email="a@example.com", is_admin=False, scopes=frozenset({Scope.PREDICT}),
                      token_id="t1")


def test_remembers_within_the_ttl_and_forgets_after(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pigeonhole.auth.token_cache as module

    now = [100.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    cache = TokenCache(ttl_s=5)
    cache.put("d", PRINCIPAL, None)
    now[0] = 104.9
    assert cache.get("d") == PRINCIPAL
    now[0] = 105.1
    assert cache.get("d") is None


def test_an_expired_token_is_never_served_from_memory() -> None:
    cache = TokenCache(ttl_s=60)
    cache.put("d", PRINCIPAL, utcnow() - timedelta(seconds=1))
    assert cache.get("d") is None


def test_clear_and_disabled() -> None:
    cache = TokenCache(ttl_s=60)
    cache.put("d", PRINCIPAL, None)
    cache.clear()
    assert cache.get("d") is None
    off = TokenCache(ttl_s=0)
    off.put("d", PRINCIPAL, None)
    assert off.get("d") is None


def test_a_revocation_in_one_process_is_seen_at_once_by_the_others(tmp_path) -> None:  # type: ignore[no-untyped-def]
    epoch = tmp_path / "run" / "tokens-revoked"
    here, there = TokenCache(ttl_s=60, epoch_file=epoch), TokenCache(ttl_s=60, epoch_file=epoch)
    for cache in (here, there):
        cache.put("d", PRINCIPAL, None)
        assert cache.get("d") == PRINCIPAL
    here.clear()
    assert here.get("d") is None and there.get("d") is None
    there.put("d", PRINCIPAL, None)  # remembered again after a fresh lookup
    assert there.get("d") == PRINCIPAL
