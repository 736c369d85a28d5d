"""``max_concurrency`` shared by two gateway processes through Redis (``storage.backend: redis``).

The in-flight count is the live reservations of Redis' ADMIT script (they expire, so a dead
process frees its slots). The requests of one process that find every candidate full stand in
line; the first of a channel's line tries it at once when a slot frees in its process, else every
50 ms, so it is on its way soon after a slot frees in the other.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import channel
from test_e2e_concurrency import HeldUpstream, held, until  # noqa: F401  (held: a fixture)
from test_e2e_redis import http, procs, shared_redis, two_gateways  # noqa: F401  (fixtures)

from smartproxy.upstream import client

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="processes and signals")


def ask(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 1}


async def test_a_cap_of_one_holds_across_two_processes_then_the_waiter_wakes_or_times_out(
    held: Any, http: Any, procs: Any, shared_redis: Any, tmp_path: Path  # noqa: F811
) -> None:
    up, url = held
    redis_url, prefix = shared_redis
    server = {"listen": "127.0.0.1:0", "timeout": 5, "queue_timeout": 1.5}
    a, b = await two_gateways(http, procs, tmp_path, [channel("c", url, max_concurrency=1)],
                              redis_url, prefix, server=server)
    first = asyncio.create_task(a.chat(http, **ask("r0")))
    await until(lambda: up.arrived == ["r0"], "r0 running through a")
    second = asyncio.create_task(b.chat(http, **ask("r1")))
    await asyncio.sleep(0.4)
    assert up.arrived == ["r0"] and not second.done()  # b waits: a holds the only slot
    freed = time.monotonic()
    up.let_go("r0")
    await until(lambda: "r1" in up.arrived, "r1 after the slot freed")
    woke = time.monotonic() - freed
    (status_a, _, _), = await asyncio.gather(first)
    assert status_a == 200
    # Polled every 50 ms: well within a second even on a loaded machine (measured: README).
    print(f"woke after {woke * 1000:.0f} ms")
    assert woke < 1.0, woke

    # r1 (through b) now holds the slot: a request through a waits queue_timeout, then 503.
    status, _, body = await a.chat(http, **ask("r2"))
    assert status == 503 and body["error"]["code"] == "no_channel_available"
    assert "max_concurrency" in body["error"]["message"]
    assert "queue_timeout" in body["error"]["message"]
    up.let_go("r1")
    assert (await second)[0] == 200
    assert up.arrived == ["r0", "r1"]


async def test_one_process_on_redis_serves_its_waiters_in_arrival_order(
    held: Any, gateway_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """Audit finding: each waiter polled Redis on its own 50 ms beat, so the one whose beat came
    first after a slot freed took it (seen: 0,9,8,10,11,12,2,13,1,...). Now the waiters of a
    channel stand in one line, the head retries at once when a slot frees here, and a newcomer
    does not take a slot while the line is not empty."""
    from conftest import base_config
    from redisutil import delete_prefix, require_redis, unique_prefix
    from test_e2e_concurrency import ask as sdk_ask

    url, prefix = require_redis(), unique_prefix()
    cfg = base_config(channels=[channel("c", held[1], max_concurrency=1)],
                      storage={"backend": "redis", "url": url, "key_prefix": prefix,
                               "timeout": 3, "path": str(tmp_path / "log.db")})
    cfg["server"]["queue_timeout"] = 4
    up = held[0]
    monkeypatch.setattr(client, "SHARED_POLL", 1.0)  # a slot freed here is seen without a poll
    try:
        gw = await gateway_factory(cfg)
        sdk = gw.openai()
        tasks = [asyncio.create_task(sdk_ask(sdk, "r0"))]
        await until(lambda: up.arrived == ["r0"], "r0 running")
        for i in range(1, 7):  # 70 ms apart: each waiter polls on a beat of its own
            tasks.append(asyncio.create_task(sdk_ask(sdk, f"r{i}")))
            await asyncio.sleep(0.07)
        assert up.arrived == ["r0"]
        waiting = gw.gateway.slots.queued()
        for i in range(6):
            freed = time.monotonic()
            up.let_go(f"r{i}")
            await until(lambda i=i: len(up.arrived) == i + 2, f"the request after r{i}")
            assert up.arrived[-1] == f"r{i + 1}", up.arrived  # the oldest waiter, none other
            assert time.monotonic() - freed < 0.5  # at once, not on the next beat
        up.let_go("r6")
        answers = await asyncio.gather(*tasks)
        assert [a.choices[0].message.content for a in answers] == [f"r{i}" for i in range(7)]
        assert waiting == 6 and gw.gateway.slots.queued() == 0  # /health's "queued"
    finally:
        delete_prefix(url, prefix)


async def test_two_processes_serve_their_waiters_in_arrival_order(
    held: Any, http: Any, procs: Any, shared_redis: Any, tmp_path: Path  # noqa: F811
) -> None:
    """Audit finding: across processes a freed slot went to whichever process looked first (a
    slot freed in a woke its own waiter at once; with --workers 2 the earliest waiters got 503
    while later ones were served). Now Redis keeps the channel's line: one place per process,
    at its first waiter's arrival, and the admit script serves the places in that order."""
    up, url = held
    redis_url, prefix = shared_redis
    server = {"listen": "127.0.0.1:0", "timeout": 5, "queue_timeout": 4}
    a, b = await two_gateways(http, procs, tmp_path, [channel("c", url, max_concurrency=1)],
                              redis_url, prefix, server=server)
    tasks = [asyncio.create_task(a.chat(http, **ask("r0")))]
    await until(lambda: up.arrived == ["r0"], "r0 running through a")
    for i in range(1, 6):  # r1 b, r2 a, r3 b, r4 a, r5 b: each in line before the next comes
        tasks.append(asyncio.create_task((b if i % 2 else a).chat(http, **ask(f"r{i}"))))
        await asyncio.sleep(0.15)
    assert up.arrived == ["r0"]
    for i in range(5):
        up.let_go(f"r{i}")
        await until(lambda i=i: len(up.arrived) == i + 2, f"the request after r{i}")
        assert up.arrived[-1] == f"r{i + 1}", up.arrived
    up.let_go("r5")
    assert [status for status, _, _ in await asyncio.gather(*tasks)] == [200] * 6
