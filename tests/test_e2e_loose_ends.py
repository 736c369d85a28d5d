"""Loose ends of issue [12], each from the outside: 401/403 not retried on the last candidate, a
stream ending without [DONE] counts against the breaker, a client leaving a non-streaming request is
billed the prompt estimate, CJK prompts are estimated per character, failed-auth lines are rate
limited per address, and X-Forwarded-For is believed only from ``server.trusted_proxies``."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import DEV_KEY, base_config, channel
from prometheus_client.parser import text_string_to_metric_families

from smartproxy.security.authlog import FailureLines
from smartproxy.security.ratelimit import FailurePenalty
from smartproxy.storage.base import RequestRecord

AUTH = {"Authorization": f"Bearer {DEV_KEY}"}


async def post_chat(gw: Any, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return await gw.client.post("/v1/chat/completions", headers=headers or AUTH, json=body)


def settled_records(gw: Any) -> list[RequestRecord]:
    """Every record the gateway's (in-process) store settles from now on."""
    records: list[RequestRecord] = []
    store = gw.gateway.store
    original = store.settle_now

    def settle_now(reservation: Any, record: RequestRecord, now: Any) -> Any:
        records.append(record)
        return original(reservation, record, now)

    store.settle_now = settle_now
    return records


# ----------------------------------------------------------------------------- 401/403
@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_on_the_last_candidate_is_not_retried(
    upstream_factory: Any, gateway_factory: Any, status: int
) -> None:
    fake, url = await upstream_factory(default=f"fail-{status}")
    gw = await gateway_factory(base_config(channels=[channel("only", url)]))
    resp = await post_chat(gw, {"model": "m", "messages": []})
    assert resp.status == status  # upstream's answer, at once
    assert len(fake.seen) == 1  # max_attempts is 3: before the fix the same key was sent 3 times
    assert resp.headers["x-smartproxy-attempts"] == f"only:{status}"


async def test_a_refused_key_still_fails_over_to_the_next_channel(
    upstream_factory: Any, gateway_factory: Any
) -> None:
    broken, broken_url = await upstream_factory("broken", default="fail-401")
    good, good_url = await upstream_factory("good")
    chans = [channel("broken", broken_url), channel("good", good_url, priority=5)]
    gw = await gateway_factory(base_config(channels=chans))
    resp = await post_chat(gw, {"model": "m", "messages": []})
    assert resp.status == 200 and resp.headers["x-smartproxy-channel"] == "good"
    assert len(broken.seen) == 1


# ----------------------------------------------------------------------------- no [DONE]
async def test_a_stream_that_ends_cleanly_without_done_opens_the_breaker(
    gateway_factory: Any,
) -> None:
    async def cut_short(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await resp.write_eof()  # a clean end, but no [DONE]
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", cut_short)
    server = TestServer(app)
    await server.start_server()
    try:
        cut = channel("cut", str(server.make_url("/v1")), fail_max=1)
        gw = await gateway_factory(base_config(channels=[cut]))
        resp = await post_chat(gw, {"model": "m", "stream": True, "messages": []})
        text = await resp.text()
        assert resp.status == 200 and "event: error" in text or '"error"' in text
        health = await (await gw.client.get("/health")).json()
        assert health["channels"][0]["circuit"] == "open"
    finally:
        await server.close()


# ----------------------------------------------------------------------------- client leaves
async def test_a_client_leaving_a_non_streaming_request_is_billed_the_prompt_estimate(
    upstream_factory: Any, gateway_factory: Any, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="smartproxy.upstream")
    fake, url = await upstream_factory(default="slow")
    gw = await gateway_factory(base_config(channels=[channel("c", url)]))
    records = settled_records(gw)
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
    estimate = (await (await gw.client.post("/api/route", headers=gw.admin_headers(),
                                            json=body)).json())["prompt_tokens_estimate"]
    task = asyncio.create_task(post_chat(gw, body))
    for _ in range(300):
        if fake.seen:
            break
        await asyncio.sleep(0.01)
    assert fake.seen  # upstream is working on it
    task.cancel()  # the client goes away before the answer
    await asyncio.gather(task, return_exceptions=True)
    for _ in range(300):
        if records:
            break
        await asyncio.sleep(0.01)
    assert len(records) == 1
    record = records[0]
    assert record.usage_source == "estimated" and record.prompt_tokens == estimate > 100
    assert record.completion_tokens == 0 and record.status == 499
    usage = (await (await gw.client.get("/api/usage", headers=gw.admin_headers())).json())
    assert usage["channels"][0]["total_tokens"] == estimate
    assert any(getattr(r, "usage_source", None) == "estimated" for r in caplog.records)


# ----------------------------------------------------------------------------- CJK estimate
CHINESE = ("长城是中国古代的军事防御工程，东西绵延上万华里，因此又称作万里长城。"
           "现存的长城遗迹主要为始建于十四世纪的明长城，西起嘉峪关，东至辽东虎山。") * 4


async def test_a_chinese_prompt_is_estimated_close_to_upstream_usage(
    upstream_factory: Any, gateway_factory: Any
) -> None:
    """The fake upstream reports what current OpenAI tokenizers (o200k) give for common Chinese
    text, about one token a character, plus the chat format's few tokens. The gateway's estimate
    must land near it; bytes/4 gave about 0.75 tokens a character."""
    upstream_count = len(CHINESE) + 7
    usage = {"prompt_tokens": upstream_count, "completion_tokens": 5,
             "total_tokens": upstream_count + 5}
    reporting, reporting_url = await upstream_factory("reporting", usage=usage)
    silent, silent_url = await upstream_factory("silent", stream_usage=False)
    chans = [channel("reporting", reporting_url, models=["with-usage"]),
             channel("silent", silent_url, models=["no-usage"])]
    gw = await gateway_factory(base_config(channels=chans))
    records = settled_records(gw)
    messages = [{"role": "user", "content": CHINESE}]
    sdk = gw.openai()
    await sdk.chat.completions.create(model="with-usage", messages=messages)
    stream = await sdk.chat.completions.create(model="no-usage", messages=messages, stream=True)
    async for _ in stream:
        pass
    upstream, estimated = records
    assert upstream.usage_source == "upstream" and upstream.prompt_tokens == upstream_count
    assert estimated.usage_source == "estimated"
    assert abs(estimated.prompt_tokens - upstream_count) / upstream_count < 0.1, (
        estimated.prompt_tokens, upstream_count)


# ----------------------------------------------------------------------------- auth lines
class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def no_sleep(_seconds: float) -> None:
    return None


async def test_failed_auth_lines_are_rate_limited_per_address(
    gateway_factory: Any, tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING)
    cfg = base_config(channels=[{"name": "mock", "type": "mock"}])
    cfg["audit"] = {"path": str(tmp_path / "audit.log")}
    gw = await gateway_factory(cfg)
    ticks = Ticks()
    gw.gateway.auth_lines = FailureLines(clock=ticks)
    gw.gateway.penalty = FailurePenalty(sleep=no_sleep)
    bad = {"Authorization": "Bearer sk-guess-0000000000"}
    for _ in range(30):
        assert (await post_chat(gw, {"model": "m", "messages": []}, bad)).status == 401
        assert (await gw.client.get("/api/channels", headers=bad)).status == 401
    lines = [r.getMessage() for r in caplog.records
             if "API key rejected" in r.getMessage() or "admin auth failed" in r.getMessage()]
    audit_file = tmp_path / "audit.log"
    audited = audit_file.read_text().splitlines() if audit_file.exists() else []
    # One address, 60 failures in one second: one line (proxy and admin failures share it).
    assert len(lines) == 1 and len(audited) <= 1, lines
    ticks.now += 1.5
    assert (await gw.client.get("/api/channels", headers=bad)).status == 401
    audit = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert audit[-1]["action"] == "auth_failed"
    assert "59 more from this address not logged" in audit[-1]["reason"]
    assert "59 more from this address not logged" in caplog.records[-1].getMessage()
    metrics = await (await gw.client.get("/metrics")).text()
    failures = {s.labels["reason"]: s.value
                for f in text_string_to_metric_families(metrics) if f.name ==
                "smartproxy_auth_failures" for s in f.samples if s.name.endswith("_total")}
    assert failures["unknown"] == 30  # metrics still count every failure


# ----------------------------------------------------------------------------- trusted proxies
@pytest.mark.parametrize("trusted", [[], ["127.0.0.0/8"]])
async def test_x_forwarded_for_is_believed_only_from_trusted_proxies(
    gateway_factory: Any, tmp_path: Path, caplog: Any, trusted: list[str]
) -> None:
    caplog.set_level(logging.WARNING)
    cfg = base_config(channels=[{"name": "mock", "type": "mock"}])
    cfg["server"]["trusted_proxies"] = trusted
    cfg["audit"] = {"path": str(tmp_path / "audit.log")}
    gw = await gateway_factory(cfg, write_file=True)
    gw.gateway.penalty = FailurePenalty(sleep=no_sleep)
    forwarded = {"X-Forwarded-For": "198.51.100.9, 203.0.113.7, 127.0.0.1"}
    expected = "203.0.113.7" if trusted else "127.0.0.1"  # rightmost untrusted hop
    bad = {"Authorization": "Bearer sk-guess-0000000000", **forwarded}
    assert (await post_chat(gw, {"model": "m", "messages": []}, bad)).status == 401
    assert f"from {expected}" in caplog.text
    assert gw.gateway.penalty._count(expected, gw.gateway.penalty._clock()) == 1
    admin = {**gw.admin_headers(), **forwarded}
    resp = await gw.client.post("/api/channels", headers=admin,
                                json={"name": "m2", "type": "mock"})
    assert resp.status in (200, 201), await resp.text()
    line = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
    assert line["action"] == "channel.upsert" and line["address"] == expected
