"""The redis backend against a real Redis: two stores stand for two processes (one key prefix).

End-to-end with real gateway processes: ``test_e2e_redis.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redisutil import PrivateRedis, delete_prefix, require_redis, unique_prefix

from smartproxy.config import StorageConfig
from smartproxy.storage import create_store
from smartproxy.storage.base import KeyCheck, Limits, RequestRecord
from smartproxy.storage.redis import RedisStore, SharedReservation, StorageUnavailable, safe_url
from smartproxy.storage.redis_scripts import LINE_TTL_MS
from smartproxy.storage.redis_view import RENEWALS_SLACK

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
BREAKER = (3, 30.0)


def rec(
    channel: str = "free",
    prompt: int = 10,
    completion: int = 20,
    cost: float = 0.0,
    key: str = "dev",
) -> RequestRecord:
    return RequestRecord(
        NOW.timestamp(), "r", key, channel, "m", prompt, completion, cost, 200, 1.0
    )


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    url = require_redis()
    prefix = unique_prefix()
    made: list[RedisStore] = []

    async def make(**kw: Any) -> RedisStore:
        cfg = StorageConfig(
            backend="redis",
            url=kw.pop("url", url),
            key_prefix=prefix,
            path=str(tmp_path / f"log{len(made)}.db"),
            **kw,
        )
        store = create_store(cfg, UTC)
        assert isinstance(store, RedisStore)
        await store.start()
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()
    delete_prefix(url, prefix)


async def admit(
    store: RedisStore,
    channel: str,
    tokens: int,
    limits: Limits,
    *,
    ttl: float = 30,
    check: KeyCheck | None = None,
) -> Any:
    return await store.admit(
        channel, tokens, limits, now=NOW, ttl=ttl, breaker=BREAKER, check=check
    )


async def test_two_processes_share_one_quota_spent_to_its_end(stores):
    a, b = await stores(), await stores()
    limits = Limits(day_tokens=100, hour_tokens=0, day_requests=0)
    first = await admit(a, "free", 1034, limits)  # more than the whole limit: still admitted
    assert first.code == 0
    assert (await admit(b, "free", 1, limits)).code == 1  # used + reserved >= 100, in B too
    await a.settle(first.reservation, rec(prompt=30, completion=40), NOW)
    second = await admit(b, "free", 500, limits)  # 70 < 100
    assert second.code == 0
    await b.settle(second.reservation, rec(prompt=30, completion=10), NOW)
    assert (await admit(a, "free", 1, limits)).code == 1  # 110: used up (overrun < 1 request)
    for store in (a, b):
        u = (await store.usage(["free"], NOW))["free"]
        assert (u.day_tokens, u.hour_tokens, u.day_requests, u.total_tokens) == (110, 110, 2, 110)
        assert (u.day_reserved_tokens, u.reserved_requests) == (0, 0)
        assert (u.total_prompt_tokens, u.total_completion_tokens) == (60, 50)
    # settling twice counts once
    await a.settle(first.reservation, rec(prompt=30, completion=40), NOW)
    assert (await a.usage(["free"], NOW))["free"].day_tokens == 110


async def test_request_limit_and_the_routing_view(stores):
    a, b = await stores(), await stores()
    limits = Limits(day_requests=2)
    r1, r2 = await admit(a, "c", 5, limits), await admit(b, "c", 5, limits)
    assert (r1.code, r2.code, (await admit(a, "c", 5, limits)).code) == (0, 0, 1)
    await b.poll(["c"], NOW)
    view = b.usage_now(["c"], NOW)["c"]
    # tokens: settled plus this process's own in flight (another's are the script's to count:
    # a finished one would linger in the view until the next poll); requests in flight: all
    assert (view.day_tokens_with_reserved, view.day_requests + view.reserved_requests) == (5, 2)
    await a.settle(r1.reservation, rec(channel="c", prompt=1, completion=2), NOW)
    await b.poll(["c"], NOW)
    view = b.usage_now(["c"], NOW)["c"]
    assert (view.day_tokens_with_reserved, view.day_requests + view.reserved_requests) == (8, 2)
    await b.settle(r2.reservation, rec(channel="c", prompt=1, completion=1), NOW)
    view = b.usage_now(["c"], NOW)["c"]
    assert view.day_reserved_tokens == 0 and view.day_tokens == 5


async def test_a_dead_process_reservations_expire(stores):
    a, b = await stores(), await stores()
    limits = Limits(day_tokens=100)
    held = await admit(a, "free", 200, limits, ttl=0.3)  # "a" is then killed: never settled
    assert held.code == 0
    assert (await admit(b, "free", 1, limits)).code == 1
    await asyncio.sleep(0.4)
    assert (await admit(b, "free", 1, limits)).code == 0
    u = (await b.usage(["free"], NOW))["free"]
    assert (u.day_reserved_tokens, u.reserved_requests) == (1, 1)
    await a.settle(held.reservation, rec(prompt=5, completion=5), NOW)  # late: counted once
    u = (await b.usage(["free"], NOW))["free"]
    assert (u.day_tokens, u.day_reserved_tokens) == (10, 1)


async def test_key_limits_are_exact_across_processes(stores):
    a, b = await stores(), await stores()
    day = "2026-11-26"
    check = KeyCheck("team", rpm=1, burst=3, day=day)
    codes = [(await admit(s, "x", 1, Limits(), check=check)).code for s in (a, b, a, b, a)]
    assert codes == [0, 0, 0, 10, 10]
    refused = await admit(b, "x", 1, Limits(), check=check)
    assert refused.code == 10 and refused.wait_ms > 50_000  # 1 per minute
    assert refused.requests[1] == 3
    # tokens per minute: checked against the estimate, charged with what was used
    tpm = KeyCheck("tk", rpm=0, tpm=100, tpm_tokens=60, day=day)
    ok = await admit(a, "x", 60, Limits(), check=tpm)
    assert ok.code == 0 and ok.tokens[:2] == (100, 100)
    res = ok.reservation
    assert isinstance(res, SharedReservation)
    await a.settle(res, rec("x", 50, 40, key="tk"), NOW)  # 90 used: 10 left
    assert (await admit(b, "x", 60, Limits(), check=tpm)).code == 11
    # daily budget: spend settled by any process counts
    money = KeyCheck("payer", budget=0.01, day=day)
    first = await admit(a, "x", 1, Limits(), check=money)
    await a.settle(first.reservation, rec("x", cost=0.006, key="payer"), NOW)
    second = await admit(b, "x", 1, Limits(), check=money)
    assert second.code == 0
    await b.settle(second.reservation, rec("x", cost=0.006, key="payer"), NOW)
    refused = await admit(a, "x", 1, Limits(), check=money)
    assert refused.code == 12 and refused.spent == pytest.approx(0.012)
    assert await b.spent("payer", day) == pytest.approx(0.012)


async def test_breaker_opens_for_everyone_and_lets_one_trial_through(stores):
    a, b = await stores(), await stores()
    breaker = (3, 0.3)
    for store in (a, b, a):  # three consecutive failures, from two processes
        adm = await store.admit("flaky", 1, Limits(), now=NOW, ttl=5, breaker=breaker)
        adm.reservation.outcome = "f"
        await store.release(adm.reservation)
    refused = await b.admit("flaky", 1, Limits(), now=NOW, ttl=5, breaker=breaker)
    assert refused.code == 2 and 0 < refused.wait_ms <= 300
    await asyncio.sleep(0.35)
    trial = await a.admit("flaky", 1, Limits(), now=NOW, ttl=5, breaker=breaker)
    assert trial.code == 0 and trial.reservation.trial
    assert (await b.admit("flaky", 1, Limits(), now=NOW, ttl=5, breaker=breaker)).code == 3
    assert (await a.admit("flaky", 1, Limits(), now=NOW, ttl=5, breaker=breaker)).code == 3
    trial.reservation.outcome = "s"
    await a.settle(trial.reservation, rec("flaky"), NOW)
    assert (await b.admit("flaky", 1, Limits(), now=NOW, ttl=5, breaker=breaker)).code == 0
    views = await b.poll(["flaky"], NOW)
    assert views is not None and views[0].breaker_ms == -1


async def test_a_success_resets_the_shared_failure_run_and_429_cools_down(stores):
    a, b = await stores(), await stores()
    for outcome in ("f", "f", "s", "f", "f"):
        adm = await admit(a, "c", 1, Limits())
        adm.reservation.outcome = outcome
        await a.release(adm.reservation)
    assert (await admit(b, "c", 1, Limits())).code == 0  # 2 failures since the success: closed
    adm = await admit(a, "c", 1, Limits())
    adm.reservation.outcome, adm.reservation.cooldown_ms = "c", 2000
    await a.release(adm.reservation)
    cooling = await admit(b, "c", 1, Limits())
    assert cooling.code == 4 and 1500 < cooling.wait_ms <= 2000


async def test_key_prefixes_keep_two_gateways_apart(stores, tmp_path):
    a = await stores()
    other_prefix = unique_prefix()
    url = require_redis()
    other = RedisStore(
        StorageConfig(
            backend="redis", url=url, key_prefix=other_prefix, path=str(tmp_path / "other.db")
        ),
        UTC,
    )
    await other.start()
    try:
        limits = Limits(day_requests=1)
        assert (await admit(a, "free", 1, limits)).code == 0
        assert (await admit(other, "free", 1, limits)).code == 0
    finally:
        await other.close()
        delete_prefix(url, other_prefix)


def test_safe_url_hides_the_password():
    assert safe_url("redis://:s3cret@db:6379/0") == "redis://:***@db:6379/0"
    assert safe_url("redis://user:s3cret@db:6379/0") == "redis://user:***@db:6379/0"
    assert safe_url("redis://db:6379/0") == "redis://db:6379/0"


async def test_outage_open_counts_locally_and_writes_back_when_redis_returns(tmp_path, stores):
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        store = await stores(url=server.url, timeout=0.3)
        errors: list[int] = []
        store.on_error_count = lambda: errors.append(1)
        limits = Limits(day_tokens=100)
        adm = await admit(store, "free", 10, limits)
        await store.settle(adm.reservation, rec(prompt=20, completion=20), NOW)
        await store.poll(["free"], NOW)
        held = await admit(store, "free", 10, limits)  # in flight across the outage
        server.stop()
        during = await admit(store, "free", 10, limits)
        assert during.offline and during.code == 0 and not store.online
        assert store.status()["ok"] is False and errors
        await store.settle(during.reservation, rec(prompt=20, completion=20), NOW)
        await store.settle(held.reservation, rec(prompt=10, completion=10), NOW)
        # this process's own counting: 40 + 40 + 20 used (+10 others held when it went) >= 100
        assert (await admit(store, "free", 1, limits)).code == 1
        assert store.status()["unwritten_settlements"] == 2
        assert await store.poll(["free"], NOW) is None  # still away
        server.start()
        assert await store.poll(["free"], NOW) is not None
        assert store.online and store.status()["unwritten_settlements"] == 0
        u = (await store.usage(["free"], NOW))["free"]
        assert (u.day_tokens, u.day_requests) == (100, 3)  # nothing settled was lost
    finally:
        server.stop()


async def test_outage_closed_refuses_until_redis_returns(tmp_path, stores):
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        store = await stores(url=server.url, timeout=0.3, on_error="closed")
        assert (await admit(store, "free", 1, Limits())).code == 0
        server.stop()
        await store.poll(["free"], NOW)
        with pytest.raises(StorageUnavailable):
            await admit(store, "free", 1, Limits())
        server.start()
        await store.poll(["free"], NOW)
        assert (await admit(store, "free", 1, Limits())).code == 0
    finally:
        server.stop()


async def test_start_without_redis_serves_offline_and_recovers(tmp_path, stores):
    server = PrivateRedis(tmp_path)  # not started yet
    store = await stores(url=server.url, timeout=0.2)
    assert not store.online and store.status()["last_error"]
    assert (await admit(store, "free", 1, Limits())).offline
    server.start()
    try:
        await store.poll(["free"], NOW)
        assert store.online
    finally:
        server.stop()


async def test_response_ids_are_shared_and_expire_with_their_ttl(stores):
    a, b = await stores(), await stores()
    await a.remember_response("resp_123", "azure-east", NOW)
    assert await b.response_channel("resp_123", NOW) == "azure-east"
    assert await b.response_channel("resp_unknown", NOW) is None
    ttl = await b._redis.ttl(f"{b._k}resp:resp_123")
    assert 29 * 86400 < ttl <= 30 * 86400


async def test_response_ids_answer_only_the_key_that_made_them(stores):
    a, b = await stores(), await stores()
    await a.remember_response("resp_k", "azure-east", NOW, "team-a")
    assert await b.response_channel("resp_k", NOW, "team-a") == "azure-east"
    assert await b.response_channel("resp_k", NOW, "team-b") is None
    assert await b.response_channel("resp_k", NOW) is None
    # A value written before owners were kept (the channel alone) stays readable by any key.
    await b._redis.set(f"{b._k}resp:resp_old", "azure-west")
    assert await a.response_channel("resp_old", NOW, "team-b") == "azure-west"


async def test_request_log_reports_come_from_this_hosts_sqlite_log(stores):
    a = await stores()
    adm = await admit(a, "free", 5, Limits())
    await a.settle(adm.reservation, rec(prompt=3, completion=4), NOW)
    t0 = NOW.timestamp()
    rows = await a.timeseries([t0 - 3600, t0 + 3600], "channel")
    assert [(r["key"], r["requests"], r["prompt_tokens"]) for r in rows] == [("free", 1, 3)]
    (row,) = await a.query(None, None, "channel")
    assert (row["channel"], row["total_tokens"]) == ("free", 7)


async def test_admit_refuses_at_max_concurrency_counting_every_process(stores: Any) -> None:
    one, two = await stores(), await stores()
    cap = Limits(concurrency=2)
    first = await admit(one, "c", 5, cap)
    second = await admit(two, "c", 5, cap)
    assert first.code == second.code == 0
    third = await admit(one, "c", 5, cap)
    assert third.code == 5 and third.reservation is None  # two in flight, in two processes
    await two.release(second.reservation)
    for _ in range(100):  # releases are batched per loop turn
        again = await admit(one, "c", 5, cap)
        if again.code == 0:
            break
        await asyncio.sleep(0.01)
    assert again.code == 0


async def test_max_concurrency_is_first_come_first_served_across_processes(stores: Any) -> None:
    """Audit finding: a waiter of one process and a newcomer (or a waiter) of another raced for a
    freed slot. Now the script keeps one place per process in the channel's line, at the arrival
    of its first waiter; a slot goes to a request only when the places ahead of it leave one
    free, and a place no process renews is gone within LINE_TTL_MS (a dead process)."""
    one, two, three = await stores(), await stores(), await stores()
    cap = Limits(concurrency=1)

    async def at(store: RedisStore, line: tuple[int, str] = (-1, "")) -> Any:
        return await store.admit("c", 5, cap, now=NOW, ttl=30, breaker=BREAKER, line=line)

    running = await at(one)
    assert running.code == 0
    assert (await at(two, (300, ""))).code == 5  # two's waiter, there 300 ms: takes its place
    assert (await at(three, (100, "50"))).code == 5  # three's, 100 ms: behind two's
    await one.release(running.reservation)
    assert (await at(one)).code == 5  # a newcomer: behind both, though the slot is free
    assert (await at(three, (110, "60"))).code == 5  # not the first in line
    served = await at(two, (310, ""))  # the first: served, its place given up
    assert served.code == 0
    await two.release(served.reservation)
    served = await at(three, (120, "70"))  # served; its process's next waiter keeps the place
    assert served.code == 0
    await three.release(served.reservation)
    assert (await at(one)).code == 5  # three's next waiter (70 ms) is ahead of a newcomer
    assert len(await one._redis.hgetall(f"{one._k}q:c")) == 1
    # Three dies with its waiter in line: the place lapses, a newcomer gets the slot.
    await asyncio.sleep(LINE_TTL_MS / 1000 + 0.05)
    alone = await at(two)
    assert alone.code == 0
    await two.release(alone.reservation)
    assert await one._redis.hgetall(f"{one._k}q:c") == {}
    # A process whose last waiter gave up leaves the line at once (``vacate``).
    assert (await at(two, (0, ""))).code == 0  # a slot free, no line: served
    assert (await at(three, (0, ""))).code == 5
    assert (await at(one)).code == 5
    three.vacate("c")
    for _ in range(100):
        if not await one._redis.hgetall(f"{one._k}q:c"):
            break
        await asyncio.sleep(0.01)
    assert await one._redis.hgetall(f"{one._k}q:c") == {}


async def test_several_free_slots_go_to_the_earliest_waiters_of_any_process(stores: Any) -> None:
    """A process's place counted as one request however many of its requests waited: with three
    slots freed at once, a process whose single waiter came later took two of them before the
    nine that came first in another (audit finding). The place lists every waiter's arrival."""
    one, two, three = await stores(), await stores(), await stores()
    cap = Limits(concurrency=3)

    async def at(store: RedisStore, line: tuple[int, str] = (-1, "")) -> Any:
        return await store.admit("c", 5, cap, now=NOW, ttl=30, breaker=BREAKER, line=line)

    running = [await at(one) for _ in range(3)]
    assert all(r.code == 0 for r in running)
    assert (await at(two, (300, "290,280"))).code == 5  # three waiters, the earliest
    assert (await at(three, (100, ""))).code == 5  # one waiter, later
    for r in running:
        await one.release(r.reservation)
    assert (await at(three, (110, ""))).code == 5  # three slots free, three earlier waiters
    assert (await at(two, (310, "300,290"))).code == 0
    assert (await at(three, (111, ""))).code == 5
    assert (await at(two, (301, "291"))).code == 0
    assert (await at(three, (112, ""))).code == 5
    last = await at(two, (292, ""))
    assert last.code == 0
    assert (await at(three, (113, ""))).code == 5  # now full
    await two.release(last.reservation)
    assert (await at(three, (120, ""))).code == 0  # its turn


async def test_zero_token_reservations_settle_release_and_expire(stores):
    """A reservation of 0 tokens (GET/DELETE /v1/responses/{id} are unmetered): Lua's -0 would
    reach Redis as "-0", which HINCRBY refuses, and the store would go offline."""
    a, b = await stores(), await stores()
    limits = Limits(day_tokens=100)
    first = await admit(a, "c", 0, limits)
    assert first.code == 0
    await a.settle(first.reservation, rec(channel="c", prompt=0, completion=0), NOW)
    second = await admit(a, "c", 0, limits)
    await a.release(second.reservation)
    await admit(a, "c", 0, limits, ttl=0.05)  # never settled: expires
    await asyncio.sleep(0.1)
    assert (await admit(b, "c", 0, limits)).code == 0  # purges the expired one
    await b.poll(["c"], NOW)
    for store in (a, b):
        assert store.status()["ok"], store.status()
    u = (await b.usage(["c"], NOW))["c"]
    assert (u.day_requests, u.day_reserved_tokens, u.reserved_requests) == (1, 0, 1)


async def test_an_unexpected_error_in_a_batch_never_leaves_its_waiters_hanging(stores, caplog):
    """Anything a batch call raises, not only Redis' own errors, answers the batch's waiters:
    a settlement awaited forever would also hang the gateway's shutdown (it drains them)."""
    a = await stores()
    limits = Limits(day_tokens=100)
    held = await admit(a, "c", 5, limits)

    async def broken_settle(*_: Any, **__: Any) -> Any:
        raise ValueError("a reply of an unexpected shape")

    a._settle = broken_settle  # type: ignore[method-assign]
    await asyncio.wait_for(a.settle(held.reservation, rec(channel="c"), NOW), 2)
    assert "a reply of an unexpected shape" in caplog.text

    async def broken_admit(*_: Any, **__: Any) -> Any:
        raise ValueError("an admit reply of an unexpected shape")

    a._admit = broken_admit  # type: ignore[method-assign]
    with pytest.raises(Exception):  # noqa: B017 - whatever it is, the waiter is answered
        await asyncio.wait_for(admit(a, "c", 5, limits), 2)


async def test_a_settlement_kept_for_the_write_back_answers_its_waiter(tmp_path, stores):
    """Redis goes away while a settlement is on its way: it is kept for the write-back, and
    whoever awaits it (``settle``, an admit batch sent after it, the shutdown's drain) goes on."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        store = await stores(url=server.url, timeout=0.3)
        limits = Limits(day_tokens=100)
        held = await admit(store, "free", 10, limits)
        server.stop()
        await asyncio.wait_for(store.settle(held.reservation, rec(), NOW), 5)
        assert store.status()["unwritten_settlements"] == 1
        assert (await asyncio.wait_for(admit(store, "free", 10, limits), 5)).offline
    finally:
        server.stop()


async def test_calls_of_a_busy_moment_travel_together_an_idle_one_goes_at_once(stores):
    """Admits and settlements made within ``ADMIT_PACE`` of the last batch wait for the next
    one (one script call for many requests); a batch after a quiet spell is sent at once, and
    the settlements a process made go before its next admits (they free what they reserved)."""
    a = await stores()
    calls: list[str] = []
    real_admit, real_settle = a._admit, a._settle

    async def admit_call(**kw: Any) -> Any:
        calls.append("admit")
        return await real_admit(**kw)

    async def settle_call(**kw: Any) -> Any:
        calls.append("settle")
        return await real_settle(**kw)

    a._admit, a._settle = admit_call, settle_call  # type: ignore[method-assign]
    limits = Limits(day_tokens=25)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = await admit(a, "q", 10, limits)
    assert loop.time() - started < a.ADMIT_PACE  # idle: no wait
    assert calls == ["admit"]
    # 20 admits 1 ms apart, each settled as soon as it is admitted: far fewer calls than 40
    async def one(delay: float) -> int:
        await asyncio.sleep(delay)
        adm = await admit(a, "q", 0, limits)
        await a.settle(adm.reservation, rec(channel="q", prompt=0, completion=0), NOW)
        return adm.code

    assert await asyncio.gather(*(one(i / 1000) for i in range(20))) == [0] * 20
    assert calls.count("admit") <= 10 and calls.count("settle") <= 10
    # settled (10 + 20 = 30 > 25 used) before the next admit, which therefore sees the quota used
    await a.settle(first.reservation, rec(channel="q", prompt=10, completion=20), NOW)
    calls.clear()
    assert (await admit(a, "q", 0, limits)).code == 1
    assert calls[-2:] == ["settle", "admit"] or calls == ["admit"]


async def test_a_settlement_that_moves_a_breaker_is_not_held_back(stores):
    """A failure (or a trial's end) must reach the other processes now, not after the pace."""
    a, b = await stores(), await stores()
    limits = Limits(day_tokens=0)
    a.SETTLE_PACE = 60.0  # type: ignore[misc]  # a plain settlement would wait a minute
    warm = await admit(a, "x", 1, limits)
    await a.settle(warm.reservation, rec(channel="x"), NOW)  # sets the pace clock
    held = [await admit(a, "x", 1, limits) for _ in range(BREAKER[0])]
    for adm in held:
        adm.reservation.outcome = "f"
        a.settle_nowait(adm.reservation, rec(channel="x"), NOW)
    await asyncio.wait_for(a.drain(), 5)
    assert (await admit(b, "x", 1, limits)).code != 0  # b sees the breaker a's failures opened


def lose_settle_answers(store: RedisStore) -> Callable[[], None]:
    """From now on the store's settle calls run in Redis but their answers are lost (a timeout,
    a dropped connection); returns the undo."""
    real = store._settle

    async def ran_then_lost(*args: Any, **kw: Any) -> Any:
        await real(*args, **kw)
        raise ConnectionError("connection closed by server")  # after Redis ran the script

    store._settle = ran_then_lost  # type: ignore[method-assign]

    def undo() -> None:
        store._settle = real  # type: ignore[method-assign]

    return undo


async def test_a_batch_that_ran_but_whose_answer_was_lost_is_written_back_once(stores):
    """The process cannot tell whether a batch whose answer was lost was counted: it keeps it
    for the write-back, and Redis counts it only once. Settlements sent for the first time with
    the write-back still count."""
    a = await stores()
    limits = Limits(day_tokens=1000)
    first = await admit(a, "free", 10, limits)
    undo = lose_settle_answers(a)
    await a.settle(first.reservation, rec(prompt=30, completion=40), NOW)
    assert not a.online and a.status()["unwritten_settlements"] == 1
    undo()
    during = await admit(a, "free", 10, limits)  # made and settled while offline
    await a.settle(during.reservation, rec(prompt=1, completion=2), NOW)
    assert await a.recover()
    u = (await a.usage(["free"], NOW))["free"]
    assert (u.day_tokens, u.day_requests) == (73, 2)  # not 143 / 3
    assert (u.total_prompt_tokens, u.total_completion_tokens) == (31, 42)

    # another process; the write-back's own answer is lost too: still counted once
    b = await stores()
    second = await admit(b, "free", 10, limits)
    undo = lose_settle_answers(b)
    await b.settle(second.reservation, rec(prompt=5, completion=5), NOW)
    assert not await b.recover()
    undo()
    assert await b.recover()
    u = (await b.usage(["free"], NOW))["free"]
    assert (u.day_tokens, u.day_requests) == (83, 3)


async def test_only_settlements_that_free_a_limit_go_before_the_next_admit(stores):
    """A settlement on a channel (and key) with no limit changes nothing an admit may be granted:
    the next admit does not wait for it (it cost every admit a round trip, issue [8]); one on a
    channel with a quota is written first, so the quota it frees counts at once."""
    a = await stores()
    a.SETTLE_PACE = 60.0  # type: ignore[misc]  # a paced settlement would wait a minute
    free, quota = Limits(), Limits(day_tokens=1000)
    warm = await admit(a, "free", 1, free)
    await a.settle(warm.reservation, rec(channel="free"), NOW)  # sets the pace clock
    plain = await admit(a, "free", 5, free)
    done = a.settle_nowait(plain.reservation, rec(channel="free"), NOW)
    assert done is not None
    assert (await asyncio.wait_for(admit(a, "free", 5, free), 5)).code == 0
    assert not done.done()  # still waiting for its pace: the admit did not wait for it
    limited = await admit(a, "q", 600, quota)
    freed = a.settle_nowait(limited.reservation, rec(channel="q", prompt=10, completion=10), NOW)
    assert freed is not None
    again = await asyncio.wait_for(admit(a, "q", 600, quota), 5)
    assert freed.done() and again.code == 0  # 20 used + 600 reserved: the 600 freed counted


async def test_a_request_running_past_its_timeout_keeps_its_reservation(stores: Any) -> None:
    """A long stream outlives its attempt's timeout (which bounds silence, not length): its
    reservation is renewed while it runs, so the channel's cap and quota still count it (it
    expired at timeout + grace and a second request got the capped channel, audit finding).
    A process that dies stops renewing: its reservation still expires."""
    one, other = await stores(reservation_grace=0.3), await stores(reservation_grace=0.3)
    cap = Limits(concurrency=1)
    running = await admit(one, "c", 5, cap, ttl=1.0)  # an attempt timeout of 0.7 s, + grace
    assert running.code == 0
    await asyncio.sleep(2.5)  # well past its first expiry
    assert (await admit(other, "c", 5, cap, ttl=1.0)).code == 5  # still held
    assert one._renewer is not None
    one._renewer.cancel()  # as if its process died: nobody renews it any more
    one._renewals.clear()
    await asyncio.sleep(1.6)  # past the last expiry it was given
    assert (await admit(other, "c", 5, cap, ttl=1.0)).code == 0


async def test_renewals_follow_the_requests_in_flight_not_the_request_rate(stores: Any) -> None:
    """Each reservation's renewal entry used to stay until its due time (the attempt's timeout)
    even when its request had ended long before: at 450 requests/s and a 120 s timeout, ~54,000
    entries per process. Ended requests' entries are dropped once they outnumber the live ones."""
    store = await stores()
    limits = Limits(day_tokens=0, hour_tokens=0, day_requests=0)
    live = [(await admit(store, "c", 1, limits, ttl=120)).reservation for _ in range(10)]
    for _ in range(15):  # requests that come and go (100 at a time), 10 in flight all along
        batch = await asyncio.gather(*(admit(store, "c", 1, limits, ttl=120) for _ in range(100)))
        await asyncio.gather(
            *(store.settle(a.reservation, rec(prompt=1, completion=1), NOW) for a in batch)
        )
    assert len(store._live) == 10
    assert len(store._renewals) <= 2 * 110 + RENEWALS_SLACK  # was 1,510
    assert {rid for _, rid in store._renewals} >= {res.id for res in live}  # still renewed
    for res in live:
        await store.settle(res, rec(prompt=1, completion=1), NOW)

