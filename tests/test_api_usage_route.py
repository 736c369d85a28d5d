"""``GET /api/usage`` and ``POST /api/route`` through HTTP with an admin JWT (issue [2], item 7).

Usage per channel (requests, tokens day/hour/total, cost, quota left, in-flight reservations), the
request log grouped by channel/api_key/model over ``from``/``to``, and the routing dry run: ordered
candidates, the matched rule, each effective price, why the others were left out.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
import pytest
from conftest import ADMIN_SECRET, DEV_KEY, Clock, base_config, channel

MESSAGES = [{"role": "user", "content": "hi"}]
TEAM_B = "sk-test-team-b-0002"


def usage(total: int) -> dict[str, int]:
    return {
        "prompt_tokens": total // 4,
        "completion_tokens": total - total // 4,
        "total_tokens": total,
    }


async def get_json(gw: Any, path: str, **params: str) -> Any:
    resp = await gw.client.get(path, params=params, headers=gw.admin_headers())
    assert resp.status == 200, await resp.text()
    return await resp.json()


@pytest.mark.parametrize(
    "method,path",
    [("GET", "/api/usage"), ("GET", "/api/usage?group_by=model"), ("POST", "/api/route")],
)
async def test_admin_usage_and_route_need_a_jwt(gateway_factory, method, path):
    gw = await gateway_factory(base_config(channels=[{"name": "m", "type": "mock"}]))
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    for headers in (
        {},
        {"Authorization": f"Bearer {DEV_KEY}"},  # a proxy key is not an admin token
        {"Authorization": "Bearer not.a.jwt"},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
    ):
        resp = await gw.client.request(method, path, json=body, headers=headers)
        assert resp.status == 401, headers
        assert (await resp.json())["error"]["message"]
    now = int(time.time())
    expired = jwt.encode(
        {
            "sub": "tester",
            "iss": "smartproxy",
            "aud": "smartproxy-admin",
            "iat": now - 600,
            "exp": now - 300,
        },
        ADMIN_SECRET,
        algorithm="HS256",
    )
    resp = await gw.client.request(
        method, path, json=body, headers={"Authorization": f"Bearer {expired}"}
    )
    assert resp.status == 401
    resp = await gw.client.request(method, path, json=body, headers=gw.admin_headers())
    assert resp.status == 200


async def test_usage_per_channel_counts_tokens_cost_and_quota_left(
    upstream_factory, gateway_factory
):
    free_up, free_url = await upstream_factory("free", usage=usage(100))
    _, paid_url = await upstream_factory("paid", usage=usage(40))
    clock = Clock(datetime(2026, 11, 26, 9, 15, tzinfo=UTC))
    gw = await gateway_factory(
        base_config(
            channels=[
                channel(
                    "free", free_url, daily_limit=10_000, hour_limit=1_000, models=["gpt-4o-mini"]
                ),
                channel("paid", paid_url, price_per_token=2e-6, models=["gpt-4o"]),
            ]
        ),
        clock=clock,
    )
    sdk = gw.openai()
    await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
    clock.advance(hours=1)
    await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10)
    await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=10)
    await gw.gateway.drain_background()
    rows = {r["channel"]: r for r in (await get_json(gw, "/api/usage"))["channels"]}
    assert list(rows) == ["free", "paid"]
    free, paid = rows["free"], rows["paid"]
    assert {
        k: free[k]
        for k in (
            "requests",
            "day_requests",
            "day_tokens",
            "hour_tokens",
            "total_tokens",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "daily_limit",
            "hour_limit",
            "day_quota_left",
            "hour_quota_left",
            "reserved_tokens",
            "effective_price",
        )
    } == {
        "requests": 2,
        "day_requests": 2,
        "day_tokens": 200,
        "hour_tokens": 100,
        "total_tokens": 200,
        "prompt_tokens": 50,
        "completion_tokens": 150,
        "cost_usd": 0.0,
        "daily_limit": 10_000,
        "hour_limit": 1_000,
        "day_quota_left": 9_800,
        "hour_quota_left": 900,
        "reserved_tokens": 0,
        "effective_price": 0.0,
    }
    assert (
        paid["requests"],
        paid["total_tokens"],
        paid["day_quota_left"],
        paid["hour_quota_left"],
        paid["daily_limit"],
    ) == (1, 40, None, None, None)
    assert paid["cost_usd"] == pytest.approx(80e-6) and paid["day_cost_usd"] == pytest.approx(80e-6)

    # An in-flight request's reservation already counts against the quota left.
    free_up.default = "hold"
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.url + "/chat/completions",
            headers={"Authorization": f"Bearer {DEV_KEY}"},
            json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "max_tokens": 300},
        ) as r:
            await r.content.readuntil(b"\n\n")
            held = (await get_json(gw, "/api/usage"))["channels"][0]
            assert 300 < held["reserved_tokens"] < 400
            assert held["day_quota_left"] == 9_800 - held["reserved_tokens"]
            assert held["hour_quota_left"] == 900 - held["reserved_tokens"]
            assert held["day_tokens"] == 200  # settled tokens do not include it
            free_up.release.set()
            await r.read()
    await gw.gateway.drain_background()
    free = (await get_json(gw, "/api/usage"))["channels"][0]
    assert (free["reserved_tokens"], free["day_tokens"], free["day_quota_left"]) == (0, 300, 9_700)


async def test_usage_grouped_over_the_request_log(upstream_factory, gateway_factory):
    _, a_url = await upstream_factory("a", usage=usage(100))
    _, b_url = await upstream_factory("b", usage=usage(10))
    clock = Clock(datetime(2026, 11, 26, 10, 0, tzinfo=UTC))
    cfg = base_config(
        channels=[
            channel("a", a_url, models=["m1"], price_per_token=1e-6),
            channel("b", b_url, models=["m2"], price_per_token=1e-5),
        ]
    )
    cfg["security"]["auth"]["api_keys"]["team-b"] = TEAM_B
    gw = await gateway_factory(cfg, clock=clock)
    dev, team_b = gw.openai(), gw.openai(key=TEAM_B)
    await dev.chat.completions.create(model="m1", messages=MESSAGES)  # day 1, 10:00
    clock.advance(hours=5)
    await team_b.chat.completions.create(model="m1", messages=MESSAGES)  # day 1, 15:00
    await team_b.chat.completions.create(model="m2", messages=MESSAGES)
    clock.advance(days=1)
    await dev.chat.completions.create(model="m2", messages=MESSAGES)  # day 2, 15:00
    await gw.gateway.drain_background()

    def by(rows: list[dict[str, Any]], key: str) -> dict[str, tuple[int, int, float]]:
        return {r[key]: (r["requests"], r["total_tokens"], round(r["cost"], 9)) for r in rows}

    day1 = {"from": "2026-11-26T00:00:00Z", "to": "2026-11-27T00:00:00Z"}
    out = await get_json(gw, "/api/usage", group_by="channel", **day1)
    assert out["group_by"] == "channel" and out["from"] == day1["from"]
    assert by(out["rows"], "channel") == {"a": (2, 200, 2e-4), "b": (1, 10, 1e-4)}
    out = await get_json(gw, "/api/usage", group_by="api_key", **day1)
    assert by(out["rows"], "api_key") == {"dev": (1, 100, 1e-4), "team-b": (2, 110, 2e-4)}
    out = await get_json(gw, "/api/usage", group_by="model")  # no window: the whole log
    assert by(out["rows"], "model") == {"m1": (2, 200, 2e-4), "m2": (2, 20, 2e-4)}
    # `from` is inclusive, `to` exclusive; an offset other than Z works
    out = await get_json(
        gw,
        "/api/usage",
        group_by="api_key",
        **{"from": "2026-11-26T23:00:00+08:00", "to": "2026-11-27T15:00:00Z"},
    )
    assert by(out["rows"], "api_key") == {"team-b": (2, 110, 2e-4)}
    out = await get_json(gw, "/api/usage", **{"from": "2026-11-27T15:00:00Z"})
    assert out["group_by"] == "channel" and by(out["rows"], "channel") == {"b": (1, 10, 1e-4)}
    # the log agrees with the counters
    counters = {r["channel"]: r for r in (await get_json(gw, "/api/usage"))["channels"]}
    whole = by((await get_json(gw, "/api/usage", group_by="channel"))["rows"], "channel")
    assert {
        n: (r["requests"], r["total_tokens"], round(r["cost_usd"], 9)) for n, r in counters.items()
    } == whole


@pytest.mark.parametrize(
    "query,param",
    [
        ("group_by=team", "group_by"),
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
    ],
)
async def test_usage_refuses_bad_queries(gateway_factory, query, param):
    gw = await gateway_factory(base_config(channels=[{"name": "m", "type": "mock"}]))
    resp = await gw.client.get(f"/api/usage?{query}", headers=gw.admin_headers())
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == param and param in error["message"]


async def test_route_dry_run_shows_order_rule_prices_and_exclusions(
    upstream_factory, gateway_factory
):
    ups = {n: await upstream_factory(n) for n in ("free", "cheap", "night", "dear", "off", "other")}
    url = {n: u for n, (_, u) in ups.items()}
    clock = Clock(datetime(2026, 11, 26, 23, 0, tzinfo=UTC))
    cfg = base_config(
        channels=[
            channel("dear", url["dear"], price_per_token=9e-6, priority=0),
            channel(
                "night",
                url["night"],
                price_per_token=5e-6,
                discount_time=["22:00-06:00"],
                discount_price=5e-7,
            ),
            channel("cheap", url["cheap"], price_per_token=1e-6),
            channel("free", url["free"], price_per_token=0, daily_limit=100),
            channel("off", url["off"], status="disabled"),
            channel("other", url["other"], models=["llama-3"]),
        ],
        rules=[
            {
                "name": "dear for team b",
                "channel": "dear",
                "expression": "api_key_name == 'team-b' && NOT stream",
                "priority": 1,
            }
        ],
    )
    gw = await gateway_factory(cfg, clock=clock)
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 20}

    async def dry(**params: str) -> dict[str, Any]:
        resp = await gw.client.post(
            "/api/route", params=params, json=body, headers=gw.admin_headers()
        )
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result

    out = await dry()
    assert out["model"] == "gpt-4o-mini" and out["matched_rule"] is None
    assert out["reserve_tokens"] == out["prompt_tokens_estimate"] + 20
    assert [
        (c["channel"], c["effective_price"], c["discount_active"], c["rule"])
        for c in out["candidates"]
    ] == [
        ("free", 0.0, False, None),
        ("night", 5e-7, True, None),
        ("cheap", 1e-6, False, None),
        ("dear", 9e-6, False, None),
    ]
    assert out["excluded"] == [
        {"channel": "off", "reason": "disabled"},
        {"channel": "other", "reason": "does not serve model 'gpt-4o-mini'"},
    ]
    assert out["rules"] == [
        {"rule": "dear for team b", "channel": "dear", "matched": False, "error": None}
    ]

    out = await dry(api_key_name="team-b")  # rules see the key name asked for
    assert out["matched_rule"] == "dear for team b"
    assert [(c["channel"], c["rule"]) for c in out["candidates"]][:2] == [
        ("dear", "dear for team b"),
        ("free", None),
    ]

    # Quota: spent to its end, so a request reserving more than the whole limit still takes it.
    body["max_tokens"] = 200
    out = await dry()
    assert out["reserve_tokens"] > 100
    assert out["candidates"][0]["channel"] == "free"

    # A dry run sends nothing upstream and reserves nothing.
    assert all(not up.seen for up, _ in ups.values())
    rows = (await get_json(gw, "/api/usage"))["channels"]
    assert all(r["reserved_tokens"] == 0 and r["requests"] == 0 for r in rows)


async def test_route_dry_run_refuses_a_bad_body(gateway_factory):
    gw = await gateway_factory(base_config(channels=[{"name": "m", "type": "mock"}]))
    for raw, code in (
        (b"{", "invalid_json"),
        (json.dumps({"messages": []}).encode(), "missing_model"),
    ):
        resp = await gw.client.post("/api/route", data=raw, headers=gw.admin_headers())
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == code


async def test_refused_admin_calls_audit_under_tmp_path_only(gateway_factory, tmp_path):
    """The 401s above are audited; without a config file they once went to ./data/audit.log of
    the working folder (a running gateway's log, when the suite ran beside one)."""
    gw = await gateway_factory(base_config(channels=[{"name": "m", "type": "mock"}]))
    assert (await gw.client.get("/api/usage")).status == 401
    assert gw.gateway.audit.path.is_relative_to(tmp_path)
    assert "auth_failed" in gw.gateway.audit.path.read_text()
