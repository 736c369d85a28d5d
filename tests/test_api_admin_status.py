"""``GET /api/usage/timeseries`` and ``GET /api/status`` through HTTP with an admin JWT.

Buckets sum to the ``/api/usage`` totals on both request-log backends, sit in ``server.timezone``
(+05:30 and a DST change), bad parameters are a 400 naming them; the status shows the next
discount, the month's cost, the last reload and the latest failed upstream attempts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import DEV_KEY, Clock, base_config, channel

from smartproxy.upstream.failures import RecentFailures

TEAM = "sk-test-team-key-0002"
MESSAGES = [{"role": "user", "content": "hi"}]


async def get_json(gw: Any, path: str, **params: str) -> Any:
    resp = await gw.client.get(path, params=params, headers=gw.admin_headers())
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def chat(gw: Any, model: str = "gpt-4o-mini", key: str = DEV_KEY) -> int:
    resp = await gw.client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": MESSAGES},
        headers={"Authorization": f"Bearer {key}"},
    )
    await resp.read()
    return resp.status


def store_config(backend: str, tmp_path: Any) -> dict[str, Any]:
    if backend == "sqlite":
        return {"backend": "sqlite", "path": str(tmp_path / "usage.db")}
    return {"backend": "memory"}


async def two_channel_gateway(upstream_factory, gateway_factory, clock, backend, tmp_path, tz):
    _, a_url = await upstream_factory("a")
    _, b_url = await upstream_factory("b")
    cfg = base_config(
        channels=[
            channel("a", a_url, models=["gpt-4o-mini"], daily_limit=10_000),
            channel("b", b_url, models=["gpt-4o"], price_per_token=0.000002),
        ],
        storage=store_config(backend, tmp_path),
    )
    cfg["server"]["timezone"] = tz
    cfg["security"]["auth"]["api_keys"]["team"] = TEAM
    return await gateway_factory(cfg, clock=clock)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_buckets_sum_to_the_usage_totals(upstream_factory, gateway_factory, tmp_path, backend):
    clock = Clock(datetime(2026, 11, 25, 22, 40, tzinfo=UTC))
    gw = await two_channel_gateway(
        upstream_factory, gateway_factory, clock, backend, tmp_path, "Asia/Kolkata"
    )
    plan = [("gpt-4o-mini", DEV_KEY), ("gpt-4o", TEAM), ("gpt-4o", DEV_KEY)]
    for step in range(9):  # 9 requests over ~26 hours, across local midnight
        model, key = plan[step % 3]
        assert await chat(gw, model, key) == 200
        clock.advance(hours=3, minutes=7)
    totals = {c["channel"]: c for c in (await get_json(gw, "/api/usage"))["channels"]}
    assert sum(c["requests"] for c in totals.values()) == 9
    for bucket in ("hour", "day"):
        for group_by in ("channel", "api_key", "model"):
            doc = await get_json(
                gw, "/api/usage/timeseries", bucket=bucket, group_by=group_by,
                **{"from": "2026-11-25T00:00:00Z", "to": "2026-11-27T12:00:00Z"},
            )  # fmt: skip
            assert doc["timezone"] == "Asia/Kolkata"
            assert doc["totals"]["requests"] == 9
            assert doc["totals"]["total_tokens"] == sum(c["total_tokens"] for c in totals.values())
            assert doc["totals"]["cost"] == pytest.approx(sum(c["cost_usd"] for c in totals.values()))
            if group_by == "channel":
                for name, c in totals.items():
                    groups = [b["groups"].get(name, {}) for b in doc["buckets"]]
                    assert sum(g.get("requests", 0) for g in groups) == c["requests"]
                    assert sum(g.get("total_tokens", 0) for g in groups) == c["total_tokens"]
                    assert sum(g.get("prompt_tokens", 0) for g in groups) == c["prompt_tokens"]
                    assert sum(g.get("cost", 0.0) for g in groups) == pytest.approx(c["cost_usd"])
            for b in doc["buckets"]:  # a bucket's totals are the sum of its groups
                assert b["total_tokens"] == sum(g["total_tokens"] for g in b["groups"].values())
    by_key = await get_json(gw, "/api/usage/timeseries", bucket="day", group_by="api_key",
                            **{"from": "2026-11-25T00:00:00Z", "to": "2026-11-27T12:00:00Z"})
    assert by_key["keys"] == ["dev", "team"]
    # local days of +05:30: 2026-11-26 00:00 IST is 2026-11-25 18:30 UTC
    assert by_key["buckets"][0]["start"] == "2026-11-25T00:00:00+05:30"
    assert [b["start"] for b in by_key["buckets"]][1] == "2026-11-26T00:00:00+05:30"


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_hour_buckets_follow_the_server_timezone_across_dst(
    upstream_factory, gateway_factory, tmp_path, backend
):
    # New York, 2026-11-01: 01:00-02:00 happens twice (EDT, then EST).
    clock = Clock(datetime(2026, 11, 1, 5, 30, tzinfo=UTC))  # 01:30 EDT
    gw = await two_channel_gateway(
        upstream_factory, gateway_factory, clock, backend, tmp_path, "America/New_York"
    )
    assert await chat(gw) == 200
    clock.advance(hours=1)  # 01:30 EST, the second 01:30
    assert await chat(gw) == 200
    assert await chat(gw) == 200
    doc = await get_json(gw, "/api/usage/timeseries", bucket="hour",
                         **{"from": "2026-11-01T00:00:00-04:00", "to": "2026-11-01T03:00:00-05:00"})
    counts = [(b["start"], b["requests"]) for b in doc["buckets"]]
    assert counts == [
        ("2026-11-01T00:00:00-04:00", 0),
        ("2026-11-01T01:00:00-04:00", 1),
        ("2026-11-01T01:00:00-05:00", 2),
        ("2026-11-01T02:00:00-05:00", 0),
    ]
    day = await get_json(gw, "/api/usage/timeseries", bucket="day",
                         **{"from": "2026-11-01T12:00:00Z", "to": "2026-11-01T13:00:00Z"})
    assert [(b["start"], b["end"], b["requests"]) for b in day["buckets"]] == [
        ("2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00", 3)  # a 25-hour day
    ]


async def test_defaults_are_the_last_48_hours_and_30_days(gateway_factory):
    clock = Clock(datetime(2026, 11, 26, 12, 30, tzinfo=UTC))
    gw = await gateway_factory(base_config(channels=[{"name": "m", "type": "mock"}]), clock=clock)
    hourly = await get_json(gw, "/api/usage/timeseries")
    assert hourly["bucket"] == "hour" and hourly["group_by"] == "channel"
    assert hourly["from"] == "2026-11-24T12:00:00+00:00"
    assert hourly["to"] == "2026-11-26T13:00:00+00:00"
    assert len(hourly["buckets"]) == 49  # the current hour included
    daily = await get_json(gw, "/api/usage/timeseries", bucket="day")
    assert daily["from"] == "2026-10-27T00:00:00+00:00" and len(daily["buckets"]) == 31


async def test_an_unescaped_plus_offset_is_read_as_plus(gateway_factory):
    gw = await gateway_factory(base_config(channels=[{"name": "m", "type": "mock"}]))
    resp = await gw.client.get(
        "/api/usage/timeseries?bucket=day&from=2026-11-01T00:00:00+08:00&to=2026-11-03T00:00:00Z",
        headers=gw.admin_headers(),
    )  # a "+" left unescaped in a query string arrives as a space
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    assert doc["from"] == "2026-10-31T00:00:00+00:00"  # 00:00 +08:00 is Oct 31, 16:00 UTC
    assert len(doc["buckets"]) == 3


async def test_dates_and_times_without_an_offset_are_read_in_server_timezone(gateway_factory):
    """``from=2026-11-01`` is what a user types (audit finding: it was a 400 asking for an
    offset); it means midnight in server.timezone, as the buckets do."""
    gw = await gateway_factory(
        base_config(channels=[{"name": "m", "type": "mock"}], server={"timezone": "Asia/Shanghai"})
    )
    for query in ("from=2026-11-01&to=2026-11-03", "from=2026-11-01T00:00:00&to=2026-11-03T00:00"):
        resp = await gw.client.get(
            f"/api/usage/timeseries?bucket=day&{query}", headers=gw.admin_headers()
        )
        assert resp.status == 200, await resp.text()
        doc = await resp.json()
        assert doc["from"].startswith("2026-11-01T00:00:00") and doc["from"].endswith("+08:00")
        assert len(doc["buckets"]) in (2, 3)
    resp = await gw.client.get("/api/usage?from=2026-11-01", headers=gw.admin_headers())
    assert resp.status == 200


@pytest.mark.parametrize(
    "query,param",
    [
        ({"bucket": "week"}, "bucket"),
        ({"bucket": ""}, "bucket"),
        ({"group_by": "user"}, "group_by"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01T00:00:00Z"}, "to"),
        ({"from": "2026-11-27T00:00:00Z", "to": "2026-11-26T00:00:00Z"}, "from"),
        ({"from": "2000-01-01T00:00:00Z", "to": "2026-11-26T00:00:00Z"}, "bucket"),
    ],
)
async def test_timeseries_refuses_bad_parameters_naming_them(gateway_factory, query, param):
    gw = await gateway_factory(base_config(channels=[{"name": "m", "type": "mock"}]))
    resp = await gw.client.get("/api/usage/timeseries", params=query, headers=gw.admin_headers())
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == param
    assert param in error["message"]


async def test_timeseries_and_status_need_an_admin_token(gateway_factory):
    gw = await gateway_factory(base_config(channels=[{"name": "m", "type": "mock"}]))
    for path in ("/api/usage/timeseries", "/api/status"):
        assert (await gw.client.get(path)).status == 401
        bad = await gw.client.get(path, headers={"Authorization": f"Bearer {DEV_KEY}"})
        assert bad.status == 401


async def test_status_shows_prices_discount_month_reload_and_failures(
    upstream_factory, gateway_factory
):
    up_bad, bad_url = await upstream_factory("bad", default="fail-503")
    _, good_url = await upstream_factory("good")
    # 20:48 in Shanghai: the 00:00-06:00 discount starts in 3 h 12 min.
    clock = Clock(datetime(2026, 11, 26, 12, 48, tzinfo=UTC))
    cfg = base_config(
        channels=[
            channel("flaky", bad_url, priority=0),
            channel("steady", good_url, priority=1, price_per_token=0.000001,
                    discount_time=["00:00-06:00"], discount_price=0.0000005),
            {"name": "off", "type": "mock", "status": "disabled"},
        ]
    )  # fmt: skip
    cfg["server"]["timezone"] = "Asia/Shanghai"
    gw = await gateway_factory(cfg, clock=clock, write_file=True)
    assert await chat(gw) == 200  # flaky answers 503, steady takes over
    doc = await get_json(gw, "/api/status")
    assert doc["timezone"] == "Asia/Shanghai"
    assert doc["now"] == "2026-11-26T20:48:00+08:00"
    ch = {c["name"]: c for c in doc["channels"]}
    steady = ch["steady"]
    assert steady["effective_price"] == 0.000001 and steady["discount_active"] is False
    assert steady["discount"] == {
        "active": False, "window": "00:00-06:00", "price": 0.0000005,
        "at": "2026-11-27T00:00:00+08:00", "in_seconds": 3 * 3600 + 12 * 60,
    }  # fmt: skip
    assert steady["month_requests"] == 1
    assert steady["month_tokens"] == 17
    assert steady["month_cost_usd"] == pytest.approx(17 * 0.000001)
    assert ch["off"]["state"] == "disabled" and ch["off"]["status"] == "disabled"
    assert ch["flaky"]["breaker"] == "closed" and ch["flaky"]["discount"] is None
    failure = doc["recent_failures"][0]
    assert failure["channel"] == "flaky" and failure["status"] == 503
    assert failure["model"] == "gpt-4o-mini" and failure["at"].startswith("2026-11-26T12:48")
    assert doc["failures_total"] == 1
    assert doc["config"]["last_reload_at"] is None and doc["config"]["last_reload_ok"] is None
    # a refused reload shows its error; the discount, once in effect, says when it ends
    gw.config_path.write_text("channels: [{name: x}]\n")
    assert (await gw.client.post("/api/reload", headers=gw.admin_headers())).status == 400
    clock.advance(hours=4)
    doc = await get_json(gw, "/api/status")
    assert doc["config"]["last_reload_ok"] is False
    assert "channels[0]" in doc["config"]["last_reload_error"]
    assert doc["config"]["last_reload_at"].endswith("+08:00")
    steady = {c["name"]: c for c in doc["channels"]}["steady"]
    assert steady["effective_price"] == 0.0000005
    assert steady["discount"]["active"] is True
    assert steady["discount"]["at"] == "2026-11-27T06:00:00+08:00"


async def test_failure_ring_is_bounded(upstream_factory, gateway_factory):
    _, bad_url = await upstream_factory("bad", default="fail-500")
    cfg = base_config(channels=[channel("bad", bad_url)])
    cfg["circuit_breaker"] = {"fail_max": 1000}
    gw = await gateway_factory(cfg)
    gw.gateway.failures = RecentFailures(limit=4)
    for _ in range(3):
        await chat(gw)
    doc = await get_json(gw, "/api/status")
    assert doc["failures_total"] == 9  # three attempts per request
    assert len(doc["recent_failures"]) == 4
    assert all(f["status"] == 500 and f["channel"] == "bad" for f in doc["recent_failures"])


async def test_status_shows_open_breakers_and_cool_downs(upstream_factory, gateway_factory):
    _, broken_url = await upstream_factory("broken", default="fail-500")
    _, limited_url = await upstream_factory("limited", default="fail-429", retry_after="120")
    clock = Clock(datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
    cfg = base_config(channels=[channel("broken", broken_url, fail_max=1, priority=0),
                                channel("limited", limited_url, priority=1)])  # fmt: skip
    gw = await gateway_factory(cfg, clock=clock)
    assert await chat(gw) == 429  # broken fails (and opens), limited answers 429
    ch = {c["name"]: c for c in (await get_json(gw, "/api/status"))["channels"]}
    assert ch["broken"]["breaker"] == "open" and ch["broken"]["state"] == "open"
    assert ch["limited"]["breaker"] == "closed" and ch["limited"]["state"] == "cooldown"
    assert ch["limited"]["cooling_down_until"] == "2026-11-26T12:02:00+00:00"
    assert [f["status"] for f in (await get_json(gw, "/api/status"))["recent_failures"]] == [429, 500]


def test_month_edges_are_local_calendar_months():
    from zoneinfo import ZoneInfo

    from smartproxy.api.admin_status import month_edges

    shanghai = ZoneInfo("Asia/Shanghai")
    local = datetime(2026, 12, 31, 23, 59, tzinfo=UTC).astimezone(shanghai)  # Jan 1, 07:59 local
    start, end = month_edges(local)
    assert datetime.fromtimestamp(start, UTC) == datetime(2026, 12, 31, 16, 0, tzinfo=UTC)
    assert datetime.fromtimestamp(end, UTC) == datetime(2027, 1, 31, 16, 0, tzinfo=UTC)
    ny = ZoneInfo("America/New_York")
    start, end = month_edges(datetime(2026, 12, 15, 12, tzinfo=ny))
    assert datetime.fromtimestamp(start, ny).isoformat() == "2026-12-01T00:00:00-05:00"
    assert datetime.fromtimestamp(end, ny).isoformat() == "2027-01-01T00:00:00-05:00"
