"""GET /api/channels, /api/rules, /api/keys: every field with the value in effect, secrets masked."""

from __future__ import annotations

from typing import Any

import yaml
from conftest import base_config, channel

FULL_CHANNEL = {
    "name", "type", "endpoint", "api_key", "models", "model_mapping", "price_per_token",
    "price_per_prompt_token", "price_per_completion_token", "daily_limit", "hour_limit",
    "daily_request_limit", "discount_time", "discount_price", "priority", "status", "headers",
    "timeout", "connect_timeout", "first_byte_timeout", "fail_max", "reset_timeout", "proxy",
    "max_concurrency", "forward_openai_org", "api_version", "anthropic_version",
    "default_max_tokens",
}


async def test_a_minimal_posted_channel_shows_every_field_with_its_default(
    upstream_factory: Any, gateway_factory: Any
) -> None:
    _, url = await upstream_factory()
    gw = await gateway_factory(base_config(channels=[channel("a", url)]), write_file=True)
    c, admin = gw.client, gw.admin_headers()
    posted = {"name": "minimal", "type": "openai", "endpoint": url}
    assert (await c.post("/api/channels", headers=admin, json=posted)).status == 201
    listed = (await (await c.get("/api/channels", headers=admin)).json())["channels"]
    got = next(ch for ch in listed if ch["name"] == "minimal")
    assert set(got) == FULL_CHANNEL | {"inherited"}
    assert got["status"] == "active"  # a script reading channel["status"] must not fail
    assert got["models"] == [] and got["model_mapping"] == {} and got["headers"] == {}
    assert got["priority"] == 0 and got["daily_limit"] == 0 and got["price_per_token"] == 0
    assert got["proxy"] is None and got["max_concurrency"] is None and got["api_key"] == ""
    assert got["timeout"] == 5 and "timeout" in got["inherited"]  # server.timeout, in effect
    # The file keeps only what was posted: showing defaults does not write them.
    text = gw.config_path.read_text()
    assert "max_concurrency" not in text and "status" not in text


async def test_posting_a_listed_channel_back_writes_no_defaults(
    upstream_factory: Any, gateway_factory: Any
) -> None:
    _, url = await upstream_factory()
    gw = await gateway_factory(base_config(channels=[channel("a", url)]), write_file=True)
    c, admin = gw.client, gw.admin_headers()
    before = yaml.safe_load(gw.config_path.read_text())
    listed = (await (await c.get("/api/channels", headers=admin)).json())["channels"]
    assert listed[0]["api_key"] == "sk-...cret"
    assert (await c.post("/api/channels", headers=admin, json=listed[0])).status == 200
    assert yaml.safe_load(gw.config_path.read_text()) == before


async def test_numbers_keep_their_type_and_keys_and_rules_show_defaults(
    upstream_factory: Any, gateway_factory: Any
) -> None:
    _, url = await upstream_factory()
    gw = await gateway_factory(base_config(channels=[channel("a", url)]), write_file=True)
    c, admin = gw.client, gw.admin_headers()
    key = {"name": "team", "key": "sk-gw-team-0123456789", "requests_per_minute": 60}
    assert (await c.post("/api/keys", headers=admin, json=key)).status == 201
    keys = (await (await c.get("/api/keys", headers=admin)).json())["keys"]
    team = next(k for k in keys if k["name"] == "team")
    assert team == {
        "name": "team", "key": "sk-...6789", "requests_per_minute": 60, "burst": 100000,
        "tokens_per_minute": None, "models": [], "daily_budget_usd": None,
        "inherited": ["burst"],  # security.rate_limit's, in effect
    }
    raw = await (await c.get("/api/keys", headers=admin)).text()
    assert '"requests_per_minute": 60,' in raw  # 60, not 60.0
    rule = {"name": "r", "channel": "a", "expression": "true"}
    assert (await c.post("/api/rules", headers=admin, json=rule)).status == 201
    rules = (await (await c.get("/api/rules", headers=admin)).json())["rules"]
    assert rules == [{**rule, "priority": 0}]


async def test_proxy_credentials_are_masked_and_sent_back_masked_they_are_kept(
    upstream_factory: Any, gateway_factory: Any
) -> None:
    _, url = await upstream_factory()
    proxied = channel("a", url, proxy="http://bob:hunter2-secret@127.0.0.1:3128")
    gw = await gateway_factory(base_config(channels=[proxied]), write_file=True)
    c, admin = gw.client, gw.admin_headers()
    raw = await (await c.get("/api/channels", headers=admin)).text()
    assert "hunter2-secret" not in raw
    shown = (await (await c.get("/api/channels", headers=admin)).json())["channels"][0]
    assert shown["proxy"] == "http://bob:****@127.0.0.1:3128"
    resp = await c.post("/api/channels", headers=admin, json={**shown, "priority": 2})
    assert resp.status == 200 and "hunter2-secret" not in await resp.text()
    assert gw.gateway.config.channels[0].proxy == "http://bob:hunter2-secret@127.0.0.1:3128"


async def test_fields_left_to_server_wide_settings_show_the_value_in_effect(
    upstream_factory: Any, gateway_factory: Any
) -> None:
    """Contract §6: GET shows every field with the value in effect. A channel that sets no
    timeout, breaker or proxy shows the server-wide ones, named in ``inherited``; posted back
    as shown they keep following those settings (nothing is pinned in the file), and an edited
    one is stored."""
    _, url = await upstream_factory()
    cfg = base_config(channels=[channel("a", url)])
    cfg["server"].update(timeout=45, proxy="http://ops:pw-secret@127.0.0.1:3999")
    cfg["circuit_breaker"] = {"fail_max": 3, "reset_timeout": 77}
    cfg["security"]["rate_limit"] = {"requests_per_minute": 100, "burst": 9}
    cfg["security"]["auth"]["api_keys"]["team"] = {"key": "sk-gw-team-0123456789", "burst": 4}
    gw = await gateway_factory(cfg, write_file=True)
    c, admin = gw.client, gw.admin_headers()
    before = yaml.safe_load(gw.config_path.read_text())
    shown = (await (await c.get("/api/channels", headers=admin)).json())["channels"][0]
    assert (shown["timeout"], shown["connect_timeout"], shown["first_byte_timeout"]) == (45, 10, 45)
    assert (shown["fail_max"], shown["reset_timeout"]) == (3, 77)
    assert shown["proxy"] == "http://ops:****@127.0.0.1:3999"  # masked as ever
    assert shown["inherited"] == ["connect_timeout", "fail_max", "first_byte_timeout", "proxy",
                                  "reset_timeout", "timeout"]
    keys = (await (await c.get("/api/keys", headers=admin)).json())["keys"]
    team = next(k for k in keys if k["name"] == "team")
    assert (team["requests_per_minute"], team["burst"], team["inherited"]) == (
        100, 4, ["requests_per_minute"])
    assert (await c.post("/api/channels", headers=admin, json=shown)).status == 200
    assert (await c.post("/api/keys", headers=admin, json=team)).status == 200
    assert yaml.safe_load(gw.config_path.read_text()) == before  # nothing pinned
    # a client that drops "inherited" pins nothing either (the masked proxy above all)
    bare = {k: v for k, v in shown.items() if k != "inherited"}
    assert (await c.post("/api/channels", headers=admin, json={**bare, "priority": 2})).status == 200
    stored = yaml.safe_load(gw.config_path.read_text())["channels"][0]
    assert stored["priority"] == 2 and not {"proxy", "timeout", "fail_max"} & set(stored)
    edited = {**shown, "timeout": 12}
    resp = await c.post("/api/channels", headers=admin, json=edited)
    assert resp.status == 200
    after = (await resp.json())["channel"]
    assert after["timeout"] == 12 and "timeout" not in after["inherited"]
    assert after["first_byte_timeout"] == 12  # follows the channel's own timeout now
    stored = yaml.safe_load(gw.config_path.read_text())["channels"][0]
    assert stored["timeout"] == 12 and "fail_max" not in stored and "proxy" not in stored
    for inherited in ("timeout", ["bogus"], ["name"]):
        bad = await c.post("/api/channels", headers=admin, json={**shown, "inherited": inherited})
        assert bad.status == 400, inherited
