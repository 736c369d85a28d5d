"""Response id -> channel: bounded by count and by age, persisted by sqlite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from smartproxy.storage.base import RESPONSE_TTL
from smartproxy.storage.memory import MemoryStore
from smartproxy.storage.responses import ResponseBook
from smartproxy.storage.sqlite import SqliteStore

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_book_is_bounded_by_count_and_age() -> None:
    book = ResponseBook(keep=2, ttl=10)
    book.put("r1", "a", 100)
    book.put("r2", "b", 101)
    book.put("r3", "c", 102)
    assert book.get("r1", 103) is None  # the oldest fell off
    assert book.get("r2", 103) == "b" and book.get("r3", 111.9) == "c"
    assert book.get("r3", 112) is None and len(book) == 1


async def test_memory_store_forgets_after_the_ttl() -> None:
    store = MemoryStore(ZoneInfo("UTC"))
    await store.remember_response("resp_1", "a", NOW)
    assert await store.response_channel("resp_1", NOW + timedelta(days=29)) == "a"
    assert await store.response_channel("resp_1", NOW + timedelta(seconds=RESPONSE_TTL)) is None
    assert await store.response_channel("resp_2", NOW) is None


async def test_sqlite_store_keeps_ids_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    store = SqliteStore(path, ZoneInfo("UTC"), clock=lambda: NOW)
    await store.start()
    await store.remember_response("resp_1", "a", NOW)
    await store.remember_response("resp_old", "b", NOW - timedelta(days=31))
    await store.close()
    again = SqliteStore(path, ZoneInfo("UTC"), clock=lambda: NOW)
    await again.start()
    try:
        assert await again.response_channel("resp_1", NOW + timedelta(days=1)) == "a"
        assert await again.response_channel("resp_old", NOW) is None
        assert await again.response_channel("resp_1", NOW + timedelta(days=31)) is None
    finally:
        await again.close()
