"""The candidate order of contract §4, table-style: channels + rules + state in, order out."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from smartproxy.config import ChannelConfig, TimeWindow, parse_hhmm
from smartproxy.routing.router import (
    ChannelState,
    RequestFacts,
    RouteDecision,
    route,
    rule_variables,
)
from smartproxy.routing.rules import VARIABLES, CompiledRule

NOON = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)  # a Monday
NIGHT = datetime(2025, 3, 10, 3, 0, tzinfo=UTC)
FACTS = RequestFacts(model="gpt-4o-mini")
EMBEDDINGS = RequestFacts(model="gpt-4o-mini", path="/embeddings")


def ch(name: str, price: float = 0.0, priority: int = 0, **kw: Any) -> ChannelConfig:
    windows = tuple(
        TimeWindow(parse_hhmm(w.split("-")[0]), parse_hhmm(w.split("-")[1]))
        for w in kw.pop("discount_time", ())
    )
    return ChannelConfig(
        name=name,
        type=kw.pop("type", "openai"),
        endpoint="https://up.test/v1",
        price_per_token=price,
        priority=priority,
        discount_time=windows,
        **kw,
    )


def rule(name: str, channel: str, expression: str = "true", priority: int = 0) -> CompiledRule:
    return CompiledRule(name, channel, priority, expression)


def order(decision: RouteDecision) -> list[str]:
    return [c.channel.name for c in decision.candidates]


def excluded(decision: RouteDecision) -> dict[str, str]:
    return {e.channel: e.reason for e in decision.excluded}


def run(
    channels: list[ChannelConfig],
    rules: list[CompiledRule] | None = None,
    states: dict[str, ChannelState] | None = None,
    *,
    at: datetime = NOON,
    facts: RequestFacts = FACTS,
    reserve: int = 0,
) -> RouteDecision:
    return route(channels, rules or [], facts, states or {}, at, UTC, reserve_tokens=reserve)


# ----------------------------------------------------------------------------- price order
@pytest.mark.parametrize(
    ("channels", "expected"),
    [
        # free first, then cheaper
        ([ch("paid", 2e-6), ch("free", 0.0), ch("cheap", 1e-6)], ["free", "cheap", "paid"]),
        # equal price: lower priority number first, then file order
        ([ch("a", 1e-6, 3), ch("b", 1e-6, 1), ch("c", 1e-6, 1)], ["b", "c", "a"]),
        # free beats any priority
        ([ch("p", 1e-9, -100), ch("f", 0.0, 100)], ["f", "p"]),
        ([ch("f2", 0.0, 2), ch("f1", 0.0, 1)], ["f1", "f2"]),
    ],
)
def test_price_order(channels: list[ChannelConfig], expected: list[str]) -> None:
    decision = run(channels)
    assert order(decision) == expected
    assert decision.matched_rule is None
    assert all(c.rule is None for c in decision.candidates)


@pytest.mark.parametrize(
    ("at", "expected", "prices"),
    [
        (NIGHT, ["night-deal", "usually-cheap"], [0.5e-6, 1e-6]),
        (NOON, ["usually-cheap", "night-deal"], [1e-6, 3e-6]),
    ],
)
def test_discounted_now_outranks_normally_cheaper(
    at: datetime, expected: list[str], prices: list[float]
) -> None:
    channels = [
        ch("usually-cheap", 1e-6),
        ch("night-deal", 3e-6, discount_time=["00:00-06:00"], discount_price=0.5e-6),
    ]
    decision = run(channels, at=at)
    assert order(decision) == expected
    assert [c.effective_price for c in decision.candidates] == prices
    assert [c.discount_active for c in decision.candidates] == [at is NIGHT, False]


def test_discount_to_zero_counts_as_free() -> None:
    channels = [ch("free", 0.0, priority=5), ch("night", 1e-6, discount_time=["00:00-06:00"],
                                                discount_price=0.0)]  # fmt: skip
    assert order(run(channels, at=NIGHT)) == ["night", "free"]  # equal price 0: priority decides


# ----------------------------------------------------------------------------- exclusions
@pytest.mark.parametrize(
    ("kind", "path", "reason"),
    [
        ("anthropic", "/embeddings", "anthropic channels do not serve /v1/embeddings"),
        ("claude", "/completions", "anthropic channels do not serve /v1/completions"),
        ("anthropic", "/chat/completions", None),
        ("azure", "/embeddings", None),
        ("azure", "/completions", None),
        ("mock", "/embeddings", None),
    ],
)
def test_endpoint_exclusions(kind: str, path: str, reason: str | None) -> None:
    facts = RequestFacts(model="gpt-4o-mini", path=path)
    decision = run([ch("x", type=kind), ch("other", 1.0)], facts=facts)
    assert order(decision) == (["x", "other"] if reason is None else ["other"])
    assert excluded(decision) == ({} if reason is None else {"x": reason})


@pytest.mark.parametrize(
    ("channel", "state", "reserve", "reason"),
    [
        (ch("x", status="disabled"), ChannelState(), 0, "disabled"),
        (ch("x", models=("llama",)), ChannelState(), 0, "does not serve model 'gpt-4o-mini'"),
        (ch("x"), ChannelState(circuit="open"), 0, "circuit open"),
        (ch("x"), ChannelState(circuit="cooldown"), 0, "cooling down after 429"),
        (ch("x", daily_limit=1000), ChannelState(day_tokens_used=1000), 0,
         "daily token quota used (1000/1000)"),
        (ch("x", daily_limit=1000), ChannelState(day_tokens_used=1200), 11,
         "daily token quota used (1200/1000)"),
        (ch("x", hour_limit=50), ChannelState(hour_tokens_used=60), 0,
         "hourly token quota used (60/50)"),
        (ch("x", daily_request_limit=3), ChannelState(day_requests_used=3), 0,
         "daily request quota used (3/3)"),
    ],
)  # fmt: skip
def test_exclusions(channel: ChannelConfig, state: ChannelState, reserve: int, reason: str) -> None:
    decision = run([channel, ch("other", 1.0)], states={"x": state}, reserve=reserve)
    assert order(decision) == ["other"]
    assert excluded(decision) == {"x": reason}


@pytest.mark.parametrize(
    ("channel", "state", "reserve"),
    [
        (ch("x"), ChannelState(circuit="half_open"), 0),  # one trial allowed
        (ch("x"), ChannelState(circuit="healthy"), 0),
        (ch("x", models=("llama",), model_mapping={"gpt-4o-mini": "llama"}), ChannelState(), 0),
        (ch("x", models=()), ChannelState(), 0),  # no list: any model
        (ch("x", daily_limit=1000), ChannelState(day_tokens_used=990), 10),  # exactly at limit
        (ch("x", daily_limit=1000), ChannelState(day_tokens_used=999), 5000),  # spent to its end
        (ch("x", hour_limit=300), ChannelState(), 1034),  # a small quota takes its first request
        (ch("x", daily_limit=0, hour_limit=0), ChannelState(10**9, 10**9, 10**9), 0),  # unlimited
        (ch("x", daily_request_limit=3), ChannelState(day_requests_used=2), 0),
    ],
)
def test_still_candidate(channel: ChannelConfig, state: ChannelState, reserve: int) -> None:
    decision = run([channel], states={"x": state}, reserve=reserve)
    assert order(decision) == ["x"]
    assert decision.excluded == ()


def test_quota_exhaustion_moves_to_paid_and_back_after_rollover() -> None:
    channels = [ch("paid", 2e-6), ch("free", 0.0, daily_limit=1000)]
    assert order(run(channels, states={"free": ChannelState(day_tokens_used=400)})) == [
        "free",
        "paid",
    ]
    used_up = run(channels, states={"free": ChannelState(day_tokens_used=1000)})
    assert order(used_up) == ["paid"]
    # spent to its end: 999 used (reservations included) still takes a request of any size
    assert order(run(channels, states={"free": ChannelState(999)}, reserve=5000)) == [
        "free",
        "paid",
    ]
    # the next day the store reports fresh counters
    assert order(run(channels, states={"free": ChannelState()})) == ["free", "paid"]


# ----------------------------------------------------------------------------- rules
CHANNELS = [ch("cheap", 1e-6), ch("free", 0.0), ch("pricey", 5e-6), ch("mid", 2e-6)]


@pytest.mark.parametrize(
    ("rules", "expected", "matched"),
    [
        ([], ["free", "cheap", "mid", "pricey"], None),
        ([rule("r1", "pricey")], ["pricey", "free", "cheap", "mid"], "r1"),
        # rules in priority order, not file order
        ([rule("late", "mid", priority=5), rule("early", "pricey", priority=1)],
         ["pricey", "mid", "free", "cheap"], "early"),
        # ties keep file order
        ([rule("a", "mid", priority=1), rule("b", "pricey", priority=1)],
         ["mid", "pricey", "free", "cheap"], "a"),
        # false rules change nothing; the first true one is the matched rule
        ([rule("no", "pricey", "false", 1), rule("yes", "mid", "true", 2)],
         ["mid", "free", "cheap", "pricey"], "yes"),
        # a channel appears once, at its first matching rule
        ([rule("r1", "mid", priority=1), rule("r2", "pricey", priority=2),
          rule("r3", "mid", priority=3)], ["mid", "pricey", "free", "cheap"], "r1"),
        # the SmartAIProxy samples
        ([rule("quota", "pricey", "day_tokens_used < daily_limit && hour_tokens_used < hour_limit"),
          rule("night", "mid", "time >= '00:00' && time <= '06:00'", 2)],
         ["pricey", "free", "cheap", "mid"], "quota"),
    ],
)  # fmt: skip
def test_rule_order(rules: list[CompiledRule], expected: list[str], matched: str | None) -> None:
    decision = run(CHANNELS, rules)
    assert order(decision) == expected
    assert decision.matched_rule == matched
    by_rule = {c.channel.name: c.rule for c in decision.candidates}
    for trace in decision.rules:
        if trace.matched:
            assert by_rule[trace.channel] == trace.rule


def test_each_rule_sees_its_own_channel() -> None:
    states = {"cheap": ChannelState(day_tokens_used=999), "mid": ChannelState(day_tokens_used=5)}
    channels = [ch("cheap", 1e-6, daily_limit=5000), ch("mid", 2e-6, daily_limit=10)]
    quota = "day_tokens_used < daily_limit and channel_name == '{}' and effective_price > 0"
    rules = [
        rule("cheap-quota", "cheap", quota.format("cheap"), 1),
        rule("mid-quota", "mid", quota.format("mid"), 2),
    ]
    decision = run(channels, rules, states)
    assert [(t.rule, t.matched) for t in decision.rules] == [
        ("cheap-quota", True),
        ("mid-quota", True),
    ]
    states["mid"] = ChannelState(day_tokens_used=10)  # limit 10 reached for rule, quota excludes
    decision = run(channels, rules, states)
    assert order(decision) == ["cheap"]
    assert decision.rules[1].error == "not evaluated: daily token quota used (10/10)"


def test_rules_for_excluded_or_unknown_channels_are_traced_not_evaluated() -> None:
    rules = [
        rule("to-open", "cheap", "true", 1),
        rule("to-ghost", "ghost", "true", 2),
        rule("broken", "mid", "time > max_tokens", 3),  # str > int: fails at run time
        rule("works", "pricey", "model == 'gpt-4o-mini'", 4),
    ]
    decision = run(CHANNELS, rules, {"cheap": ChannelState(circuit="open")})
    traces = {t.rule: (t.matched, t.error) for t in decision.rules}
    assert traces["to-open"] == (False, "not evaluated: circuit open")
    assert traces["to-ghost"] == (False, "not evaluated: does not exist")
    assert traces["broken"][0] is False and "TypeError" in (traces["broken"][1] or "")
    assert traces["works"] == (True, None)
    assert decision.matched_rule == "works"
    assert order(decision) == ["pricey", "free", "mid"]


# ----------------------------------------------------------------------------- variables
def test_rule_variables_cover_the_contract() -> None:
    channel = ch("x", 3e-6, priority=4, daily_limit=0, hour_limit=500,
                 discount_time=["00:00-06:00"], discount_price=1e-6)  # fmt: skip
    state = ChannelState(day_tokens_used=10, hour_tokens_used=5, day_requests_used=2)
    facts = RequestFacts("m", stream=True, api_key_name="k", prompt_tokens=7, max_tokens=99)
    at = datetime(2025, 3, 9, 20, 5, 30, tzinfo=UTC)  # Sunday UTC; Monday 04:05 in Shanghai
    v = rule_variables(facts, channel, state, at, ZoneInfo("Asia/Shanghai"))
    assert set(v) == VARIABLES
    assert v == {
        "model": "m",
        "stream": True,
        "api_key_name": "k",
        "prompt_tokens": 7,
        "max_tokens": 99,
        "time": "04:05",
        "time_of_day": "04:05",
        "hour": 4,
        "minute": 5,
        "weekday": 0,
        "channel_name": "x",
        "day_tokens_used": 10,
        "hour_tokens_used": 5,
        "day_requests_used": 2,
        "daily_limit": math.inf,
        "hour_limit": 500,
        "price_per_token": 3e-6,
        "effective_price": 1e-6,
        "discount_active": True,
        "priority": 4,
        "channel_status": "healthy",
    }
    disabled = ch("d", status="disabled")
    assert rule_variables(facts, disabled, state, at, UTC)["channel_status"] == "disabled"
    half = rule_variables(facts, channel, ChannelState(circuit="half_open"), at, UTC)
    assert half["channel_status"] == "half_open"
    assert half["discount_active"] is False and half["weekday"] == 6


def test_rule_set_and_unsorted_list_route_alike() -> None:
    from smartproxy.config import RuleConfig
    from smartproxy.routing.rules import compile_rules

    configs = [RuleConfig(name="late", channel="b", expression="true", priority=9),
               RuleConfig(name="early", channel="c", expression="hour >= 0", priority=1),
               RuleConfig(name="tie", channel="a", expression="day_tokens_used < 5", priority=1)]
    channels = [ch("a", 1e-6), ch("b", 2e-6), ch("c", 3e-6), ch("d", 0.0)]
    as_set = run(channels, list(compile_rules(configs)))
    unsorted = run(channels, [rule(c.name, c.channel, c.expression, c.priority) for c in configs])
    ordered = route(channels, compile_rules(configs), FACTS, {}, NOON, UTC)
    for decision in (as_set, unsorted, ordered):
        assert order(decision) == ["c", "a", "b", "d"]
        assert [t.rule for t in decision.rules] == ["early", "tie", "late"]
    # the same call again answers from the rules' remembered outcomes: nothing changes
    assert route(channels, compile_rules(configs), FACTS, {}, NOON, UTC) == ordered
    busy = {"a": ChannelState(day_tokens_used=7)}
    assert order(route(channels, compile_rules(configs), FACTS, busy, NOON, UTC)) == [
        "c", "b", "d", "a"]


# ----------------------------------------------------------------------------- without rules
def test_route_by_price_is_route_without_rules() -> None:
    """The rule-less fast path (ranked once per minute, then live state) decides exactly as
    ``route()`` over many random channel sets, states, reservations and minutes."""
    import random

    from smartproxy.localtime import MinuteClock
    from smartproxy.routing.router import rank_by_price, route_by_price

    rng = random.Random(7)
    tz = ZoneInfo("Asia/Shanghai")
    circuits = ["healthy", "healthy", "half_open", "open", "cooldown"]
    for _ in range(300):
        channels = []
        for i in range(rng.randint(1, 7)):
            kw: dict[str, Any] = {}
            if rng.random() < 0.3:
                kw["discount_price"] = rng.choice([0.0, 0.5, 1.0])
                kw["discount_time"] = [rng.choice(["00:00-08:00", "22:00-02:00", "12:00-12:01"])]
            if rng.random() < 0.4:
                kw["daily_limit"] = rng.choice([100, 1000])
            if rng.random() < 0.2:
                kw["hour_limit"] = 300
            if rng.random() < 0.2:
                kw["daily_request_limit"] = 3
            if rng.random() < 0.1:
                kw["status"] = "disabled"
            if rng.random() < 0.1:
                kw["type"] = "anthropic"
            channels.append(
                ch(f"c{i}", rng.choice([0.0, 0.0, 0.5, 1.0, 2.0]), rng.choice([0, 1, 5]), **kw)
            )
        states = {
            c.name: ChannelState(
                rng.randint(0, 1200), rng.randint(0, 400), rng.randint(0, 4), rng.choice(circuits)
            )
            for c in channels
        }
        at = datetime(2026, 11, 26, rng.randint(0, 23), rng.randint(0, 59), tzinfo=UTC)
        reserve = rng.choice([0, 10, 500])
        facts = rng.choice([FACTS, EMBEDDINGS])
        expected = route(channels, [], facts, states, at, tz, reserve_tokens=reserve)
        ranked = rank_by_price(channels, MinuteClock(tz).at(at).hhmm)
        limited = {
            c.name: states[c.name]
            for c in channels
            if c.daily_limit or c.hour_limit or c.daily_request_limit
        }
        got = route_by_price(
            ranked,
            FACTS.model,
            limited,
            lambda name, _at, states=states: states[name].circuit,
            at,
            reserve_tokens=reserve,
            path=facts.path,
        )
        assert got == expected
