"""``POST /api/channels/{name}/test``: a tiny real request, counted, logged as a test, audited."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import base_config, channel

GOOD_KEY = "sk-upstream-good-key-1234"


class KeyCheckingUpstream:
    """Answers like OpenAI: 401 for any key but ``GOOD_KEY``; records each request body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        if request.headers.get("Authorization") != f"Bearer {GOOD_KEY}":
            return web.json_response(
                {"error": {"message": "Incorrect API key provided: sk-wro***", "type":
                           "invalid_request_error", "code": "invalid_api_key", "param": None}},
                status=401,
            )
        return web.json_response({
            "id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
        })


@pytest.fixture
async def keyed() -> Any:
    up = KeyCheckingUpstream()
    server = TestServer(up.app())
    await server.start_server()
    yield up, str(server.make_url("/v1"))
    await server.close()


async def test_a_working_and_a_broken_channel(keyed: Any, gateway_factory: Any,
                                              tmp_path: Path) -> None:
    up, url = keyed
    good = {**channel("good", url, models=["gpt-x"], status="disabled"), "api_key": GOOD_KEY}
    bad = {**channel("bad", url, model_mapping={"gpt-4o-mini": "gpt-y"}), "api_key": "sk-wrong"}
    cfg = base_config(channels=[good, bad])
    cfg["storage"] = {"backend": "sqlite", "path": str(tmp_path / "sp.db")}
    gw = await gateway_factory(cfg)
    c, admin = gw.client, gw.admin_headers("alice")
    assert (await c.post("/api/channels/good/test")).status == 401  # admin JWT required

    resp = await c.post("/api/channels/good/test", headers=admin)  # disabled, tested anyway
    assert resp.status == 200
    ok = await resp.json()
    assert ok["ok"] is True and ok["status"] == 200 and ok["model"] == "gpt-x"
    assert ok["error"] is None and ok["latency_ms"] > 0
    assert up.bodies[0]["max_tokens"] == 1 and up.bodies[0]["model"] == "gpt-x"

    broken = await (await c.post("/api/channels/bad/test", headers=admin)).json()
    assert broken["ok"] is False and broken["status"] == 401
    assert "Incorrect API key" in broken["error"] and broken["model"] == "gpt-y"

    # Counted in usage and in the request log, marked as tests.
    usage = {r["channel"]: r for r in (await (await c.get("/api/usage", headers=admin)).json())
             ["channels"]}
    assert usage["good"]["requests"] == 1 and usage["good"]["total_tokens"] == 13
    rows = (await (await c.get("/api/usage", params={"group_by": "api_key"},
                               headers=admin)).json())["rows"]
    assert [(r["api_key"], r["requests"]) for r in rows] == [("(channel test)", 2)]
    await gw.gateway.store.flush()  # the batch writer's rows, on disk
    with sqlite3.connect(tmp_path / "sp.db") as db:
        logged = db.execute("SELECT request_id, channel, status, api_key_name FROM request_log "
                            "ORDER BY ts, channel DESC").fetchall()
    assert [(rid[:5], ch, st, key) for rid, ch, st, key in logged] == [
        ("test-", "good", 200, "(channel test)"), ("test-", "bad", 401, "(channel test)")]
    assert {rid for rid, *_ in logged} == {ok["request_id"], broken["request_id"]}

    # Audited: who, which channel, the outcome.
    audit = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    tests = [(a["action"], a["target"], a["sub"], a["result"]) for a in audit
             if a["action"] == "channel.test"]
    assert tests == [("channel.test", "good", "alice", "ok"),
                     ("channel.test", "bad", "alice", "error")]
    assert "401" in audit[-1]["reason"] and "sk-wrong" not in (tmp_path / "audit.log").read_text()


async def test_unknown_channel_and_a_channel_that_serves_any_model(
    upstream_factory: Any, gateway_factory: Any
) -> None:
    fake, url = await upstream_factory()
    gw = await gateway_factory(
        base_config(channels=[channel("any", url), channel("gone", "http://127.0.0.1:9/v1")])
    )
    c, admin = gw.client, gw.admin_headers()
    assert (await c.post("/api/channels/nope/test", headers=admin)).status == 404
    # Any model, and its upstream cannot say which: name one (and why it could not be found).
    resp = await c.post("/api/channels/gone/test", headers=admin)
    message = (await resp.json())["error"]["message"]
    assert resp.status == 400 and "model" in message and "listing its models" in message
    resp = await c.post("/api/channels/any/test", headers=admin, json={"model": "gpt-4o-mini"})
    result = await resp.json()
    assert result["ok"] is True and result["model"] == "gpt-4o-mini"


async def test_an_unreachable_channel_says_why(gateway_factory: Any) -> None:
    gw = await gateway_factory(base_config(channels=[channel("gone", "http://127.0.0.1:9/v1",
                                                             models=["m"])]))
    result = await (await gw.client.post("/api/channels/gone/test",
                                         headers=gw.admin_headers())).json()
    assert result["ok"] is False and result["status"] is None
    assert "cannot connect" in result["error"]


async def test_an_anthropic_channel_is_tested_in_its_own_api(
    anthropic_factory: Any, gateway_factory: Any
) -> None:
    fake, url = await anthropic_factory()
    good = {"name": "claude", "type": "anthropic", "endpoint": url, "api_key": "sk-ant-test",
            "models": ["claude-x"]}
    bad = {**good, "name": "claude-bad", "api_key": "sk-ant-wrong"}
    gw = await gateway_factory(base_config(channels=[good, bad]))
    c, admin = gw.client, gw.admin_headers()
    ok = await (await c.post("/api/channels/claude/test", headers=admin)).json()
    assert ok["ok"] is True and ok["status"] == 200 and ok["model"] == "claude-x", ok
    usage = {r["channel"]: r for r in (await (await c.get("/api/usage", headers=admin)).json())
             ["channels"]}
    assert usage["claude"]["total_tokens"] == 30  # the fake's input 21 + output 9
    broken = await (await c.post("/api/channels/claude-bad/test", headers=admin)).json()
    assert broken["ok"] is False and broken["status"] == 401
    assert "invalid x-api-key" in broken["error"]


async def test_a_channel_serving_any_model_is_tested_with_the_first_its_upstream_lists(
    upstream_factory: Any, gateway_factory: Any
) -> None:
    """No ``models`` and no body: the upstream's GET /models names the model to test with (it
    was a 400 and nothing was sent, audit finding)."""
    up, url = await upstream_factory("any")
    gw = await gateway_factory(base_config(channels=[channel("any", url)]))
    resp = await gw.client.post("/api/channels/any/test", headers=gw.admin_headers())
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert result["ok"] is True and result["status"] == 200 and result["model"] == "gpt-4o-mini"
    assert [(s.method, s.path) for s in up.seen] == [
        ("GET", "/v1/models"), ("POST", "/v1/chat/completions")
    ]


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_answer_is_read(
    upstream_factory: Any, gateway_factory: Any, coding: str
) -> None:
    """An upstream that compresses although asked for identity: usage and errors still read."""
    fake, url = await upstream_factory(coding=coding, script=["ok", "fail-503"])
    gw = await gateway_factory(base_config(channels=[channel("z", url, models=["m"])]))
    c, admin = gw.client, gw.admin_headers()
    assert (await (await c.post("/api/channels/z/test", headers=admin)).json())["ok"] is True
    usage = {r["channel"]: r for r in (await (await c.get("/api/usage", headers=admin)).json())
             ["channels"]}
    assert usage["z"]["total_tokens"] == 17  # the fake's usage, read from the decoded answer
    broken = await (await c.post("/api/channels/z/test", headers=admin)).json()
    assert broken["status"] == 503 and "up says 503" in broken["error"]
