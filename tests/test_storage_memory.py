"""The memory backend and the counting (``CounterBook``) every backend shares."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from smartproxy.config import StorageConfig
from smartproxy.errors import ConfigError
from smartproxy.storage import (
    Limits,
    MemoryStore,
    RequestRecord,
    SqliteStore,
    UsageStore,
    create_store,
    window_keys,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOON = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def rec(
    channel: str = "free",
    prompt: int = 10,
    completion: int = 20,
    *,
    ts: float = 0.0,
    key: str = "team-a",
    model: str = "m",
    status: int = 200,
    cost: float = 0.0,
) -> RequestRecord:
    return RequestRecord(
        ts=ts or NOON.timestamp(),
        request_id="r",
        api_key_name=key,
        channel=channel,
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost=cost,
        status=status,
        latency_ms=1.0,
    )


async def test_is_a_usage_store() -> None:
    assert isinstance(MemoryStore(UTC), UsageStore)


async def test_reserve_refuses_at_day_limit_and_release_returns_capacity() -> None:
    store = MemoryStore(UTC)
    limits = Limits(day_tokens=1000)
    a = await store.try_reserve("free", 600, limits, NOON)
    assert a is not None
    # used + reserved (600) is below the limit: room, and the reservation may overrun it
    b = await store.try_reserve("free", 500, limits, NOON)
    assert b is not None
    assert await store.try_reserve("free", 1, limits, NOON) is None  # 1100 reserved >= 1000
    u = (await store.usage(["free"], NOON))["free"]
    assert (u.day_tokens, u.day_reserved_tokens, u.day_tokens_with_reserved) == (0, 1100, 1100)
    await store.release(a)
    assert await store.try_reserve("free", 500, limits, NOON) is not None
    # release counts nothing
    u = (await store.usage(["free"], NOON))["free"]
    assert (u.day_tokens, u.total_requests) == (0, 0)


async def test_a_reservation_landing_exactly_on_the_limit_uses_it_up() -> None:
    store = MemoryStore(UTC)
    limits = Limits(day_tokens=1000)
    assert await store.try_reserve("free", 1000, limits, NOON) is not None
    assert await store.try_reserve("free", 0, limits, NOON) is None


async def test_a_small_quota_takes_its_first_request_whatever_it_reserves() -> None:
    store = MemoryStore(UTC)
    assert await store.try_reserve("free", 1034, Limits(hour_tokens=300), NOON) is not None
    assert await store.try_reserve("other", 1034, Limits(day_tokens=1000), NOON) is not None


async def test_settle_replaces_reservation_with_actual_tokens() -> None:
    store = MemoryStore(UTC)
    limits = Limits(day_tokens=1000)
    res = await store.try_reserve("free", 1000, limits, NOON)
    assert await store.try_reserve("free", 200, limits, NOON) is None
    await store.settle(res, rec(prompt=50, completion=50, cost=0.25), NOON)
    u = (await store.usage(["free"], NOON))["free"]
    assert (u.day_tokens, u.hour_tokens, u.day_reserved_tokens, u.day_requests) == (100, 100, 0, 1)
    assert (u.total_prompt_tokens, u.total_completion_tokens, u.total_cost) == (50, 50, 0.25)
    assert u.day_cost == 0.25
    assert await store.try_reserve("free", 900, limits, NOON) is not None
    assert await store.try_reserve("free", 1, limits, NOON) is None


async def test_hour_and_request_limits() -> None:
    store = MemoryStore(UTC)
    hour = Limits(hour_tokens=100)
    await store.settle(None, rec(prompt=50, completion=50), NOON)
    assert await store.try_reserve("free", 1, hour, NOON) is None  # 100 used: none left
    assert await store.try_reserve("free", 500, hour, NOON + timedelta(hours=1)) is not None

    reqs = Limits(day_requests=3)
    assert await store.try_reserve("other", 0, reqs, NOON) is not None
    await store.settle(None, rec("other"), NOON)
    assert await store.try_reserve("other", 0, reqs, NOON) is not None
    assert await store.try_reserve("other", 0, reqs, NOON) is None  # 1 settled + 2 in flight
    u = (await store.usage(["other"], NOON))["other"]
    assert (u.day_requests, u.reserved_requests) == (1, 2)


async def test_usage_follows_every_change() -> None:
    store = MemoryStore(UTC)  # usage() is cached per channel: each change must show at once

    async def seen() -> tuple[int, int, int]:
        u = (await store.usage(["free", "other"], NOON))["free"]
        return u.day_tokens, u.day_reserved_tokens, u.reserved_requests

    assert await seen() == (0, 0, 0)
    res = await store.try_reserve("free", 50, Limits(), NOON)
    assert res is not None and await seen() == (0, 50, 1)
    await store.release(res)
    assert await seen() == (0, 0, 0)
    await store.settle(None, rec(), NOON)
    assert await seen() == (30, 0, 0)
    res = await store.try_reserve("free", 50, Limits(), NOON)
    assert await seen() == (30, 50, 1)
    await store.settle(res, rec(), NOON)
    assert await seen() == (60, 0, 0)


async def test_unlimited_never_refuses_and_negative_is_an_error() -> None:
    store = MemoryStore(UTC)
    assert await store.try_reserve("free", 10**12, Limits(), NOON) is not None
    with pytest.raises(ValueError, match="negative"):
        await store.try_reserve("free", -1, Limits(), NOON)


@pytest.mark.parametrize("actual", [80, 100, 130])
async def test_concurrent_requests_cannot_overrun(actual: int) -> None:
    store = MemoryStore(UTC)
    limits = Limits(day_tokens=5000)  # 50 requests' worth of 100-token reservations
    rng = random.Random(actual)

    async def one(i: int) -> bool:
        res = await store.try_reserve("free", 100, limits, NOON)
        if res is None:
            return False
        for _ in range(rng.randint(0, 3)):  # interleave with the others mid-request
            await asyncio.sleep(0)
        await store.settle(res, rec(prompt=actual // 2, completion=actual - actual // 2), NOON)
        return True

    results = await asyncio.gather(*(one(i) for i in range(200)))
    u = (await store.usage(["free"], NOON))["free"]
    # Tokens actually used may exceed the estimate, but never by more than the per-request error.
    assert u.day_tokens <= limits.day_tokens + sum(results) * max(0, actual - 100)
    assert u.day_requests == sum(results) and u.day_reserved_tokens == 0
    assert sum(results) >= 5000 // max(actual, 100) - 1
    if actual <= 100:
        assert u.day_tokens <= limits.day_tokens
    rows = await store.query(None, None, "channel")
    assert rows[0]["total_tokens"] == u.total_tokens and rows[0]["requests"] == u.total_requests


async def test_double_settle_and_release_after_settle_are_noops() -> None:
    store = MemoryStore(UTC)
    res = await store.try_reserve("free", 100, Limits(day_tokens=1000), NOON)
    assert res is not None
    await store.settle(res, rec(), NOON)
    await store.settle(res, rec(), NOON)
    await store.release(res)
    u = (await store.usage(["free"], NOON))["free"]
    assert (u.day_tokens, u.day_requests, u.day_reserved_tokens) == (30, 1, 0)
    assert store.status()["log_records"] == 1

    other = await store.try_reserve("free", 100, Limits(), NOON)
    assert other is not None
    await store.release(other)
    await store.settle(other, rec(), NOON)  # released first: settling it counts nothing
    assert (await store.usage(["free"], NOON))["free"].day_requests == 1


@pytest.mark.parametrize(
    ("tz", "before", "after", "window"),
    [
        (SHANGHAI, datetime(2024, 5, 1, 15, 59, 59, tzinfo=UTC), timedelta(seconds=1), "day"),
        (UTC, datetime(2024, 5, 1, 23, 59, 59, tzinfo=UTC), timedelta(seconds=1), "day"),
        (SHANGHAI, datetime(2024, 5, 1, 3, 59, 59, tzinfo=UTC), timedelta(seconds=1), "hour"),
        (
            UTC,
            datetime(2024, 5, 1, 10, 59, 59, 999999, tzinfo=UTC),
            timedelta(microseconds=1),
            "hour",
        ),
    ],
)
async def test_windows_roll_over_at_local_time(
    tz: ZoneInfo, before: datetime, after: timedelta, window: str
) -> None:
    store = MemoryStore(tz)
    await store.settle(None, rec(prompt=100, completion=0), before)
    old = (await store.usage(["free"], before))["free"]
    new = (await store.usage(["free"], before + after))["free"]
    assert (old.day_tokens, old.hour_tokens) == (100, 100)
    assert new.hour_tokens == 0
    assert new.day_tokens == (0 if window == "day" else 100)
    assert new.total_tokens == 100 and new.total_requests == 1
    assert await store.try_reserve("free", 100, Limits(hour_tokens=100), before) is None
    assert await store.try_reserve("free", 100, Limits(hour_tokens=100), before + after)


async def test_window_keys_are_local() -> None:
    t = datetime(2024, 5, 1, 16, 30, tzinfo=UTC)
    assert window_keys(t, SHANGHAI) == ("2024-05-02", "2024-05-02T00")
    assert window_keys(t, UTC) == ("2024-05-01", "2024-05-01T16")
    with pytest.raises(ValueError, match="timezone-aware"):
        window_keys(datetime(2024, 5, 1), UTC)


async def test_reservation_across_midnight_counts_in_the_new_day() -> None:
    store = MemoryStore(SHANGHAI)
    limits = Limits(day_tokens=1000)
    late = datetime(2024, 5, 1, 15, 59, 59, tzinfo=UTC)  # 23:59:59 in Shanghai
    early = late + timedelta(seconds=2)  # 00:00:01 the next day
    await store.settle(None, rec(prompt=300, completion=0), late)
    res = await store.try_reserve("free", 600, limits, late)
    assert res is not None and res.day_key == "2024-05-01"
    # Still in flight after midnight: it will be counted in the new day, so it holds room there.
    held = await store.try_reserve("free", 500, limits, early)
    assert held is not None  # 600 held < 1000: room left
    assert await store.try_reserve("free", 1, limits, early) is None  # 1100 held
    await store.release(held)
    await store.settle(res, rec(prompt=200, completion=0), early)
    old = (await store.usage(["free"], late))["free"]
    new = (await store.usage(["free"], early))["free"]
    assert (old.day_tokens, old.day_reserved_tokens) == (300, 0)
    assert (new.day_tokens, new.day_reserved_tokens, new.total_tokens) == (200, 0, 500)
    assert await store.try_reserve("free", 800, limits, early) is not None


async def test_query_groups_and_filters_by_time() -> None:
    store = MemoryStore(UTC)
    t0 = NOON.timestamp()
    await store.settle(None, rec("a", 1, 2, ts=t0, key="k1", model="x", cost=0.5), NOON)
    await store.settle(None, rec("a", 3, 4, ts=t0 + 60, key="k2", model="y", status=502), NOON)
    await store.settle(None, rec("b", 5, 6, ts=t0 + 120, key="k1", model="x"), NOON)
    by_channel = await store.query(None, None, "channel")
    assert by_channel == [
        {"channel": "a", "requests": 2, "prompt_tokens": 4, "completion_tokens": 6,
         "total_tokens": 10, "cost": 0.5, "errors": 1},
        {"channel": "b", "requests": 1, "prompt_tokens": 5, "completion_tokens": 6,
         "total_tokens": 11, "cost": 0.0, "errors": 0},
    ]  # fmt: skip
    by_key = await store.query(NOON, NOON + timedelta(seconds=120), "api_key")
    assert [(r["api_key"], r["requests"]) for r in by_key] == [("k1", 1), ("k2", 1)]
    by_model = await store.query(NOON + timedelta(seconds=1), None, "model")
    assert [(r["model"], r["total_tokens"]) for r in by_model] == [("x", 11), ("y", 7)]
    naive = await store.query(datetime(2024, 5, 1, 12, 1), None, "channel")  # read in store tz
    assert [r["requests"] for r in naive] == [1, 1]
    with pytest.raises(ValueError, match="group_by"):
        await store.query(None, None, "day")


async def test_log_is_bounded_but_counters_keep_counting() -> None:
    store = MemoryStore(UTC, log_limit=3)
    for _ in range(5):
        await store.settle(None, rec(), NOON)
    assert (await store.query(None, None, "channel"))[0]["requests"] == 3
    assert (await store.usage(["free"], NOON))["free"].total_requests == 5
    status = store.status()
    assert status["backend"] == "memory" and status["ok"] is True


async def test_create_store_picks_the_backend(tmp_path: object) -> None:
    assert isinstance(create_store(StorageConfig(backend="memory"), UTC), MemoryStore)
    sqlite = create_store(StorageConfig(backend="sqlite", path=f"{tmp_path}/u.db"), UTC)
    assert isinstance(sqlite, SqliteStore)
    from smartproxy.storage.redis import RedisStore

    redis = create_store(
        StorageConfig(backend="redis", url="redis://localhost", path=f"{tmp_path}/log.db"), UTC
    )
    assert isinstance(redis, RedisStore)
    with pytest.raises(ConfigError, match="unknown backend"):
        create_store(StorageConfig(backend="nope"), UTC)
