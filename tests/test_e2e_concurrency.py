"""``max_concurrency`` and ``server.queue_timeout`` from the outside (contract §4).

The upstream here holds every request until the test lets it go, one by one, so the order in
which queued requests reach it is observable exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import DEV_KEY, base_config, channel
from prometheus_client.parser import text_string_to_metric_families


class HeldUpstream:
    """Answers each chat request only when the test releases it; records arrival order."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        text = body["messages"][0]["content"]
        self.arrived.append(text)
        await self.gates.setdefault(text, asyncio.Event()).wait()
        return web.json_response({
            "id": "c", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        })

    def let_go(self, text: str) -> None:
        self.gates.setdefault(text, asyncio.Event()).set()


@pytest.fixture
async def held() -> Any:
    up = HeldUpstream()
    server = TestServer(up.app())
    await server.start_server()
    yield up, str(server.make_url("/v1"))
    for gate in up.gates.values():
        gate.set()
    await server.close()


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def ask(sdk: Any, text: str) -> Awaitable[Any]:
    return sdk.chat.completions.create(
        model="m", messages=[{"role": "user", "content": text}], max_tokens=1
    )


async def test_two_run_and_four_wait_then_run_in_arrival_order(held: Any, gateway_factory: Any):
    up, url = held
    gw = await gateway_factory(base_config(channels=[channel("c", url, max_concurrency=2)]))
    slots = gw.gateway.slots
    sdk = gw.openai()
    tasks = []
    for i in range(6):  # each request is in place (running or queued) before the next starts
        tasks.append(asyncio.create_task(ask(sdk, f"r{i}")))
        await until(lambda i=i: len(up.arrived) + slots.queued() == i + 1, f"request r{i}")
    assert up.arrived == ["r0", "r1"] and slots.queued() == 4
    assert slots.in_flight("c") == 2
    health = await (await gw.client.get("/health")).json()
    assert health["queued"] == 4
    assert [(c["in_flight"], c["max_concurrency"]) for c in health["channels"]] == [(2, 2)]
    for done, expect_next in (("r0", "r2"), ("r1", "r3"), ("r2", "r4"), ("r3", "r5")):
        up.let_go(done)
        await until(lambda n=expect_next: n in up.arrived, expect_next)
        assert up.arrived[-1] == expect_next  # the oldest waiter got the freed slot
        assert slots.in_flight("c") == 2
    up.let_go("r4")
    up.let_go("r5")
    answers = await asyncio.gather(*tasks)
    assert [a.choices[0].message.content for a in answers] == [f"r{i}" for i in range(6)]
    assert up.arrived == [f"r{i}" for i in range(6)]
    assert slots.in_flight("c") == 0 and slots.queued() == 0
    text = await (await gw.client.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    waits = {s.name: s.value for s in families["smartproxy_queue_wait_seconds"].samples}
    assert waits["smartproxy_queue_wait_seconds_count"] == 4
    in_flight = families["smartproxy_channel_in_flight"].samples
    assert [(s.labels, s.value) for s in in_flight] == [({"channel": "c"}, 0.0)]


async def test_waiting_requests_get_503_saying_why_after_queue_timeout(held: Any, gateway_factory):
    up, url = held
    cfg = base_config(channels=[channel("c", url, max_concurrency=2)])
    cfg["server"]["queue_timeout"] = 0.5
    gw = await gateway_factory(cfg)
    sdk = gw.openai()
    running = [asyncio.create_task(ask(sdk, f"r{i}")) for i in range(2)]
    await until(lambda: len(up.arrived) == 2, "two running")
    route = await gw.client.post("/api/route", headers=gw.admin_headers(),
                                 json={"model": "m", "messages": []})
    decision = await route.json()
    assert decision["candidates"] == [] and "max_concurrency" in decision["excluded"][0]["reason"]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    waiting = [asyncio.create_task(ask(sdk, f"w{i}")) for i in range(4)]
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert 0.45 < loop.time() - t0 < 3
    for exc in results:
        assert isinstance(exc, openai.APIStatusError) and exc.status_code == 503
        error = exc.body if isinstance(exc.body, dict) else {}
        assert exc.code == "no_channel_available", error
        assert "max_concurrency" in exc.message and "queue_timeout" in exc.message
    assert up.arrived == ["r0", "r1"]  # none of the waiting ones reached upstream
    assert gw.gateway.slots.queued() == 0
    up.let_go("r0")
    up.let_go("r1")
    await asyncio.gather(*running)
    assert gw.gateway.slots.in_flight("c") == 0


async def test_a_full_channel_is_skipped_for_a_free_one(held: Any, upstream_factory: Any,
                                                         gateway_factory: Any) -> None:
    up, url = held
    other, other_url = await upstream_factory("other")
    cheap = channel("cheap", url, max_concurrency=1)
    dear = channel("dear", other_url, price_per_token=0.001)
    gw = await gateway_factory(base_config(channels=[cheap, dear]))
    sdk = gw.openai()
    first = asyncio.create_task(ask(sdk, "r0"))
    await until(lambda: up.arrived == ["r0"], "r0 on cheap")
    second = await ask(sdk, "r1")  # cheap is full: dear answers at once, nobody waits
    assert second.model_dump()["served_by"] == "other"
    up.let_go("r0")
    await first


async def test_a_stream_holds_its_slot_until_it_ends(upstream_factory: Any, gateway_factory: Any):
    fake, url = await upstream_factory()
    gw = await gateway_factory(base_config(channels=[channel("c", url, max_concurrency=1)]))
    slots = gw.gateway.slots
    headers = {"Authorization": f"Bearer {DEV_KEY}"}
    resp = await gw.client.post("/v1/chat/completions", headers=headers,
                                json={"model": "hold", "stream": True, "messages": []})
    assert resp.status == 200
    await resp.content.readline()  # the first event is here; upstream holds the rest
    second = asyncio.create_task(gw.client.post(
        "/v1/chat/completions", headers=headers, json={"model": "ok", "messages": []}))
    await until(lambda: slots.queued() == 1, "the second request to queue")
    assert slots.in_flight("c") == 1 and len(fake.seen) == 1
    fake.release.set()
    assert b"[DONE]" in await resp.read()
    answer = await second
    assert answer.status == 200 and len(fake.seen) == 2
    assert slots.in_flight("c") == 0
