"""Issue [5] end to end: retries, backoff, breakers, cool-downs, fallback and honest streams.

Every test goes through the gateway's HTTP surface (the openai SDK or plain aiohttp) to fake
upstreams (real aiohttp apps) whose failures are scripted per channel. Nothing sleeps: backoff
sleeps are recorded by an injected sleep, breaker and cool-down time is an injected clock, and
the only real timeouts are the 0.2 s first-byte deadlines of the "slow"/"late" cases.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest
from conftest import DEV_KEY, Clock, base_config, channel
from prometheus_client.parser import text_string_to_metric_families

from smartproxy.storage.memory import MemoryStore

AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
MESSAGES = [{"role": "user", "content": "hi"}]
TEXT = "Hello from the fake upstream."


class Sleeps:
    """The injected backoff sleep: records each delay, never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def no_jitter(delay: float) -> float:
    return delay


async def make_gateway(
    gateway_factory: Callable[..., Awaitable[Any]],
    channels: list[dict[str, Any]],
    *,
    sleeps: Sleeps | None = None,
    clock: Clock | None = None,
    **overrides: Any,
) -> Any:
    return await gateway_factory(
        base_config(channels=channels, **overrides),
        clock=clock or Clock(),
        retry_sleep=sleeps or Sleeps(),
        retry_jitter=no_jitter,
    )


async def chat(gw: Any, *, model: str = "gpt-4o-mini", stream: bool = False) -> Any:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES}
    if stream:
        body["stream"] = True
    return await gw.client.post("/v1/chat/completions", json=body, headers=AUTH)


async def scrape(gw: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await gw.client.get("/metrics")
    assert resp.status == 200
    out = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def circuits(gw: Any) -> dict[str, str]:
    resp = await gw.client.get("/health")
    return {c["name"]: c["circuit"] for c in (await resp.json())["channels"]}


def closed_port() -> int:
    """A local port nobody listens on (bound, then closed): connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request_log(gw: Any) -> list[Any]:
    store = gw.gateway.store
    assert isinstance(store, MemoryStore)
    return list(store._log)  # noqa: SLF001 - the memory backend's request log, read-only here


# -- 1. A 500 -> B; counted; backoff follows the curve ------------------------------------------


async def test_500_fails_over_counts_and_backs_off(upstream_factory, gateway_factory):
    a, url_a = await upstream_factory("a", default="fail-500")
    b, url_b = await upstream_factory("b")
    sleeps = Sleeps()
    gw = await make_gateway(
        gateway_factory,
        [channel("a", url_a, priority=1), channel("b", url_b, priority=2)],
        sleeps=sleeps,
        retry={"max_attempts": 3, "base_delay_ms": 100, "max_delay_ms": 250},
    )
    raw = await gw.openai().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert raw.parse().choices[0].message.content == TEXT
    assert json.loads(raw.content)["served_by"] == "b"
    assert raw.headers["x-smartproxy-channel"] == "b"
    assert (len(a.seen), len(b.seen)) == (1, 1)
    assert sleeps.delays == [0.1]  # one wait between two attempts: min(max, base * 2**0)
    m = await scrape(gw)
    assert metric(m, "smartproxy_upstream_requests_total", channel="a", status="500") == 1
    assert metric(m, "smartproxy_upstream_requests_total", channel="b", status="200") == 1
    assert metric(m, "smartproxy_retries_total", channel="a") == 1
    assert metric(m, "smartproxy_retries_total", channel="b") == 0


async def test_backoff_delays_follow_the_capped_curve(upstream_factory, gateway_factory):
    a, url_a = await upstream_factory("a", default="fail-500")
    b, url_b = await upstream_factory("b", default="fail-503")
    sleeps = Sleeps()
    gw = await make_gateway(
        gateway_factory,
        [channel("a", url_a, priority=1), channel("b", url_b, priority=2)],
        sleeps=sleeps,
        retry={"max_attempts": 5, "base_delay_ms": 100, "max_delay_ms": 250},
    )
    resp = await chat(gw)
    # Every attempt got an HTTP answer: the last one comes back unchanged, attempts listed.
    assert resp.status == 503
    assert (await resp.json())["error"]["message"] == "b says 503"
    assert resp.headers["x-smartproxy-attempts"] == "a:500, b:503, b:503, b:503, b:503"
    # min(max_delay, base * 2**n) for n = 0..3
    assert sleeps.delays == [0.1, 0.2, 0.25, 0.25]
    assert (len(a.seen), len(b.seen)) == (1, 4)  # one candidate left: it is retried


async def test_max_attempts_bounds_attempts_across_channels(upstream_factory, gateway_factory):
    ups = [await upstream_factory(n, default="fail-502") for n in "abc"]
    gw = await make_gateway(
        gateway_factory,
        [channel(up.name, url, priority=i) for i, (up, url) in enumerate(ups)],
        retry={"max_attempts": 2, "base_delay_ms": 1, "max_delay_ms": 1},
    )
    resp = await chat(gw)
    assert resp.status == 502
    assert resp.headers["x-smartproxy-attempts"] == "a:502, b:502"
    assert [len(up.seen) for up, _ in ups] == [1, 1, 0]


async def test_one_candidate_left_is_retried(upstream_factory, gateway_factory):
    a, url_a = await upstream_factory("a", script=["fail-503", "drop"])
    sleeps = Sleeps()
    gw = await make_gateway(gateway_factory, [channel("a", url_a)], sleeps=sleeps)
    resp = await chat(gw)
    assert resp.status == 200
    assert (await resp.json())["served_by"] == "a"
    assert len(a.seen) == 3
    assert sleeps.delays == [0.001, 0.002]  # base_config: base 1 ms, max 2 ms


# -- 2. breaker: open, skipped, one trial, closes / re-opens --------------------------------------


async def test_breaker_opens_skips_trials_once_and_logs_changes_once(
    upstream_factory, gateway_factory, caplog
):
    caplog.set_level(logging.INFO, logger="smartproxy.upstream.breaker")
    clock = Clock()
    a, url_a = await upstream_factory("a", default="fail-500")
    b, url_b = await upstream_factory("b")
    gw = await make_gateway(
        gateway_factory,
        # A overrides the global breaker settings (fail_max 5, reset 30 s).
        [
            channel("a", url_a, priority=1, fail_max=2, reset_timeout=10),
            channel("b", url_b, priority=2),
        ],
        clock=clock,
        circuit_breaker={"fail_max": 5, "reset_timeout": 30},
    )
    for _ in range(2):
        assert (await chat(gw)).status == 200
    assert len(a.seen) == 2
    assert (await circuits(gw))["a"] == "open"
    m = await scrape(gw)
    assert metric(m, "smartproxy_circuit_state", channel="a") == 2
    assert metric(m, "smartproxy_circuit_state", channel="b") == 0

    # Open: A is skipped without being called.
    for _ in range(3):
        resp = await chat(gw)
        assert resp.headers["x-smartproxy-channel"] == "b"
    assert len(a.seen) == 2
    clock.advance(seconds=9.9)
    assert (await chat(gw)).status == 200
    assert len(a.seen) == 2

    # reset_timeout passed: half-open; of several concurrent requests exactly one reaches A.
    clock.advance(seconds=0.1)
    assert (await circuits(gw))["a"] == "half_open"
    assert metric(await scrape(gw), "smartproxy_circuit_state", channel="a") == 1
    a.script, a.default = ["gate-ok"], None  # the trial waits at A until we open the gate
    tasks = [asyncio.ensure_future(chat(gw)) for _ in range(6)]
    pending = set(tasks)
    async with asyncio.timeout(5):
        while len(pending) > 1:  # the five others are served by B while the trial is held
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    assert len(a.seen) == 3
    a.gate.set()
    served = [(await t).headers["x-smartproxy-channel"] for t in tasks]
    assert sorted(served) == ["a"] + ["b"] * 5
    assert (await circuits(gw))["a"] == "healthy"  # trial succeeded: closed
    assert metric(await scrape(gw), "smartproxy_circuit_state", channel="a") == 0
    assert (await chat(gw)).headers["x-smartproxy-channel"] == "a"

    # Open it again; this time the trial fails and re-opens it at once.
    a.gate.clear()
    a.default = "fail-500"
    for _ in range(2):
        await chat(gw)
    assert (await circuits(gw))["a"] == "open"
    clock.advance(seconds=10)
    seen = len(a.seen)
    assert (await chat(gw)).headers["x-smartproxy-channel"] == "b"  # trial 500 -> B
    assert len(a.seen) == seen + 1
    assert (await circuits(gw))["a"] == "open"
    await chat(gw)
    assert len(a.seen) == seen + 1

    changes = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("circuit breaker")
    ]
    assert changes == [
        "circuit breaker a: closed -> open",
        "circuit breaker a: open -> half_open",
        "circuit breaker a: half_open -> closed",
        "circuit breaker a: closed -> open",
        "circuit breaker a: open -> half_open",
        "circuit breaker a: half_open -> open",
    ]


# -- 3. 429 + Retry-After: cool-down, not a breaker failure ---------------------------------------


async def test_429_cools_down_for_retry_after_without_breaker_failure(
    upstream_factory, gateway_factory
):
    clock = Clock()
    a, url_a = await upstream_factory("a", default="fail-429", retry_after="2")
    b, url_b = await upstream_factory("b")
    gw = await make_gateway(
        gateway_factory,
        [channel("a", url_a, priority=1), channel("b", url_b, priority=2)],
        clock=clock,
        circuit_breaker={"fail_max": 2, "reset_timeout": 30},
    )
    for round_ in range(1, 5):  # four 429s: more than fail_max
        assert (await chat(gw)).headers["x-smartproxy-channel"] == "b"
        assert len(a.seen) == round_
        assert (await circuits(gw))["a"] == "cooldown"
        clock.advance(seconds=1.9)
        assert (await chat(gw)).headers["x-smartproxy-channel"] == "b"
        assert len(a.seen) == round_  # still cooling down: not called
        clock.advance(seconds=0.1)
        assert (await circuits(gw))["a"] == "healthy"  # breaker never opened
    m = await scrape(gw)
    assert metric(m, "smartproxy_upstream_requests_total", channel="a", status="429") == 4
    assert metric(m, "smartproxy_circuit_state", channel="a") == 0
    a.default = None
    assert (await chat(gw)).headers["x-smartproxy-channel"] == "a"


async def test_429_from_the_only_channel_comes_back_unchanged_without_backoff(
    upstream_factory, gateway_factory
):
    a, url_a = await upstream_factory("a", default="fail-429", retry_after="7")
    sleeps = Sleeps()
    gw = await make_gateway(gateway_factory, [channel("a", url_a)], sleeps=sleeps)
    resp = await chat(gw)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    assert resp.headers["x-smartproxy-attempts"] == "a:429"
    assert (await resp.json())["error"]["message"] == "a says 429"
    # Cooling down: no retry of the same channel and no pointless backoff before skipping it.
    assert (len(a.seen), sleeps.delays) == (1, [])


async def test_401_and_403_fail_over_without_breaker_failure(upstream_factory, gateway_factory):
    a, url_a = await upstream_factory("a", script=["fail-401", "fail-403"] * 2)
    b, url_b = await upstream_factory("b")
    gw = await make_gateway(
        gateway_factory,
        [channel("a", url_a, priority=1), channel("b", url_b, priority=2)],
        circuit_breaker={"fail_max": 1, "reset_timeout": 30},
    )
    for n in range(1, 5):
        resp = await chat(gw)
        assert resp.headers["x-smartproxy-channel"] == "b"
        assert len(a.seen) == n  # fail_max 1, yet A is still tried: no breaker failure
    assert (await circuits(gw))["a"] == "healthy"


# -- 4. other 4xx: returned at once ---------------------------------------------------------------


async def test_400_is_returned_at_once_with_one_upstream_call(upstream_factory, gateway_factory):
    a, url_a = await upstream_factory("a", default="fail-400")
    b, url_b = await upstream_factory("b")
    sleeps = Sleeps()
    gw = await make_gateway(
        gateway_factory,
        [channel("a", url_a, priority=1), channel("b", url_b, priority=2)],
        sleeps=sleeps,
    )
    with pytest.raises(openai.BadRequestError) as info:
        await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.status_code == 400
    assert info.value.body["message"] == "a says 400"
    assert (len(a.seen), len(b.seen), sleeps.delays) == (1, 0, [])
    assert info.value.response.headers["x-smartproxy-channel"] == "a"


# -- 5. refused, dropped, slow first byte -> fail over --------------------------------------------


@pytest.mark.parametrize(
    ("case", "stream", "error_status"),
    [
        ("refused", False, "error"),
        ("drop", False, "error"),
        ("drop", True, "error"),
        ("slow", False, "timeout"),
        ("slow", True, "timeout"),
        ("late", True, "timeout"),  # headers at once, the first chunk never in time
    ],
)
async def test_connection_failures_and_slow_first_byte_fail_over(
    upstream_factory, gateway_factory, case, stream, error_status
):
    a, url_a = await upstream_factory("a", default=case)
    b, url_b = await upstream_factory("b")
    if case == "refused":
        url_a = f"http://127.0.0.1:{closed_port()}/v1"
    gw = await make_gateway(
        gateway_factory,
        [
            channel("a", url_a, priority=1, first_byte_timeout=0.2),
            channel("b", url_b, priority=2),
        ],
    )
    sdk = gw.openai()
    if stream:
        chunks = [
            c
            async for c in await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True
            )
        ]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    else:
        done = await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert done.choices[0].message.content == TEXT
    assert len(b.seen) == 1
    m = await scrape(gw)
    assert metric(m, "smartproxy_upstream_requests_total", channel="a", status=error_status) == 1
    assert metric(m, "smartproxy_retries_total", channel="a") == 1


# -- 6. streams: invisible failover before the first chunk, honest error after --------------------


async def test_stream_failure_before_first_chunk_is_invisible(upstream_factory, gateway_factory):
    a, url_a = await upstream_factory("a", script=["fail-503", "drop"])
    b, url_b = await upstream_factory("b")
    gw = await make_gateway(
        gateway_factory,
        [channel("a", url_a, priority=1), channel("b", url_b, priority=2)],
        retry={"max_attempts": 3, "base_delay_ms": 1, "max_delay_ms": 1},
    )
    resp = await chat(gw, stream=True)
    assert resp.status == 200
    assert resp.headers["x-smartproxy-channel"] == "b"
    body = await resp.read()
    # Byte for byte B's stream, minus the usage chunk the gateway asked for on its own.
    expected = b"".join(e for e in b.sent_stream if b'"choices": []' not in e)
    assert body == expected
    assert b"event: error" not in body
    assert len(a.seen) == 1 and len(b.seen) == 1


async def test_stream_cut_after_chunk_3_ends_with_error_event_and_bills_partial_usage(
    upstream_factory, gateway_factory
):
    a, url_a = await upstream_factory("a", default="cut-3")
    b, url_b = await upstream_factory("b")
    gw = await make_gateway(
        gateway_factory, [channel("a", url_a, priority=1), channel("b", url_b, priority=2)]
    )
    resp = await chat(gw, stream=True)
    assert resp.status == 200
    body = await resp.read()
    sent = b"".join(a.sent_stream)
    assert len(a.sent_stream) == 3
    assert body.startswith(sent)  # chunks 1-3 exactly as upstream sent them
    tail = body[len(sent) :]
    assert tail.startswith(b"event: error\ndata: ") and tail.endswith(b"\n\n")
    error = json.loads(tail.split(b"data: ", 1)[1])["error"]
    assert "upstream stream broke" in error["message"]
    assert "connection broke" in error["message"]
    assert error["code"] == "upstream_stream_error"
    assert len(b.seen) == 0  # never failed over once bytes reached the client

    await gw.gateway.drain_background()
    (record,) = request_log(gw)
    assert record.channel == "a" and record.stream
    assert record.status >= 500 and record.error
    assert record.usage_source == "estimated"
    assert record.completion_tokens == 3  # one per chunk sent
    assert record.prompt_tokens > 0
    rows = await gw.gateway.store.query(None, None, "channel")
    assert rows[0]["channel"] == "a"
    m = await scrape(gw)
    assert metric(m, "smartproxy_tokens_total", channel="a", kind="completion") == 3
    assert metric(m, "smartproxy_upstream_requests_total", channel="a", status="502") == 1


async def test_stream_cut_raises_in_the_openai_sdk_after_three_chunks(
    upstream_factory, gateway_factory
):
    a, url_a = await upstream_factory("a", default="cut-3")
    gw = await make_gateway(gateway_factory, [channel("a", url_a)])
    got: list[str] = []
    stream = await gw.openai().chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIError, match="upstream stream broke"):
        async for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert got == ["Hello", " from", " the"]


async def test_client_disconnect_mid_stream_bills_once(upstream_factory, gateway_factory):
    a, url_a = await upstream_factory("a", default="hold")
    gw = await make_gateway(gateway_factory, [channel("a", url_a)])
    store = gw.gateway.store
    settled = asyncio.Event()
    real_settle = store.settle

    async def settle(*args: Any) -> None:
        await real_settle(*args)
        settled.set()

    store.settle = settle
    real_settle_now = getattr(store, "settle_now", None)
    if real_settle_now is not None:  # in-process stores settle synchronously

        def settle_now(*args: Any) -> None:
            real_settle_now(*args)
            settled.set()

        store.settle_now = settle_now
    resp = await chat(gw, stream=True)
    first = await resp.content.readuntil(b"\n\n")
    assert b"Hello" in first
    resp.close()  # the client goes away while upstream holds the rest
    async with asyncio.timeout(5):
        await settled.wait()
    a.release.set()
    await gw.gateway.drain_background()

    (record,) = request_log(gw)
    assert record.status == 499 and record.error == "client disconnected"
    usage = (await store.usage(["a"], gw.gateway.clock()))["a"]
    assert usage.day_reserved_tokens == 0 and store.status()["reservations"] == 0
    (row,) = await store.query(None, None, "channel")
    m = await scrape(gw)
    billed = metric(m, "smartproxy_tokens_total", channel="a", kind="prompt") + metric(
        m, "smartproxy_tokens_total", channel="a", kind="completion"
    )
    assert billed == row["prompt_tokens"] + row["completion_tokens"] == usage.total_tokens
    assert usage.total_requests == 1


# -- 7. when nothing works ------------------------------------------------------------------------


async def test_all_channels_down_is_502_listing_each_attempt(upstream_factory, gateway_factory):
    a, url_a = await upstream_factory("a", default="drop")
    gw = await make_gateway(
        gateway_factory,
        [
            channel("a", url_a, priority=1),
            channel("b", f"http://127.0.0.1:{closed_port()}/v1", priority=2),
        ],
        retry={"max_attempts": 2, "base_delay_ms": 1, "max_delay_ms": 1},
    )
    with pytest.raises(openai.APIStatusError) as info:
        await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.status_code == 502
    error = info.value.body
    assert error["type"] == "upstream_error" and error["code"] == "upstream_failed"
    message = error["message"]
    assert "a: server disconnected without an answer after " in message
    assert "b: cannot connect to 127.0.0.1:" in message and "Connection refused" in message
    assert message.count(" ms") == 2  # each attempt's time
    assert info.value.response.headers["x-smartproxy-attempts"] == "a:error, b:error"


async def test_last_http_answer_returned_unchanged_with_attempts(upstream_factory, gateway_factory):
    a, url_a = await upstream_factory("a", default="fail-500")
    b, url_b = await upstream_factory("b", default="fail-503")
    gw = await make_gateway(
        gateway_factory,
        [channel("a", url_a, priority=1), channel("b", url_b, priority=2)],
        retry={"max_attempts": 2, "base_delay_ms": 1, "max_delay_ms": 1},
    )
    resp = await chat(gw)
    assert resp.status == 503
    assert resp.headers["x-smartproxy-attempts"] == "a:500, b:503"
    direct = await gw.client.session.post(url_b + "/chat/completions", json={"model": "m"})
    assert await resp.read() == await direct.read()


async def test_an_http_answer_before_connection_errors_is_returned(
    upstream_factory, gateway_factory
):
    """a answered 503, b and c got no answer: a's 503 comes back, not a gateway-made 502."""
    a, url_a = await upstream_factory("a", default="fail-503")
    c, url_c = await upstream_factory("c", default="drop")
    gw = await make_gateway(
        gateway_factory,
        [
            channel("a", url_a, priority=1),
            channel("b", f"http://127.0.0.1:{closed_port()}/v1", priority=2),
            channel("c", url_c, priority=3),
        ],
    )
    resp = await chat(gw)
    assert resp.status == 503
    assert resp.headers["x-smartproxy-attempts"] == "a:503, b:error, c:error"
    assert (await resp.json())["error"]["message"] == "a says 503"  # a's own body
    direct = await gw.client.session.post(url_a + "/chat/completions", json={"model": "m"})
    assert await resp.read() == await direct.read()


async def test_unknown_model_is_404(upstream_factory, gateway_factory):
    a, url_a = await upstream_factory("a")
    gw = await make_gateway(gateway_factory, [channel("a", url_a, models=["gpt-4o-mini"])])
    with pytest.raises(openai.NotFoundError) as info:
        await gw.openai().chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.body["code"] == "model_not_found"
    assert len(a.seen) == 0


async def test_every_circuit_open_is_503(upstream_factory, gateway_factory):
    a, url_a = await upstream_factory("a", default="fail-500")
    b, url_b = await upstream_factory("b", default="fail-502")
    gw = await make_gateway(
        gateway_factory,
        [channel("a", url_a, priority=1), channel("b", url_b, priority=2)],
        circuit_breaker={"fail_max": 1, "reset_timeout": 30},
    )
    first = await chat(gw)
    assert first.status == 502 and first.headers["x-smartproxy-attempts"] == "a:500, b:502"
    assert await circuits(gw) == {"a": "open", "b": "open"}
    resp = await chat(gw)
    assert resp.status == 503
    error = (await resp.json())["error"]
    assert error["code"] == "no_channel_available"
    assert "a: circuit open" in error["message"] and "b: circuit open" in error["message"]
    assert (len(a.seen), len(b.seen)) == (1, 1)


async def test_every_attempt_timed_out_is_504(upstream_factory, gateway_factory):
    a, url_a = await upstream_factory("a", default="slow")
    b, url_b = await upstream_factory("b", default="late")
    gw = await make_gateway(
        gateway_factory,
        [
            channel("a", url_a, priority=1, first_byte_timeout=0.2),
            channel("b", url_b, priority=2, first_byte_timeout=0.2),
        ],
        retry={"max_attempts": 2, "base_delay_ms": 1, "max_delay_ms": 1},
    )
    resp = await chat(gw, stream=True)
    assert resp.status == 504
    error = (await resp.json())["error"]
    assert error["code"] == "upstream_timeout"
    assert "a: timeout (no answer within 0.2s)" in error["message"]
    assert "b: timeout (no first chunk within 0.2s)" in error["message"]
    assert resp.headers["x-smartproxy-attempts"] == "a:timeout, b:timeout"


async def test_client_gone_during_backoff_leaves_no_trial_slot_or_reservation(
    upstream_factory, gateway_factory
):
    clock = Clock()
    a, url_a = await upstream_factory("a", default="fail-500")
    b, url_b = await upstream_factory("b", script=["fail-500"])
    entered, cancelled = asyncio.Event(), asyncio.Event()
    block = False

    async def sleep(delay: float) -> None:
        if block:
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    gw = await gateway_factory(
        base_config(
            channels=[
                channel("a", url_a, priority=1),
                channel("b", url_b, priority=2, fail_max=1, reset_timeout=5),
            ]
        ),
        clock=clock,
        retry_sleep=sleep,
        retry_jitter=no_jitter,
    )
    assert (await chat(gw)).status == 500  # b:500 opens B
    clock.advance(seconds=5)
    assert (await circuits(gw))["b"] == "half_open"
    block = True
    task = asyncio.ensure_future(chat(gw))
    async with asyncio.timeout(5):
        await entered.wait()  # A failed; the loop waits before trying B
        task.cancel()  # the client goes away during the backoff
        await cancelled.wait()
    block = False
    assert gw.gateway.store.status()["reservations"] == 0
    assert len(b.seen) == 1
    resp = await chat(gw)  # B's trial slot is free: this request gets it
    assert resp.status == 200 and resp.headers["x-smartproxy-channel"] == "b"
    assert (await circuits(gw))["b"] == "healthy"
