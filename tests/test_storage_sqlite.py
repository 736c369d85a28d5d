"""The sqlite backend: persistence across restarts, the batching writer, queries, write errors."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from smartproxy.storage import Limits, RequestRecord, SqliteStore, StorageError, UsageStore

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOON = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
Opener = Callable[..., Awaitable[SqliteStore]]
SLOW = 60.0  # a flush interval no test waits for: only close()/query()/flush() write


def rec(
    channel: str = "free",
    prompt: int = 10,
    completion: int = 20,
    *,
    at: datetime = NOON,
    key: str = "team-a",
    model: str = "m",
    status: int = 200,
    cost: float = 0.0,
) -> RequestRecord:
    return RequestRecord(
        ts=at.timestamp(),
        request_id=f"req-{at.timestamp()}",
        api_key_name=key,
        channel=channel,
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost=cost,
        status=status,
        latency_ms=12.5,
        stream=True,
        usage_source="estimated",
        error="boom" if status >= 400 else None,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "usage.db"


@pytest.fixture
async def open_store(db: Path) -> AsyncIterator[Opener]:
    """Opens stores on ``db`` and closes whatever a test left open."""
    stores: list[SqliteStore] = []

    async def opener(
        *, interval: float = SLOW, now: datetime = NOON, tz: ZoneInfo | None = None
    ) -> SqliteStore:
        store = SqliteStore(db, tz or UTC, flush_interval=interval, clock=lambda: now)
        await store.start()
        stores.append(store)
        return store

    yield opener
    for store in stores:
        await store.close()


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_the_connection_keeps_a_small_page_cache(open_store: Opener) -> None:
    """512 KiB, not SQLite's 2 MB default: each gateway process writing the log holds it."""
    store = await open_store()
    size = await asyncio.to_thread(store._run, lambda c: c.execute("PRAGMA cache_size").fetchone())
    assert size == (-512,)


async def test_start_creates_folder_and_wal_file(open_store: Opener, db: Path) -> None:
    store = await open_store()
    assert isinstance(store, UsageStore)
    assert db.exists()
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]
    assert store.status() == {
        "backend": "sqlite", "ok": True, "path": str(db), "pending_writes": 0,
        "last_error": None, "last_error_at": None, "write_errors": 0, "dropped_writes": 0,
        "repaired_rows": 0, "rejected_rows": 0, "reservations": 0, "flushing": True,
    }  # fmt: skip


async def test_restart_keeps_counters_totals_and_log(open_store: Opener, db: Path) -> None:
    store = await open_store(tz=SHANGHAI)
    yesterday = NOON - timedelta(days=1)
    await store.settle(None, rec(prompt=1000, completion=0, at=yesterday, cost=1.0), yesterday)
    res = await store.try_reserve("free", 500, Limits(day_tokens=10_000), NOON)
    await store.settle(res, rec(prompt=100, completion=200, cost=0.5), NOON)
    await store.settle(None, rec("paid", 7, 8, status=500), NOON)
    in_flight = await store.try_reserve("free", 4000, Limits(), NOON)
    assert in_flight is not None
    before = await store.usage(["free", "paid"], NOON)
    await store.close()  # the interval is 60 s: only close() can have written these

    again = await open_store(tz=SHANGHAI)
    after = await again.usage(["free", "paid"], NOON)
    free = after["free"]
    assert (free.day_tokens, free.hour_tokens, free.day_requests) == (300, 300, 1)
    assert (free.total_tokens, free.total_requests, free.total_cost) == (1300, 2, 1.5)
    assert (free.total_prompt_tokens, free.total_completion_tokens, free.day_cost) == (
        1100,
        200,
        0.5,
    )
    assert free.day_reserved_tokens == 0  # reservations die with the process that made them
    assert before["free"].day_reserved_tokens == 4000
    assert after["paid"] == before["paid"]
    yesterday_usage = (await again.usage(["free"], yesterday))["free"]
    assert yesterday_usage.day_tokens == 1000  # the previous day is loaded too
    log = rows(db, "SELECT channel, prompt_tokens, completion_tokens, status, stream, usage_source,"
                   " error, latency_ms FROM request_log ORDER BY id")  # fmt: skip
    assert log == [
        ("free", 1000, 0, 200, 1, "estimated", None, 12.5),
        ("free", 100, 200, 200, 1, "estimated", None, 12.5),
        ("paid", 7, 8, 500, 1, "estimated", "boom", 12.5),
    ]
    # counters keep counting where they left off
    await again.settle(None, rec(prompt=1, completion=0), NOON)
    assert (await again.usage(["free"], NOON))["free"].day_tokens == 301


async def test_restart_on_a_new_day_starts_day_and_hour_at_zero(open_store: Opener) -> None:
    store = await open_store()
    await store.settle(None, rec(), NOON)
    await store.close()
    later = NOON + timedelta(days=3)
    again = await open_store(now=later)
    u = (await again.usage(["free"], later))["free"]
    assert (u.day_tokens, u.hour_tokens, u.total_tokens) == (0, 0, 30)


async def test_query_groups_with_from_to_and_sees_unflushed_records(open_store: Opener) -> None:
    store = await open_store()
    t = [NOON + timedelta(minutes=i) for i in range(4)]
    await store.settle(None, rec("a", 1, 2, at=t[0], key="k1", model="x", cost=0.25), t[0])
    await store.settle(None, rec("a", 3, 4, at=t[1], key="k2", model="y", status=429), t[1])
    await store.settle(None, rec("b", 5, 6, at=t[2], key="k1", model="x"), t[2])
    await store.settle(None, rec("b", 7, 8, at=t[3], key="k2", model="x"), t[3])
    assert store.status()["pending_writes"] == 4
    by_channel = await store.query(None, None, "channel")
    assert store.status()["pending_writes"] == 0
    assert by_channel == [
        {"channel": "a", "requests": 2, "prompt_tokens": 4, "completion_tokens": 6,
         "total_tokens": 10, "cost": 0.25, "errors": 1},
        {"channel": "b", "requests": 2, "prompt_tokens": 12, "completion_tokens": 14,
         "total_tokens": 26, "cost": 0.0, "errors": 0},
    ]  # fmt: skip
    by_key = await store.query(t[1], t[3], "api_key")  # from inclusive, to exclusive
    assert [(r["api_key"], r["requests"], r["errors"]) for r in by_key] == [
        ("k1", 1, 0),
        ("k2", 1, 1),
    ]
    by_model = await store.query(t[1], None, "model")
    assert [(r["model"], r["total_tokens"]) for r in by_model] == [("x", 26), ("y", 7)]
    assert await store.query(t[3] + timedelta(seconds=1), None, "model") == []
    with pytest.raises(ValueError, match="group_by"):
        await store.query(None, None, "status; DROP TABLE counters")


async def test_concurrent_reservations_hold_and_log_matches_counters(
    open_store: Opener, db: Path
) -> None:
    store = await open_store(interval=0.005)
    limits = Limits(day_tokens=5000)

    async def one() -> bool:
        res = await store.try_reserve("free", 100, limits, NOON)
        if res is None:
            return False
        await asyncio.sleep(0)
        await store.settle(res, rec(prompt=40, completion=60), NOON)
        await store.settle(res, rec(prompt=40, completion=60), NOON)  # a duplicate: no-op
        return True

    accepted = sum(await asyncio.gather(*(one() for _ in range(200))))
    u = (await store.usage(["free"], NOON))["free"]
    assert accepted == 50 and u.day_tokens == 5000 and u.day_requests == 50
    [row] = await store.query(None, None, "channel")
    assert (row["requests"], row["total_tokens"]) == (u.total_requests, u.total_tokens)
    await store.close()
    assert rows(db, "SELECT tokens, requests FROM counters WHERE \"window\" = 'day'") == [
        (5000, 50)
    ]
    assert rows(db, "SELECT SUM(prompt_tokens + completion_tokens) FROM request_log") == [(5000,)]


async def test_flushes_within_the_interval_without_close(open_store: Opener, db: Path) -> None:
    store = await open_store(interval=0.01)
    await store.settle(None, rec(), NOON)
    for _ in range(400):  # bounded poll: up to ~2 s, normally a few ms
        if rows(db, "SELECT COUNT(*) FROM request_log") == [(1,)]:
            break
        await asyncio.sleep(0.005)
    assert rows(db, "SELECT COUNT(*) FROM request_log") == [(1,)]
    assert rows(db, "SELECT \"window\", tokens FROM counters ORDER BY 1") == [
        ("day", 30), ("hour", 30), ("total", 30)
    ]  # fmt: skip
    assert store.status()["pending_writes"] == 0


async def test_write_error_is_reported_kept_and_retried(open_store: Opener, db: Path) -> None:
    store = await open_store()
    await store.settle(None, rec(), NOON)
    assert await store.flush()
    conn = sqlite3.connect(db)  # someone removes the table under the running gateway
    conn.execute("DROP TABLE request_log")
    conn.commit()
    conn.close()
    await store.settle(None, rec(prompt=1, completion=1), NOON)
    assert await store.flush() is False
    status = store.status()
    assert status["ok"] is False and status["pending_writes"] == 1
    assert "request_log" in str(status["last_error"]) and status["write_errors"] == 1
    assert status["last_error_at"] == NOON.isoformat()
    assert status["flushing"] is True
    # the gateway keeps counting from memory meanwhile
    assert (await store.usage(["free"], NOON))["free"].total_tokens == 32
    # the next round reconnects (recreating the schema) and writes the kept batch exactly once
    assert await store.flush()
    assert store.status()["ok"] is True and store.status()["pending_writes"] == 0
    assert rows(db, "SELECT prompt_tokens FROM request_log") == [(1,)]
    assert rows(db, "SELECT tokens FROM counters WHERE \"window\" = 'total'") == [(32,)]


async def test_background_flush_survives_an_error(open_store: Opener, db: Path) -> None:
    store = await open_store(interval=0.005)
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE counters")
    conn.commit()
    conn.close()
    await store.settle(None, rec(), NOON)
    for _ in range(400):
        if store.status()["write_errors"] and not store.status()["pending_writes"]:
            break
        await asyncio.sleep(0.005)
    status = store.status()
    assert status["write_errors"] == 1 and status["ok"] is True and status["flushing"] is True
    assert rows(db, "SELECT tokens FROM counters WHERE \"window\" = 'total'") == [(30,)]


async def test_unopenable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    store = SqliteStore(blocker / "usage.db", UTC, clock=lambda: NOON)
    with pytest.raises(StorageError, match="not-a-dir"):
        await store.start()
    await store.close()  # closing a store that never started is harmless


async def test_bad_flush_interval() -> None:
    with pytest.raises(ValueError, match="flush_interval"):
        SqliteStore("x.db", UTC, flush_interval=0)


async def test_one_bad_row_never_costs_the_batch(
    open_store: Opener, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A lone surrogate (or a NaN) in one record is repaired alone; the batch is written whole."""
    store = await open_store()
    await store.settle(None, rec(model="a"), NOON)
    await store.settle(None, rec(model="gpt\ud800", key="k\ud800\nforged"), NOON)
    await store.settle(None, rec(model="b", cost=float("nan")), NOON)
    await store.settle(None, rec(model="c"), NOON)
    assert await store.flush()
    models = [m for (m,) in rows(db, "SELECT model FROM request_log ORDER BY id")]
    assert models == ["a", "gpt\ufffd", "b", "c"]
    assert rows(db, "SELECT requests FROM counters WHERE \"window\" = 'total'") == [(4,)]
    status = store.status()
    assert (status["ok"], status["repaired_rows"], status["pending_writes"]) == (True, 2, 0)
    assert "repaired a request-log row" in caplog.text


async def test_a_row_the_database_refuses_is_dropped_alone(
    open_store: Opener, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import smartproxy.storage.sqlite as sq

    store = await open_store()
    original = sq._write_rows

    def picky(conn: sqlite3.Connection, batch: list[sq.Pending], *rest: bool) -> None:
        if any(r.model == "poison" for r, _, _ in batch):
            raise sqlite3.IntegrityError("refused")
        original(conn, batch, *rest)

    monkeypatch.setattr(sq, "_write_rows", picky)
    for model in ("a", "poison", "b"):
        await store.settle(None, rec(model=model), NOON)
    assert await store.flush()
    assert [m for (m,) in rows(db, "SELECT model FROM request_log ORDER BY id")] == ["a", "b"]
    assert store.status()["rejected_rows"] == 1
