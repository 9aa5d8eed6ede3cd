"""Only one dispatcher acts at a time: the DB lease (no Ray needed)."""

from __future__ import annotations

import time

from pigeonhole.compute import lease
from pigeonhole.db.engine import create_db_engine, create_session_factory
from pigeonhole.db.migrate import upgrade


def test_one_holder_at_a_time_and_an_expired_lease_is_taken_over(database_url: str) -> None:
    engine = create_db_engine(database_url)
    upgrade(engine)
    sessions = create_session_factory(engine)
    try:
        with sessions() as db:
            assert lease.try_acquire(db, "one", ttl_s=0.5)
            assert not lease.try_acquire(db, "two", ttl_s=0.5)
            assert lease.try_acquire(db, "one", ttl_s=0.5), "the holder renews"
            assert lease.holder_of(db) == "one"
        time.sleep(0.6)  # "one" crashed and stopped renewing
        with sessions() as db:
            assert lease.try_acquire(db, "two", ttl_s=5)
            assert not lease.try_acquire(db, "one", ttl_s=5)
            lease.release(db, "two")  # a clean stop hands over at once
            assert lease.holder_of(db) is None
            assert lease.try_acquire(db, "one", ttl_s=5)
    finally:
        engine.dispose()
