"""Issue [9]: channel types in routing: SmartAIProxy's ``claude`` channel routed to, endpoints a
type cannot serve excluded (``POST /api/route``) and explained (404), the type-only config keys."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from conftest import DEV_KEY, Clock, base_config, channel

from smartproxy.config import ConfigError, parse_config

DATA = Path(__file__).parent / "data"
AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def test_go_sample_config_routes_to_its_claude_channel(
    anthropic_factory, upstream_factory, gateway_factory, tmp_path
):
    """tests/data/go-configs-config.yaml as published, its endpoints pointed at fakes (the claude
    channel keeps the ``.../v1`` form) and a dev key added: at 03:00 the night rule puts the
    claude channel first once the free channel's 1000-token hour is used up (quotas are spent to
    their end: the first request, of any size, still goes to the free channel)."""
    fake, ant_url = await anthropic_factory(api_key="claude-night")
    free, free_url = await upstream_factory("free")
    paid, paid_url = await upstream_factory("paid")
    doc = yaml.safe_load((DATA / "go-configs-config.yaml").read_text())
    for ch, url in zip(doc["channels"], (free_url, ant_url + "/v1", paid_url), strict=True):
        ch["endpoint"] = url
    doc["server"] = {"listen": "127.0.0.1:0"}
    doc["monitor"] = {"enable": True}
    doc["log"] = {"level": "info"}
    doc["security"] = {"auth": {"api_keys": {"dev": DEV_KEY}}}
    doc["storage"] = {"backend": "memory", "path": str(tmp_path / "x.db")}  # audit.log there
    path = tmp_path / "go.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    gw = await gateway_factory(path, clock=Clock(datetime(2026, 11, 26, 3, 0, tzinfo=UTC)))
    free.usage = {"prompt_tokens": 500, "completion_tokens": 600, "total_tokens": 1100}
    first = await gw.openai().chat.completions.with_raw_response.create(**CHAT)
    assert first.headers["x-smartproxy-channel"] == quote("免费渠道A")  # 0 < 1000: free first
    await gw.gateway.drain_background()
    big = {**CHAT, "max_tokens": 20000}
    route = await gw.client.post("/api/route", json=big, headers=gw.admin_headers())
    decision = await route.json()
    assert [c["channel"] for c in decision["candidates"]] == ["夜间折扣渠道B", "普通付费渠道C"]
    assert decision["matched_rule"] == "夜间折扣优先"
    resp = await gw.openai().chat.completions.create(**big)
    assert resp.choices[0].message.content == "Hello from Claude."
    assert fake.seen[-1].path == "/v1/messages" and fake.seen[-1].body["max_tokens"] == 20000
    assert len(free.seen) == 1 and paid.seen == []
    await gw.gateway.drain_background()
    usage = await gw.client.get("/api/usage", headers=gw.admin_headers())
    rows = {r["channel"]: r for r in (await usage.json())["channels"]}
    assert rows["夜间折扣渠道B"]["total_tokens"] == 30
    assert rows["夜间折扣渠道B"]["cost_usd"] == pytest.approx(30 * 0.002)  # the night price


async def test_endpoints_a_type_cannot_serve(anthropic_factory, upstream_factory, gateway_factory):
    _, ant_url = await anthropic_factory()
    _, oa_url = await upstream_factory("oa")
    claude = {"name": "claude", "type": "anthropic", "endpoint": ant_url, "api_key": "k",
              "models": ["claude-x", "shared"]}  # fmt: skip
    gw = await gateway_factory(
        base_config(channels=[claude, channel("oa", oa_url, models=["shared"])])
    )
    for path, where in (("/v1/embeddings", "body"), ("embeddings", "query")):
        kwargs: dict[str, Any] = (
            {"json": {"model": "shared", "input": "x", "path": path}}
            if where == "body"
            else {"json": {"model": "shared", "input": "x"}, "params": {"endpoint": path}}
        )
        route = await gw.client.post("/api/route", headers=gw.admin_headers(), **kwargs)
        decision = await route.json()
        assert [c["channel"] for c in decision["candidates"]] == ["oa"]
        assert decision["excluded"] == [
            {"channel": "claude", "reason": "anthropic channels do not serve /v1/embeddings"}
        ]
    route = await gw.client.post("/api/route", json=CHAT | {"model": "shared"},
                                 headers=gw.admin_headers())  # fmt: skip
    assert [c["channel"] for c in (await route.json())["candidates"]] == ["claude", "oa"]
    resp = await gw.client.post(
        "/v1/embeddings", json={"model": "shared", "input": "x"}, headers=AUTH
    )
    assert resp.status == 200 and resp.headers["x-smartproxy-channel"] == "oa"
    for path, body in (("/v1/embeddings", {"model": "claude-x", "input": "x"}),
                       ("/v1/completions", {"model": "claude-x", "prompt": "x"})):  # fmt: skip
        resp = await gw.client.post(path, json=body, headers=AUTH)
        assert resp.status == 404
        err = (await resp.json())["error"]
        assert err["code"] == "model_not_found"
        assert f"claude: anthropic channels do not serve {path}" in err["message"]


def test_type_only_keys_and_defaults():
    cfg = parse_config(base_config(channels=[
        {"name": "a", "type": "anthropic"},
        {"name": "z", "type": "azure", "endpoint": "https://r.openai.azure.com",
         "api_version": "2024-10-21"},
    ]))  # fmt: skip
    a, z = cfg.channels
    assert a.endpoint == "https://api.anthropic.com"
    assert (a.anthropic_version, a.default_max_tokens) == ("2023-06-01", 4096)
    assert z.api_version == "2024-10-21"
    with pytest.raises(ConfigError) as info:
        parse_config(base_config(channels=[
            {"name": "o", "type": "openai", "endpoint": "https://x", "api_version": "1"},
            {"name": "p", "type": "azure", "endpoint": "https://x", "default_max_tokens": 5},
            {"name": "q", "type": "claude", "default_max_tokens": 0},
        ]))  # fmt: skip
    assert info.value.problems == (
        "channels[0].api_version: only azure channels use it (this channel's type is openai)",
        "channels[1].default_max_tokens: only anthropic channels use it "
        "(this channel's type is azure)",
        "channels[2].default_max_tokens: must be a whole number of at least 1",
    )
