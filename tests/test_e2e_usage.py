"""Issue [2] end to end, usage side: quotas under 200 concurrent requests, streamed usage (asked
for, stripped, estimated, billed on disconnect), counters and the request log surviving a restart
with the sqlite backend, and the token/cost/quota metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from conftest import DEV_KEY, Clock, base_config, channel
from prometheus_client.parser import text_string_to_metric_families

from smartproxy.storage.base import RequestRecord

MESSAGES = [{"role": "user", "content": "hi"}]
AUTH = {"Authorization": f"Bearer {DEV_KEY}"}


async def usage_rows(gw: Any) -> dict[str, dict[str, Any]]:
    resp = await gw.client.get("/api/usage", headers=gw.admin_headers())
    assert resp.status == 200
    return {row["channel"]: row for row in (await resp.json())["channels"]}


async def log_rows(gw: Any, group_by: str = "channel", **query: str) -> dict[str, dict[str, Any]]:
    resp = await gw.client.get(
        "/api/usage", params={"group_by": group_by, **query}, headers=gw.admin_headers()
    )
    assert resp.status == 200, await resp.text()
    return {row[group_by]: row for row in (await resp.json())["rows"]}


async def reserve_of(gw: Any, raw: bytes) -> int:
    resp = await gw.client.post("/api/route", data=raw, headers=gw.admin_headers())
    return int((await resp.json())["reserve_tokens"])


def watch_settles(gw: Any) -> asyncio.Queue[RequestRecord]:
    """Every record the store settles, as it is settled (so a test waits without sleeping)."""
    store = gw.gateway.store
    original = store.settle
    settled: asyncio.Queue[RequestRecord] = asyncio.Queue()

    async def settle(reservation: Any, record: RequestRecord, now: datetime) -> None:
        await original(reservation, record, now)
        settled.put_nowait(record)

    store.settle = settle
    original_now = getattr(store, "settle_now", None)
    if original_now is not None:  # in-process stores settle synchronously

        def settle_now(reservation: Any, record: RequestRecord, now: datetime) -> None:
            original_now(reservation, record, now)
            settled.put_nowait(record)

        store.settle_now = settle_now
    return settled


def split(usage_total: int) -> dict[str, int]:
    prompt = usage_total // 3
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage_total - prompt,
        "total_tokens": usage_total,
    }


# ----------------------------------------------------------------------------- 2. concurrency
# shortfall: how much less than its reservation each request uses (upstream's usage is fixed);
# negative: the prompt estimate was too low and each request uses more than it reserved.
@pytest.mark.parametrize("shortfall", [0, 9, -4])
async def test_200_concurrent_requests_never_overrun_the_free_quota(
    upstream_factory, gateway_factory, shortfall
):
    free_up, free_url = await upstream_factory("free")
    paid_up, paid_url = await upstream_factory("paid")
    raw = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 30}).encode()
    cfg = base_config(
        channels=[
            channel("free", free_url, price_per_token=0, daily_limit=1),
            channel("paid", paid_url, price_per_token=2e-6),
        ]
    )
    # Every request sends these bytes: the reservation (len(raw)/4 + max_tokens) is known exactly.
    reserve = await reserve_of(await gateway_factory(cfg), raw)
    limit = 50 * reserve  # a quota of 50 requests' worth
    cfg["channels"][0]["daily_limit"] = limit
    free_up.usage = paid_up.usage = split(reserve - shortfall)
    gw = await gateway_factory(cfg)

    async def one(s: aiohttp.ClientSession) -> str:
        async with s.post(
            gw.url + "/chat/completions",
            data=raw,
            headers={**AUTH, "Content-Type": "application/json"},
        ) as r:
            assert r.status == 200
            await r.read()
            return r.headers["x-smartproxy-channel"]

    # no connection limit: all 200 are in flight at once
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        served = await asyncio.gather(*(one(s) for _ in range(200)))
    await gw.gateway.drain_background()
    n_free = served.count("free")
    assert n_free + served.count("paid") == 200
    counters = await usage_rows(gw)
    logged = await log_rows(gw)
    free = counters["free"]
    if shortfall >= 0:  # no request used more than it reserved: admitted while used + reserved
        # < limit (contract 4), so the last one admitted may end past it, by less than one request
        assert free["day_tokens"] < limit + reserve
    else:  # each used more: at most 50 reservations ever fit, so the settled tokens exceed
        # the limit by at most the error of the requests in flight together (here all 50)
        assert n_free <= 50
        assert free["day_tokens"] == n_free * (reserve - shortfall) <= limit - 50 * shortfall
    if shortfall == 0:  # each admitted request uses its whole reservation: exactly 50 fit
        assert n_free == 50 and free["day_tokens"] == limit and free["day_quota_left"] == 0
    assert free["reserved_tokens"] == counters["paid"]["reserved_tokens"] == 0
    # nothing double-counted: request log == counters == what upstream saw, per channel
    n_paid = 200 - n_free
    for name, up, n in (("free", free_up, n_free), ("paid", paid_up, n_paid)):
        row, log = counters[name], logged[name]
        assert row["requests"] == row["day_requests"] == log["requests"] == len(up.seen) == n
        assert (
            row["total_tokens"]
            == row["day_tokens"]
            == log["total_tokens"]
            == n * (reserve - shortfall)
        )
        assert row["prompt_tokens"] == log["prompt_tokens"]
        assert row["cost_usd"] == pytest.approx(log["cost"])
    assert counters["paid"]["cost_usd"] == pytest.approx(n_paid * (reserve - shortfall) * 2e-6)


# ----------------------------------------------------------------------------- 3. streams
def is_usage_chunk(event: bytes) -> bool:
    data = event.removeprefix(b"data: ").strip()
    if data == b"[DONE]":
        return False
    obj = json.loads(data)
    return obj["choices"] == [] and isinstance(obj.get("usage"), dict)


async def stream_raw(gw: Any, body: dict[str, Any]) -> tuple[bytes, str]:
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/chat/completions", headers=AUTH, json=body) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            return await r.read(), r.headers["x-smartproxy-channel"]


async def test_stream_without_include_usage_strips_only_the_chunk_the_gateway_asked_for(
    upstream_factory, gateway_factory
):
    up, url = await upstream_factory("a", usage=split(77))
    gw = await gateway_factory(base_config(channels=[channel("a", url, price_per_token=1e-6)]))
    got, served = await stream_raw(
        gw, {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    )
    assert served == "a"
    assert up.seen[-1].json["stream_options"] == {"include_usage": True}  # asked upstream
    usage_chunks = [e for e in up.sent_stream if is_usage_chunk(e)]
    assert len(usage_chunks) == 1
    assert got == b"".join(e for e in up.sent_stream if e not in usage_chunks)
    await gw.gateway.drain_background()
    row = (await usage_rows(gw))["a"]
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (25, 52, 77)
    assert row["cost_usd"] == pytest.approx(77e-6)


@pytest.mark.parametrize("compact", [False, True], ids=["spaced", "compact"])
@pytest.mark.parametrize("usage", [60, None], ids=["usage", "no-usage"])
async def test_events_read_one_by_one_go_on_as_framed_and_are_counted(
    upstream_factory, gateway_factory, monkeypatch, compact, usage
):
    """An upstream that sends its events apart (each a read of its own; ``"usage": null`` in
    each when asked for usage): they go on as the upstream framed them (``relay._Pump.raw``), the SDK reads every
    word, the bytes are the upstream's but the usage chunk, and usage is counted: the
    upstream's, or one completion token per content event when it gave none."""
    from smartproxy.upstream import relay

    up, url = await upstream_factory("a", usage=split(usage) if usage else None)
    up.chunk_gap, up.compact = 0.01, compact
    up.stream_usage = bool(usage)  # none: a provider that ignores include_usage
    passed: list[bool] = []
    raw = relay._Pump.raw

    def spy(pump: Any, framed: bytes, starts: list[int]) -> bool:
        passed.append(raw(pump, framed, starts))
        return passed[-1]

    monkeypatch.setattr(relay._Pump, "raw", spy)
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    settled = watch_settles(gw)
    got, _ = await stream_raw(gw, {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True})
    assert got == b"".join(e for e in up.sent_stream if not is_usage_chunk(e))
    assert passed.count(True) >= len(up.chunks) - 2  # the path under test was taken
    record = await asyncio.wait_for(settled.get(), 5)
    if usage:
        assert (record.usage_source, record.total_tokens) == ("upstream", 60)
    else:
        assert (record.usage_source, record.completion_tokens) == ("estimated", len(up.chunks))
    stream = await gw.openai().chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "".join(up.chunks)
    assert (chunks[-1].usage.total_tokens if usage else chunks[-1].usage) == usage


async def test_stream_with_include_usage_is_relayed_whole(upstream_factory, gateway_factory):
    up, url = await upstream_factory("a", usage=split(90))
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    raw = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.url + "/chat/completions",
            data=raw,
            headers={**AUTH, "Content-Type": "application/json"},
        ) as r:
            got = await r.read()
    assert up.seen[-1].body == raw  # nothing to add: the body went up unchanged
    assert got == b"".join(up.sent_stream) and any(is_usage_chunk(e) for e in up.sent_stream)
    await gw.gateway.drain_background()
    assert (await usage_rows(gw))["a"]["total_tokens"] == 90


async def test_stream_usage_through_the_sdk(upstream_factory, gateway_factory):
    up, url = await upstream_factory("a", usage=split(60))
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    sdk = gw.openai()
    plain = [
        c
        async for c in await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
    ]
    assert all(c.choices and c.usage is None for c in plain)
    asked = [
        c
        async for c in await sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    ]
    assert asked[-1].choices == [] and asked[-1].usage.total_tokens == 60
    await gw.gateway.drain_background()
    row = (await usage_rows(gw))["a"]
    assert (row["requests"], row["total_tokens"]) == (2, 120)


async def test_stream_usage_is_estimated_only_when_upstream_reports_none(
    upstream_factory, gateway_factory, caplog
):
    up, url = await upstream_factory("a", stream_usage=False)  # ignores include_usage
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    settled = watch_settles(gw)
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    estimate = (
        await (await gw.client.post("/api/route", json=body, headers=gw.admin_headers())).json()
    )["prompt_tokens_estimate"]
    with caplog.at_level(logging.INFO, logger="smartproxy"):
        got, _ = await stream_raw(gw, body)
        record = await asyncio.wait_for(settled.get(), 5)
    assert got == b"".join(up.sent_stream)  # nothing to strip
    assert (record.usage_source, record.prompt_tokens, record.completion_tokens) == (
        "estimated",
        estimate,
        len(up.chunks),
    )
    assert any(getattr(r, "usage_source", None) == "estimated" for r in caplog.records)


async def test_an_answer_without_usage_is_billed_the_estimate_of_its_text(
    upstream_factory, gateway_factory
):
    """No ``usage`` in a whole answer: the prompt is estimated from the request and the
    completion from the answer's text (not 0), so cost and quotas count it."""
    up, url = await upstream_factory("a", usage=None)
    gw = await gateway_factory(
        base_config(channels=[channel("a", url, price_per_token=1e-6, daily_limit=100_000)])
    )
    settled = watch_settles(gw)
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    estimate = (
        await (await gw.client.post("/api/route", json=body, headers=gw.admin_headers())).json()
    )["prompt_tokens_estimate"]
    answer = await gw.openai().chat.completions.create(**body)
    assert answer.usage is None
    record = await asyncio.wait_for(settled.get(), 5)
    text = "".join(up.chunks)  # "Hello from the fake upstream.": 29 characters
    completion = -(-len(text) // 4)
    assert (record.usage_source, record.prompt_tokens, record.completion_tokens) == (
        "estimated",
        estimate,
        completion,
    )
    row = (await usage_rows(gw))["a"]
    assert row["total_tokens"] == estimate + completion
    assert row["cost_usd"] == pytest.approx((estimate + completion) * 1e-6)


async def test_client_disconnecting_mid_stream_is_billed_for_what_was_sent(
    upstream_factory, gateway_factory, caplog
):
    up, url = await upstream_factory("a", default="hold", usage=split(500))
    gw = await gateway_factory(
        base_config(channels=[channel("a", url, price_per_token=1e-6, daily_limit=100_000)])
    )
    settled = watch_settles(gw)
    raw = json.dumps(
        {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "max_tokens": 400}
    ).encode()
    estimate = (
        await (await gw.client.post("/api/route", data=raw, headers=gw.admin_headers())).json()
    )["prompt_tokens_estimate"]
    with caplog.at_level(logging.INFO, logger="smartproxy"):
        async with aiohttp.ClientSession() as s:
            resp = await s.post(
                gw.url + "/chat/completions",
                data=raw,
                headers={**AUTH, "Content-Type": "application/json"},
            )
            first = await resp.content.readuntil(b"\n\n")
            assert first == up.sent_stream[0]
            resp.close()  # the client goes away with one chunk received
        record = await asyncio.wait_for(settled.get(), 5)
    up.release.set()
    assert record.usage_source == "estimated" and record.status == 499
    assert (record.prompt_tokens, record.completion_tokens) == (estimate, 1)
    assert record.cost == pytest.approx((estimate + 1) * 1e-6)
    assert any(
        getattr(r, "usage_source", None) == "estimated" and r.channel == "a" for r in caplog.records
    )
    row = (await usage_rows(gw))["a"]
    assert row["total_tokens"] == estimate + 1
    assert row["reserved_tokens"] == 0 and row["day_quota_left"] == 100_000 - estimate - 1


# ----------------------------------------------------------------------------- 6. restart
async def test_sqlite_restart_keeps_counters_and_request_log(
    upstream_factory, gateway_factory, tmp_path
):
    _, free_url = await upstream_factory("free", usage=split(100))
    _, paid_url = await upstream_factory("paid", usage=split(100))
    clock = Clock(datetime(2026, 11, 26, 12, 30, tzinfo=UTC))
    cfg = base_config(
        channels=[
            channel("free", free_url, daily_limit=300, hour_limit=1000),
            channel("paid", paid_url, price_per_token=1e-6),
        ],
        storage={"backend": "sqlite", "path": str(tmp_path / "usage.db")},
    )
    first = await gateway_factory(cfg, clock=clock)
    sdk = first.openai()
    served = []
    for _ in range(4):
        resp = await sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=20
        )
        served.append(resp.headers["x-smartproxy-channel"])
    assert served == ["free", "free", "free", "paid"]
    window = {"from": "2026-11-26T00:00:00Z", "to": "2026-11-27T00:00:00Z"}
    before, log_before = await usage_rows(first), await log_rows(first, **window)
    await first.client.close()  # runs cleanup: drains settlements, flushes the store

    second = await gateway_factory(cfg, clock=clock)
    after = await usage_rows(second)
    for name in ("free", "paid"):
        for key in (
            "requests",
            "day_requests",
            "day_tokens",
            "hour_tokens",
            "total_tokens",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "day_quota_left",
        ):
            assert after[name][key] == before[name][key], (name, key)
    assert after["free"]["day_tokens"] == 300 and after["paid"]["cost_usd"] == pytest.approx(1e-4)
    assert await log_rows(second, **window) == log_before
    assert log_before["free"]["requests"] == 3 and log_before["paid"]["total_tokens"] == 100
    assert await log_rows(second, group_by="model", **window) == {
        "gpt-4o-mini": {
            "model": "gpt-4o-mini",
            "requests": 4,
            "prompt_tokens": 132,
            "completion_tokens": 268,
            "total_tokens": 400,
            "cost": pytest.approx(1e-4),
            "errors": 0,
        }
    }
    # the restored day counter still holds the quota
    resp = await second.openai().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=20
    )
    assert resp.headers["x-smartproxy-channel"] == "paid"
    await second.client.close()

    clock.advance(hours=1)  # a restart in the next hour: hour counter new, day counter kept
    third = await gateway_factory(cfg, clock=clock)
    row = (await usage_rows(third))["free"]
    assert (row["hour_tokens"], row["day_tokens"], row["total_tokens"]) == (0, 300, 300)
    assert (await log_rows(third, **window))["paid"]["requests"] == 2
    await third.client.close()
    clock.advance(days=1)  # the next day: day counter new, totals kept
    fourth = await gateway_factory(cfg, clock=clock)
    row = (await usage_rows(fourth))["free"]
    assert (row["day_tokens"], row["total_tokens"], row["requests"]) == (0, 300, 3)


# ----------------------------------------------------------------------------- 8. metrics
def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_token_cost_and_quota_metrics(upstream_factory, gateway_factory):
    _, free_url = await upstream_factory("free", usage=split(90))
    _, paid_url = await upstream_factory("paid", usage=split(90))
    clock = Clock(datetime(2026, 11, 26, 23, 30, tzinfo=UTC))
    gw = await gateway_factory(
        base_config(
            channels=[
                channel("free", free_url, daily_limit=200, hour_limit=90),
                channel("paid", paid_url, price_per_token=1e-6),
            ]
        ),
        clock=clock,
    )
    sdk = gw.openai()
    for _ in range(3):  # free, then paid twice (the hour limit is used up)
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
    await gw.gateway.drain_background()
    m = samples(await (await gw.client.get("/metrics")).text())

    def get(name: str, **labels: str) -> float:
        return m[(name, tuple(sorted(labels.items())))]

    assert get("smartproxy_tokens_total", channel="free", kind="prompt") == 30
    assert get("smartproxy_tokens_total", channel="free", kind="completion") == 60
    assert get("smartproxy_tokens_total", channel="paid", kind="completion") == 120
    assert get("smartproxy_cost_usd_total", channel="paid") == pytest.approx(180e-6)
    assert get("smartproxy_cost_usd_total", channel="free") == 0
    assert get("smartproxy_channel_tokens_used", channel="free", window="day") == 90
    assert get("smartproxy_channel_tokens_used", channel="free", window="hour") == 90
    assert get("smartproxy_channel_quota_tokens", channel="free", window="day") == 200
    assert get("smartproxy_channel_quota_tokens", channel="free", window="hour") == 90
    assert get("smartproxy_channel_tokens_used", channel="paid", window="day") == 180
    assert get("smartproxy_channel_quota_tokens", channel="paid", window="day") == float("inf")
    clock.advance(hours=1)  # 00:30: a new day and hour; the running totals stay
    m = samples(await (await gw.client.get("/metrics")).text())
    assert get("smartproxy_channel_tokens_used", channel="free", window="day") == 0
    assert get("smartproxy_channel_tokens_used", channel="paid", window="hour") == 0
    assert get("smartproxy_tokens_total", channel="paid", kind="prompt") == 60


async def test_a_total_above_prompt_plus_completion_is_counted_and_priced_in_full(
    upstream_factory, gateway_factory
):
    """Contract §4: cost = total_tokens x price. Gemini's OpenAI-compatible API reports its
    thinking tokens only in ``total_tokens``: they count, as completion tokens."""
    up, url = await upstream_factory("a")
    up.usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 20}
    gw = await gateway_factory(base_config(channels=[channel("a", url, price_per_token=0.001)]))
    await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    row = (await usage_rows(gw))["a"]
    assert row["total_tokens"] == 20
    assert row["cost_usd"] == pytest.approx(0.02)


async def test_short_messages_reserve_what_providers_count_so_concurrency_cannot_overrun(
    upstream_factory, gateway_factory
):
    """Contract §4: concurrent requests overrun a quota by at most one request. "hello" with
    max_tokens 10 is 8 prompt tokens for a provider (the chat template's tokens around the text)
    and up to 10 completion tokens: the reservation must cover that, or every concurrent
    request reserving less than it uses lets more through (a quota of 1,000 ended at 1,386)."""
    free_up, free_url = await upstream_factory("free", default="gate-ok")
    paid_up, paid_url = await upstream_factory("paid")
    free_up.usage = {"prompt_tokens": 8, "completion_tokens": 10, "total_tokens": 18}
    gw = await gateway_factory(base_config(channels=[
        channel("free", free_url, daily_limit=1000),
        channel("paid", paid_url, price_per_token=1e-6),
    ]))  # fmt: skip
    body = {"model": "m1", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 10}

    async def one(s: aiohttp.ClientSession) -> str:
        async with s.post(gw.url + "/chat/completions", json=body, headers=AUTH) as r:
            assert r.status == 200
            return r.headers["x-smartproxy-channel"]

    async with aiohttp.ClientSession() as s:
        calls = [asyncio.ensure_future(one(s)) for _ in range(150)]
        while len(free_up.seen) + len(paid_up.seen) < 150:
            await asyncio.sleep(0.01)
        free_up.gate.set()
        served = await asyncio.gather(*calls)
    used = (await usage_rows(gw))["free"]["day_tokens"]
    assert served.count("free") == len(free_up.seen) and used == 18 * served.count("free")
    assert used <= 1000 + 18, f"{served.count('free')} requests used {used} of 1,000"
