"""Issue [6] end to end: bad requests get a clear 400 and leave no quota held, one malformed
model name loses nobody's usage, any error between reserve and settle gives the quota back."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import DEV_KEY, base_config, channel

from smartproxy.api.proxy import DISPATCHER

AUTH = {"Authorization": f"Bearer {DEV_KEY}", "Content-Type": "application/json"}
MESSAGES = [{"role": "user", "content": "hi"}]
DAILY = 5000


async def make_gateway(gateway_factory: Any, upstream_factory: Any, tmp_path: Path) -> Any:
    _, url = await upstream_factory("a")
    cfg = base_config(
        channels=[channel("a", url, models=["gpt-4o-mini"], daily_limit=DAILY)],
        storage={"backend": "sqlite", "path": str(tmp_path / "usage.db")},
        usage={"default_max_tokens": 1000},
    )
    return await gateway_factory(cfg)


async def held(gw: Any) -> tuple[int, int | None]:
    """(reservations in flight, channel a's day quota left) as /health shows them."""
    resp = await gw.client.get("/health")
    report = await resp.json()
    (a,) = [c for c in report["channels"] if c["name"] == "a"]
    return report["storage"]["reservations"], a["day_quota_left"]


def post(gw: Any, raw: bytes | str) -> Any:
    data = raw.encode() if isinstance(raw, str) else raw
    return gw.client.post("/v1/chat/completions", data=data, headers=AUTH)


async def test_lone_surrogate_model_is_400_and_loses_no_usage(
    gateway_factory: Any, upstream_factory: Any, tmp_path: Path
) -> None:
    gw = await make_gateway(gateway_factory, upstream_factory, tmp_path)
    good = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES})
    bad = '{"model": "gpt\\ud800", "messages": []}'  # valid JSON, not encodable text
    answers = await asyncio.gather(*(post(gw, raw) for raw in [good, bad, good, good, bad, good]))
    statuses = [r.status for r in answers]
    assert statuses == [200, 400, 200, 200, 400, 200]
    err = (await answers[1].json())["error"]
    assert err["param"] == "model" and "UTF-8" in err["message"]
    await gw.gateway.store.flush()
    status = gw.gateway.store.status()
    assert status["ok"] and status["pending_writes"] == 0, status
    with sqlite3.connect(tmp_path / "usage.db") as conn:
        rows = conn.execute("SELECT model, status FROM request_log").fetchall()
        (requests,) = conn.execute(
            "SELECT requests FROM counters WHERE channel='a' AND \"window\"='total'"
        ).fetchone()
    assert rows == [("gpt-4o-mini", 200)] * 4 and requests == 4
    assert await held(gw) == (0, DAILY - 4 * 17)


BAD_BODIES = {
    "stream_options not an object": json.dumps(
        {"model": "gpt-4o-mini", "stream": True, "stream_options": "x", "messages": []}
    ),
    "n zero": json.dumps({"model": "gpt-4o-mini", "n": 0, "messages": MESSAGES}),
    "n too large": json.dumps({"model": "gpt-4o-mini", "n": 129, "messages": MESSAGES}),
    "n not a number": json.dumps({"model": "gpt-4o-mini", "n": "2", "messages": MESSAGES}),
    "lone surrogate": '{"model": "gpt\\ud800", "messages": []}',
    "deep nesting": '{"model": "gpt-4o-mini", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "deep nesting, not JSON": "[" * 100_000,
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
async def test_bad_requests_are_400_and_hold_nothing(
    gateway_factory: Any, upstream_factory: Any, tmp_path: Path, name: str
) -> None:
    gw = await make_gateway(gateway_factory, upstream_factory, tmp_path)
    for _ in range(4):  # four of them used to lock a 5000-token quota
        resp = await post(gw, BAD_BODIES[name])
        assert resp.status == 400, await resp.text()
        assert resp.content_type == "application/json"
        err = (await resp.json())["error"]
        assert set(err) == {"message", "type", "code", "param"}
        if name.startswith("deep"):
            assert err["code"] == "invalid_json"
    assert await held(gw) == (0, DAILY)
    ok = await post(gw, json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}))
    assert ok.status == 200


@pytest.mark.parametrize("stream", [False, True])
async def test_any_error_between_reserve_and_settle_releases(
    gateway_factory: Any, upstream_factory: Any, tmp_path: Path, stream: bool
) -> None:
    """An exception nobody foresaw (here: building the upstream request) still gives the
    reservation and the breaker permit back; the client gets a 500, the quota stays whole."""
    gw = await make_gateway(gateway_factory, upstream_factory, tmp_path)
    dispatcher = gw.client.server.app._subapps[0][DISPATCHER]

    def broken(*args: Any) -> Any:
        raise ValueError("dictionary update sequence element #0 has length 1; 2 is required")

    dispatcher._outgoing = broken
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream})
    for _ in range(4):
        resp = await post(gw, body)
        assert resp.status == 500
    assert await held(gw) == (0, DAILY)
    del dispatcher._outgoing
    assert (await post(gw, body)).status == 200
