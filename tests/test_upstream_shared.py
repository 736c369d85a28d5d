"""``upstream.shared``: the shared store's sync loop ends with the app, whatever Redis does."""

from __future__ import annotations

import asyncio
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
