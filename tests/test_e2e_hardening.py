"""Issue [6] end to end: bad requests get a clear 400 and leave no quota held, one malformed
model name loses nobody's usage, any error between reserve and settle gives the quota back."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import DEV_KEY, base_config, channel

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
    body: Any = io.BytesIO(data) if len(data) > 1 << 20 else data  # aiohttp warns on large bytes
    return gw.client.post("/v1/chat/completions", data=body, headers=AUTH)


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
    """An exception nobody foresaw (here: raised by the provider while sending, after the
    reservation was taken) still gives the reservation and the breaker permit back; the client
    gets a 500, the quota stays whole."""
    gw = await make_gateway(gateway_factory, upstream_factory, tmp_path)
    provider = gw.gateway.providers["openai"]

    async def broken(*args: Any) -> Any:
        raise ValueError("dictionary update sequence element #0 has length 1; 2 is required")

    provider.send = broken
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream})
    for _ in range(4):
        resp = await post(gw, body)
        assert resp.status == 500
    assert await held(gw) == (0, DAILY)
    del provider.send
    assert (await post(gw, body)).status == 200


# ----------------------------------------------------------------------------- body size
async def big_upstream(aiohttp_server: Any) -> tuple[Any, str]:
    """A fake upstream that itself accepts large bodies (aiohttp's default is 1 MiB)."""
    from aiohttp import web
    from fakeupstream import FakeUpstream

    fake = FakeUpstream(name="big")
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/v1/{tail:.*}", fake.handle)
    server = await aiohttp_server(app)
    return fake, str(server.make_url("/v1"))


async def test_a_5_mb_chat_body_is_proxied(gateway_factory: Any, aiohttp_server: Any) -> None:
    fake, url = await big_upstream(aiohttp_server)
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    text = "x" * (5 * 1024 * 1024)
    sdk = gw.openai()
    answer = await sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
    )
    assert answer.choices[0].message.content
    assert len(fake.seen[-1].body) > 5 * 1024 * 1024


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_max_body_mb_is_an_openai_413(
    gateway_factory: Any, aiohttp_server: Any, chunked: bool
) -> None:
    fake, url = await big_upstream(aiohttp_server)
    cfg = base_config(channels=[channel("a", url)])
    cfg["server"]["max_body_mb"] = 2
    gw = await gateway_factory(cfg)
    raw = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * (3 << 20)}]})

    async def gen() -> Any:
        for i in range(0, len(raw), 1 << 16):
            yield raw[i : i + (1 << 16)].encode()

    data: Any = gen() if chunked else io.BytesIO(raw.encode())
    resp = await gw.client.post("/v1/chat/completions", data=data, headers=AUTH)
    assert resp.status == 413
    err = (await resp.json())["error"]
    assert err["code"] == "request_too_large" and str(2 * 1024 * 1024) in err["message"]
    assert set(err) == {"message", "type", "code", "param"}
    assert fake.seen == []
    health = await (await gw.client.get("/health")).json()
    assert health["storage"]["reservations"] == 0
    small = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * (1 << 20)}]})
    assert (await post(gw, small)).status == 200  # 1 MiB: above aiohttp's default, below ours


async def test_admin_bodies_keep_a_small_limit(gateway_factory: Any) -> None:
    gw = await gateway_factory(base_config())
    body = {"name": "c", "type": "mock", "models": ["m" * 1000] * 1200}  # ~1.2 MB
    data = io.BytesIO(json.dumps(body).encode())
    resp = await gw.client.post("/api/channels", data=data, headers=gw.admin_headers())
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "request_too_large"


async def test_a_request_id_with_control_characters_is_replaced(
    gateway_factory: Any, upstream_factory: Any, tmp_path: Path
) -> None:
    gw = await make_gateway(gateway_factory, upstream_factory, tmp_path)
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES})
    resp = await gw.client.post(
        "/v1/chat/completions", data=body, headers={**AUTH, "x-request-id": "abc\tdef"}
    )
    assert resp.status == 200
    assert resp.headers["x-request-id"].startswith("req-")
    ok = await gw.client.post(
        "/v1/chat/completions", data=body, headers={**AUTH, "x-request-id": "trace-42"}
    )
    assert ok.headers["x-request-id"] == "trace-42"


async def test_an_admin_sub_with_a_lone_surrogate_is_audited(gateway_factory: Any) -> None:
    import time

    import jwt as pyjwt
    from conftest import ADMIN_SECRET

    gw = await gateway_factory(base_config(), write_file=True)
    now = int(time.time())
    claims = {"sub": "eve\ud800", "iss": "smartproxy", "aud": "smartproxy-admin", "iat": now,
              "exp": now + 60}  # fmt: skip
    token = pyjwt.encode(claims, ADMIN_SECRET, algorithm="HS256")
    resp = await gw.client.post("/api/channels", json={"name": "m", "type": "mock"},
                                headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert resp.status == 201
    line = (gw.config_path.parent / "audit.log").read_text().splitlines()[-1]
    assert json.loads(line)["sub"] == "eve\ud800"  # written (escaped), not lost


async def test_a_wrong_key_is_refused_before_the_body_is_read(
    gateway_factory: Any, upstream_factory: Any, tmp_path: Path
) -> None:
    """Authentication comes first: a 30 MB upload with a wrong key gets its 401 while most of
    the body has not even been sent (the gateway never buffers it)."""
    gw = await make_gateway(gateway_factory, upstream_factory, tmp_path)
    port = gw.client.server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer sk-wrong-key-000\r\nContent-Length: 31457280\r\n\r\n"
        + b"x" * 65536
    )
    await writer.drain()
    async with asyncio.timeout(5):
        status = await reader.readline()
    assert status.startswith(b"HTTP/1.1 401"), status
    writer.close()


async def test_a_channel_whose_request_cannot_be_sent_fails_over(
    aiohttp_client: Any, upstream_factory: Any
) -> None:
    """Defence in depth: a header value aiohttp refuses (the loader would have refused it too)
    is a failed attempt that fails over and counts against the breaker, not a bare 500."""
    from dataclasses import replace

    from conftest import Clock

    from smartproxy.app import create_app
    from smartproxy.config import parse_config

    _, url_a = await upstream_factory("a")
    _, url_b = await upstream_factory("b")
    cfg = parse_config(base_config(channels=[channel("a", url_a, priority=0),
                                             channel("b", url_b, priority=1)]))  # fmt: skip
    broken = replace(cfg.channels[0], api_key="sk-abc\r\nX-Injected: 1")
    cfg = replace(cfg, channels=(broken, cfg.channels[1]))
    client = await aiohttp_client(create_app(cfg, clock=Clock()))
    resp = await client.post(
        "/v1/chat/completions",
        data=json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}),
        headers=AUTH,
    )
    assert resp.status == 200
    assert resp.headers["x-smartproxy-channel"] == "b"
    health = await (await client.get("/health")).json()
    assert health["storage"]["reservations"] == 0
