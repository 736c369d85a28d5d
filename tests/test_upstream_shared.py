"""``upstream.shared``: the shared store's sync loop ends with the app, whatever Redis does."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from conftest import base_config, channel
from redisutil import delete_prefix, require_redis, unique_prefix

from smartproxy.app import create_app
from smartproxy.config import parse_config
from smartproxy.state import GATEWAY
from smartproxy.storage.redis import RedisStore


async def test_the_sync_loop_ends_even_when_a_redis_call_loses_the_cancellation(
    tmp_path: Path,
) -> None:
    """Seen after the 10k benchmark: workers still polling Redis 40 s into their shutdown,
    the app's cleanup awaiting the sync task whose cancellation a call inside it had eaten."""
    url, prefix = require_redis(), unique_prefix()
    cfg = base_config(channels=[channel("c", "http://127.0.0.1:9/v1")],
                      storage={"backend": "redis", "url": url, "key_prefix": prefix,
                               "path": str(tmp_path / "log.db")})
    app = create_app(parse_config({**cfg, "audit": {"path": str(tmp_path / "audit.log")}}))
    store = app[GATEWAY].store
    assert isinstance(store, RedisStore)
    store.poll_interval = 0.05
    polls = lost = 0
    swallow = True

    async def poll_losing_cancellation(*_: Any, **__: Any) -> None:
        nonlocal polls, lost
        polls += 1
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:  # what a library call may do: cancellation lost
            if not swallow:
                raise
            lost += 1

    app.freeze()
    cleanup: asyncio.Future[None] | None = None
    try:
        await app.startup()
        store.poll = poll_losing_cancellation  # type: ignore[method-assign]
        while polls < 2:  # the loop is inside a (cancellation-losing) call now and then
            await asyncio.sleep(0.01)
        cleanup = asyncio.ensure_future(app.cleanup())
        done, _ = await asyncio.wait({cleanup}, timeout=5)
        assert done, "the app's cleanup still waits on the sync loop"
        before = polls
        await asyncio.sleep(0.3)
        assert lost >= 1 and polls == before  # the loop is over, not polling on
    finally:
        swallow = False
        for task in asyncio.all_tasks():
            if task.get_name() == "shared-store-sync":
                task.cancel()
        if cleanup is not None:
            await asyncio.wait({cleanup}, timeout=5)
        await app.shutdown()
        delete_prefix(url, prefix)


async def test_a_stream_on_a_quota_channel_ends_only_once_its_settlement_is_written(
    tmp_path: Path, upstream_factory: Any, gateway_factory: Any
) -> None:
    """The client must not read a stream's end before the shared store has its settlement
    (another process would still count the reservation): the end event waits for the write."""
    from conftest import DEV_KEY

    url, prefix = require_redis(), unique_prefix()
    _, up = await upstream_factory("q")
    gw = await gateway_factory(base_config(
        channels=[channel("q", up, daily_limit=100_000)],
        storage={"backend": "redis", "url": url, "key_prefix": prefix, "timeout": 3,
                 "path": str(tmp_path / "log.db")}))  # fmt: skip
    store = gw.gateway.store
    assert isinstance(store, RedisStore)
    gate = asyncio.Event()
    real = store._run_settle

    async def slow_write(batch: Any) -> Any:
        await gate.wait()
        return await real(batch)

    store._run_settle = slow_write  # type: ignore[method-assign]
    try:
        resp = await gw.client.post(
            "/v1/chat/completions", headers={"Authorization": f"Bearer {DEV_KEY}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                  "stream": True})  # fmt: skip
        assert resp.status == 200
        seen = b""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                while True:
                    chunk = await resp.content.readany()
                    if not chunk:
                        break
                    seen += chunk
        assert b"[DONE]" not in seen  # the end is held back (with what came in its read)
        gate.set()
        seen += await resp.read()
        assert seen.endswith(b"data: [DONE]\n\n")
    finally:
        gate.set()
        delete_prefix(url, prefix)
