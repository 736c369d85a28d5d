"""Issue [2] end to end, routing side: free first while the quota lasts, day rollover in
``server.timezone``, discount windows deciding the channel and the recorded cost, rules through
the proxy, and a rejected rule refused by ``smartproxy check-config``.

Every request goes through the gateway's HTTP surface (the openai SDK); the clock is injected.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import openai
import pytest
import yaml
from conftest import DEV_KEY, Clock, base_config, channel

from smartproxy.cli import main

MESSAGES = [{"role": "user", "content": "hi"}]
USAGE_50 = {"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50}
USAGE_100 = {"prompt_tokens": 60, "completion_tokens": 40, "total_tokens": 100}


async def ask(gw: Any, sdk: Any, **kw: Any) -> str:
    """One chat request through the gateway; the name of the channel that served it."""
    kw.setdefault("max_tokens", 40)
    if kw["max_tokens"] is None:  # not sent: the gateway reserves usage.default_max_tokens
        del kw["max_tokens"]
    kw.setdefault("model", "gpt-4o-mini")
    resp = await sdk.chat.completions.with_raw_response.create(messages=MESSAGES, **kw)
    resp.parse()
    await gw.gateway.drain_background()  # usage is settled by a task the handler spawned
    return str(resp.headers["x-smartproxy-channel"])


async def usage_of(gw: Any) -> dict[str, dict[str, Any]]:
    resp = await gw.client.get("/api/usage", headers=gw.admin_headers())
    assert resp.status == 200
    return {row["channel"]: row for row in (await resp.json())["channels"]}


async def dry_run(gw: Any, body: dict[str, Any]) -> dict[str, Any]:
    resp = await gw.client.post("/api/route", json=body, headers=gw.admin_headers())
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


def at_local(tz: str, *args: int) -> datetime:
    """An aware UTC instant for a wall-clock time in ``tz``."""
    return datetime(*args, tzinfo=ZoneInfo(tz)).astimezone(UTC)


# ----------------------------------------------------------------------------- 1. free first
@pytest.mark.parametrize("tz", ["UTC", "Asia/Shanghai"])
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_free_until_daily_quota_then_paid_then_free_after_local_midnight(
    upstream_factory, gateway_factory, tmp_path, tz, backend
):
    free_up, free_url = await upstream_factory("free", usage=dict(USAGE_50))
    paid_up, paid_url = await upstream_factory("paid", usage=dict(USAGE_50))
    clock = Clock(at_local(tz, 2026, 11, 26, 20, 0))  # 20:00 local; Shanghai: 12:00 UTC
    storage = {"backend": backend, "path": str(tmp_path / "usage.db")}
    cfg = base_config(
        server={"listen": "127.0.0.1:0", "timeout": 5, "timezone": tz},
        channels=[
            channel("paid", paid_url, price_per_token=1e-6),  # listed first on purpose
            channel("free", free_url, price_per_token=0, daily_limit=1000),
        ],
        storage=storage,
    )
    gw = await gateway_factory(cfg, clock=clock)
    sdk = gw.openai()
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 40}
    reserve = (await dry_run(gw, body))["reserve_tokens"]
    assert 40 < reserve < 1000 // 5  # prompt estimate (len(body)/4) + max_tokens

    # Each request reserves `reserve` and settles 50: the free channel takes requests while used
    # (plus in flight) is below the limit, so the quota is spent to its end: 20 x 50 = 1000.
    expected_free = 20
    served = [await ask(gw, sdk) for _ in range(expected_free + 3)]
    assert served == ["free"] * expected_free + ["paid"] * 3
    used = 50 * expected_free
    row = (await usage_of(gw))["free"]
    assert row["day_tokens"] == used == 1000 and row["day_quota_left"] == 0
    assert row["requests"] == expected_free and row["cost_usd"] == 0
    decision = await dry_run(gw, body)
    assert [c["channel"] for c in decision["candidates"]] == ["paid"]
    assert decision["excluded"] == [
        {"channel": "free", "reason": "daily token quota used (1000/1000)"}
    ]

    # The day ends at local midnight in server.timezone (16:00 UTC for Asia/Shanghai).
    local = clock.now.astimezone(ZoneInfo(tz))
    midnight = datetime(local.year, local.month, local.day, tzinfo=ZoneInfo(tz)) + timedelta(days=1)
    clock.now = midnight.astimezone(UTC) - timedelta(seconds=1)
    assert await ask(gw, sdk) == "paid"
    clock.now = midnight.astimezone(UTC)
    assert await ask(gw, sdk) == "free"
    row = (await usage_of(gw))["free"]
    assert row["day_tokens"] == 50 and row["total_tokens"] == used + 50
    assert len(free_up.seen) == row["requests"]
    assert len(paid_up.seen) == (await usage_of(gw))["paid"]["requests"] == 4


@pytest.fixture(params=["memory", "redis"])
def quota_storage(request, tmp_path):
    """The admission rule is the same for every backend (redis: in its Lua script)."""
    if request.param == "memory":
        yield {"backend": "memory"}
        return
    from redisutil import delete_prefix, require_redis, unique_prefix

    url, prefix = require_redis(), unique_prefix()
    yield {"backend": "redis", "url": url, "key_prefix": prefix, "timeout": 3,
           "path": str(tmp_path / "log.db")}
    delete_prefix(url, prefix)


async def test_small_quotas_are_spent_to_their_end_by_requests_without_max_tokens(
    upstream_factory, gateway_factory, quota_storage
):
    """Must-show 6: ``daily_limit: 1000`` and requests without ``max_tokens`` (each reserving
    its prompt + usage.default_max_tokens, more than the whole limit): the free channel serves
    until its used tokens reach 1000 (overrun at most one request), then the paid one; a channel
    with ``hour_limit: 300`` serves its first request. The dry run and /api/usage agree."""
    free_up, free_url = await upstream_factory("free", usage={"prompt_tokens": 30,
                                                              "completion_tokens": 40,
                                                              "total_tokens": 70})
    _, paid_url = await upstream_factory("paid", usage=dict(USAGE_50))
    free = channel("free", free_url, daily_limit=1000)
    cfg = base_config(channels=[free, channel("paid", paid_url, price_per_token=1e-6)],
                      storage=quota_storage)
    gw = await gateway_factory(cfg)
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    assert (await dry_run(gw, body))["reserve_tokens"] > 1000  # prompt + 1024
    served = []
    for _ in range(20):
        served.append(await ask(gw, gw.openai(), max_tokens=None))
        row = (await usage_of(gw))["free"]
        used = row["day_tokens"] + row["reserved_tokens"]
        route = [c["channel"] for c in (await dry_run(gw, body))["candidates"]]
        assert route == (["free", "paid"] if used < 1000 else ["paid"]), used
        health = await (await gw.client.get("/health")).json()
        (free_health,) = [c for c in health["channels"] if c["name"] == "free"]
        assert free_health["day_tokens_used"] == used  # the same numbers everywhere
        assert free_health["day_quota_left"] == row["day_quota_left"] == max(0, 1000 - used)
    n_free = served.count("free")
    assert served == ["free"] * n_free + ["paid"] * (20 - n_free)
    assert n_free == 15  # 14 x 70 = 980 < 1000 takes one more: 1050, overrun < one request
    row = (await usage_of(gw))["free"]
    assert (row["day_tokens"], row["day_quota_left"], row["requests"]) == (1050, 0, 15)
    assert len(free_up.seen) == 15

    hourly = channel("hourly", free_url, hour_limit=300)
    small = await gateway_factory(base_config(channels=[hourly], storage=quota_storage))
    assert await ask(small, small.openai(), max_tokens=None) == "hourly"
    assert await ask(small, small.openai(), max_tokens=None) == "hourly"  # 70 < 300
    smaller = await gateway_factory(base_config(channels=[channel("one", free_url,
                                                                  hour_limit=50)],
                                                storage=quota_storage))
    assert await ask(smaller, smaller.openai(), max_tokens=None) == "one"  # 70: used up
    with pytest.raises(openai.APIStatusError) as info:
        await ask(smaller, smaller.openai(), max_tokens=None)
    assert info.value.status_code == 503
    assert "one: hourly token quota used (70/50)" in str(info.value.body)


async def test_back_to_back_requests_spend_a_small_quota_to_its_end(
    upstream_factory, gateway_factory, quota_storage
):
    """Must-show 6 as a client sees it: one request after the other, nothing waited for in
    between. A request that has answered holds no reservation any more (on redis too, where its
    settlement is still on its way to Redis), so the next one is served by the free channel."""
    _, free_url = await upstream_factory("free", usage={"prompt_tokens": 30,
                                                        "completion_tokens": 40,
                                                        "total_tokens": 70})
    _, paid_url = await upstream_factory("paid", usage=dict(USAGE_50))
    cfg = base_config(channels=[channel("free", free_url, daily_limit=1000),
                                channel("paid", paid_url, price_per_token=1e-6)],
                      storage=quota_storage)
    gw = await gateway_factory(cfg)
    sdk = gw.openai()
    served = []
    for _ in range(20):
        resp = await sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        served.append(resp.headers["x-smartproxy-channel"])
    assert served == ["free"] * 15 + ["paid"] * 5  # 14 x 70 = 980 < 1000 takes one more


async def test_a_request_served_after_a_failover_counts_against_its_keys_budget(
    upstream_factory, gateway_factory, quota_storage
):
    """The key's daily budget and tokens per minute are charged for what a request cost on
    whichever attempt answered it; on redis the key's limits ride with the first attempt only,
    and the second attempt's settlement must still name the key."""
    _, bad_url = await upstream_factory("bad", default="fail-500")
    _, paid_url = await upstream_factory("paid", usage=dict(USAGE_50))
    cfg = base_config(channels=[channel("bad", bad_url),
                                channel("paid", paid_url, price_per_token=1e-5)],
                      storage=quota_storage)
    cfg["security"]["auth"]["api_keys"] = {
        "payer": {"key": "sk-gw-payer-0001", "daily_budget_usd": 0.0006,
                  "tokens_per_minute": 120},
    }
    gw = await gateway_factory(cfg)
    sdk = gw.openai("sk-gw-payer-0001")
    for _ in range(2):  # 50 tokens, $0.0005 each
        assert await ask(gw, sdk) == "paid"
    with pytest.raises(openai.RateLimitError):  # 100 of 120 tokens this minute, $0.001 spent
        await ask(gw, sdk)


async def test_hour_limit_rolls_over_at_the_local_hour(upstream_factory, gateway_factory):
    free_up, free_url = await upstream_factory("free", usage=dict(USAGE_100))
    _, paid_url = await upstream_factory("paid")
    clock = Clock(at_local("Asia/Kolkata", 2026, 11, 26, 10, 59, 0))  # UTC+05:30: half-hour zone
    gw = await gateway_factory(
        base_config(
            server={"listen": "127.0.0.1:0", "timeout": 5, "timezone": "Asia/Kolkata"},
            channels=[
                channel("free", free_url, hour_limit=100),
                channel("paid", paid_url, price_per_token=1e-6),
            ],
            usage={"default_max_tokens": 20},
        ),
        clock=clock,
    )
    sdk = gw.openai()
    assert await ask(gw, sdk, max_tokens=None) == "free"  # 0 used < 100
    assert await ask(gw, sdk, max_tokens=None) == "paid"  # 100 used: the hour is spent
    clock.advance(seconds=59)  # 10:59:59 local
    assert await ask(gw, sdk, max_tokens=None) == "paid"
    clock.advance(seconds=1)  # 11:00 local (05:30 UTC): a new hour
    assert await ask(gw, sdk, max_tokens=None) == "free"
    row = (await usage_of(gw))["free"]
    assert (row["hour_tokens"], row["day_tokens"], row["hour_quota_left"]) == (100, 200, 0)


# ----------------------------------------------------------------------------- 4. discounts
NIGHT = {"discount_time": ["22:00-02:00"], "discount_price": 1e-7}


@pytest.mark.parametrize("tz", ["UTC", "Asia/Shanghai", "America/New_York"])
@pytest.mark.parametrize(
    "local,expected",
    [
        ((2026, 11, 26, 21, 59, 59), "day"),
        ((2026, 11, 26, 22, 0, 0), "night"),
        ((2026, 11, 26, 23, 59, 59), "night"),
        ((2026, 11, 27, 0, 0, 0), "night"),
        ((2026, 11, 27, 1, 59, 59), "night"),
        ((2026, 11, 27, 2, 0, 0), "day"),
        ((2026, 11, 27, 12, 0, 0), "day"),
    ],
)
async def test_discounted_channel_outranks_cheaper_one_inside_its_window(
    upstream_factory, gateway_factory, tz, local, expected
):
    _, night_url = await upstream_factory("night", usage=dict(USAGE_100))
    _, day_url = await upstream_factory("day", usage=dict(USAGE_100))
    clock = Clock(at_local(tz, *local))
    gw = await gateway_factory(
        base_config(
            server={"listen": "127.0.0.1:0", "timeout": 5, "timezone": tz},
            channels=[
                channel("night", night_url, price_per_token=3e-6, **NIGHT),
                channel("day", day_url, price_per_token=1e-6),
            ],
        ),
        clock=clock,
    )
    decision = await dry_run(gw, {"model": "gpt-4o-mini", "messages": MESSAGES})
    prices = {
        c["channel"]: (c["effective_price"], c["discount_active"]) for c in decision["candidates"]
    }
    inside = expected == "night"
    assert prices == {"night": (1e-7 if inside else 3e-6, inside), "day": (1e-6, False)}
    assert decision["candidates"][0]["channel"] == expected

    assert await ask(gw, gw.openai()) == expected
    rows = await usage_of(gw)
    price = 1e-7 if inside else 1e-6
    assert rows[expected]["cost_usd"] == pytest.approx(100 * price)
    assert rows[expected]["effective_price"] == (1e-7 if inside else 1e-6)
    other = "day" if inside else "night"
    assert rows[other]["requests"] == 0 and rows[other]["cost_usd"] == 0


async def test_stream_is_priced_at_its_start_even_when_the_window_closes_mid_stream(
    upstream_factory, gateway_factory
):
    night_up, night_url = await upstream_factory("night", default="hold", usage=dict(USAGE_100))
    clock = Clock(at_local("Asia/Shanghai", 2026, 11, 27, 1, 59, 30))
    gw = await gateway_factory(
        base_config(
            server={"listen": "127.0.0.1:0", "timeout": 5, "timezone": "Asia/Shanghai"},
            channels=[channel("night", night_url, price_per_token=3e-6, **NIGHT)],
        ),
        clock=clock,
    )
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.url + "/chat/completions",
            headers={"Authorization": f"Bearer {DEV_KEY}"},
            json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
        ) as r:
            await r.content.readuntil(b"\n\n")
            clock.advance(minutes=1)  # 02:00:30 local: the window has closed
            night_up.release.set()
            await r.read()
    await gw.gateway.drain_background()
    row = (await usage_of(gw))["night"]
    assert row["total_tokens"] == 100
    assert row["cost_usd"] == pytest.approx(100 * 1e-7)  # the discount in effect at the start
    assert row["effective_price"] == 3e-6  # what a request starting now would pay


async def test_prompt_and_completion_prices_refine_price_per_token(
    upstream_factory, gateway_factory
):
    _, url = await upstream_factory("a", usage=dict(USAGE_100))
    gw = await gateway_factory(
        base_config(
            channels=[
                channel(
                    "a",
                    url,
                    price_per_token=1e-6,
                    price_per_prompt_token=2e-6,
                    price_per_completion_token=5e-6,
                )
            ]
        )
    )
    await ask(gw, gw.openai())
    assert (await usage_of(gw))["a"]["cost_usd"] == pytest.approx(60 * 2e-6 + 40 * 5e-6)


# ----------------------------------------------------------------------------- 5. rules
def rules_config(f_url: str, p1_url: str, p2_url: str) -> dict[str, Any]:
    return base_config(
        channels=[
            channel("f", f_url, price_per_token=0, daily_limit=100000),
            channel("p1", p1_url, price_per_token=1e-6),
            channel("p2", p2_url, price_per_token=2e-6),
        ],
        rules=[
            # SmartAIProxy syntax: &&, AND, ||, NOT, true, false
            {"name": "never", "channel": "f", "expression": "false || NOT true", "priority": 0},
            {
                "name": "big prompts",
                "channel": "p1",
                "expression": "prompt_tokens > 100 && max_tokens >= 10 AND true",
                "priority": 2,
            },
            {
                "name": "streams",
                "channel": "p2",
                "expression": "stream == true AND model == 'gpt-4o-mini'",
                "priority": 1,
            },
            {
                "name": "team b",
                "channel": "p1",
                "expression": "api_key_name == 'team-b'",
                "priority": 1,
            },  # same priority as "streams": file order breaks the tie
        ],
    )


async def test_rules_decide_the_channel_in_priority_order(upstream_factory, gateway_factory):
    ups = {n: await upstream_factory(n) for n in ("f", "p1", "p2")}
    cfg = rules_config(*(ups[n][1] for n in ("f", "p1", "p2")))
    cfg["security"]["auth"]["api_keys"]["team-b"] = "sk-test-team-b-0002"
    gw = await gateway_factory(cfg)
    sdk = gw.openai()
    big = [{"role": "user", "content": "x" * 800}]

    assert await ask(gw, sdk) == "f"  # no rule matches: free first
    stream = await sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    assert stream.headers["x-smartproxy-channel"] == "p2"
    [c async for c in stream.parse()]
    resp = await sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=big, max_tokens=10
    )
    assert resp.headers["x-smartproxy-channel"] == "p1"
    team_b = gw.openai(key="sk-test-team-b-0002")
    assert await ask(gw, team_b, stream=False) == "p1"  # tie with "streams" would not matter here

    # Both "streams" (priority 1) and "big prompts" (2) match: p2, then p1, then the rest by price.
    body = {"model": "gpt-4o-mini", "messages": big, "max_tokens": 10, "stream": True}
    decision = await dry_run(gw, body)
    assert decision["matched_rule"] == "streams"
    assert [(c["channel"], c["rule"]) for c in decision["candidates"]] == [
        ("p2", "streams"),
        ("p1", "big prompts"),
        ("f", None),
    ]
    traces = {t["rule"]: t["matched"] for t in decision["rules"]}
    assert traces == {"never": False, "streams": True, "team b": False, "big prompts": True}
    # The order is the failover order too: p2 fails, p1 (the next rule's channel) answers.
    ups["p2"][0].script = ["fail-500"]
    stream = await sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=big, max_tokens=10, stream=True
    )
    assert stream.headers["x-smartproxy-channel"] == "p1"
    [c async for c in stream.parse()]


async def test_rule_priority_ties_keep_file_order(upstream_factory, gateway_factory):
    ups = {n: await upstream_factory(n) for n in ("f", "p1", "p2")}
    cfg = rules_config(*(ups[n][1] for n in ("f", "p1", "p2")))
    cfg["security"]["auth"]["api_keys"]["team-b"] = "sk-test-team-b-0002"
    gw = await gateway_factory(cfg)
    team_b = gw.openai(key="sk-test-team-b-0002")
    # "streams" (p2) and "team b" (p1) both have priority 1 and both match: "streams" is first.
    resp = await team_b.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    assert resp.headers["x-smartproxy-channel"] == "p2"
    [c async for c in resp.parse()]


async def test_rule_on_channel_variables_sees_live_usage(upstream_factory, gateway_factory):
    _, f_url = await upstream_factory("f", usage=dict(USAGE_100))
    _, p_url = await upstream_factory("p", usage=dict(USAGE_100))
    gw = await gateway_factory(
        base_config(
            channels=[
                channel("f", f_url, price_per_token=0),
                channel("p", p_url, price_per_token=1e-6, daily_limit=10_000),
            ],
            rules=[
                {
                    "name": "paid while under 150",
                    "channel": "p",
                    "expression": "day_tokens_used + prompt_tokens < 150"
                    " && channel_status == 'healthy'",
                }
            ],
        )
    )
    sdk = gw.openai()
    assert [await ask(gw, sdk) for _ in range(3)] == ["p", "p", "f"]


@pytest.mark.parametrize(
    "expression,problem",
    [
        ("__import__('os').system('id')", "not allowed"),
        ("model.upper() == 'X'", "not allowed"),
        ("open('/etc/passwd')", "calls to 'open' are not allowed"),
        ("[x for x in 'abc']", "comprehensions are not allowed"),
        ("(lambda: 1)()", "not allowed"),
        ("10 ** 10 ** 10 > 1", "'**' is only allowed"),
        ("'a' * 10**9 == model", "not allowed"),
        ("tokens_left > 0", "unknown name 'tokens_left'"),
    ],
)
def test_check_config_refuses_a_rejected_rule_naming_it(tmp_path, capsys, expression, problem):
    cfg = base_config(
        channels=[channel("a", "https://up.test/v1")],
        rules=[
            {
                "name": "ok rule",
                "channel": "a",
                "expression": "day_tokens_used < daily_limit && true",
            },
            {"name": "evil rule", "channel": "a", "expression": expression},
        ],
    )
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "rules[1].expression" in err and "'evil rule'" in err and problem in err
    assert "'ok rule'" not in err


def test_check_config_accepts_smartaiproxy_rule_syntax(tmp_path, capsys):
    cfg = base_config(
        channels=[channel("a", "https://up.test/v1")],
        rules=[
            {
                "name": "r",
                "channel": "a",
                "expression": "day_tokens_used < daily_limit AND (stream || NOT false) && true",
            }
        ],
    )
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["check-config", str(path)]) == 0
    assert "OK (1 channels, 1 rules)" in capsys.readouterr().out
