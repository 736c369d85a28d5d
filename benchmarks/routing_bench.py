"""Micro-benchmark of the routing core: µs per ``route()`` call and per rule evaluation.

Run: ``python benchmarks/routing_bench.py [--number N] [--repeat R]``

Builds 10 channels (free with quotas, paid, one discounted, one with an open circuit, one that
serves other models) and 10 rules of the kinds SmartAIProxy configs use, then times with
``timeit`` and reports the best of several runs (the least disturbed by the rest of the machine).
No pytest, no I/O: this is the cost routing adds to every proxied request.
"""

from __future__ import annotations

import argparse
import platform
import sys
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smartproxy.config import ChannelConfig, RuleConfig, TimeWindow, parse_hhmm  # noqa: E402
from smartproxy.routing.router import (  # noqa: E402
    ChannelState,
    RequestFacts,
    route,
    rule_variables,
)
from smartproxy.routing.rules import compile_rules  # noqa: E402

TZ = ZoneInfo("Asia/Shanghai")
AT = datetime(2025, 3, 10, 14, 30, tzinfo=UTC)  # 22:30 in Shanghai
FACTS = RequestFacts(model="gpt-4o-mini", stream=True, api_key_name="team-a", prompt_tokens=350)

RULE_EXPRESSIONS = [
    "day_tokens_used < daily_limit && hour_tokens_used < hour_limit",
    "time >= '00:00' && time <= '06:00'",
    "time_of_day >= '22:00' AND channel_status == 'healthy'",
    "model in ('gpt-4o', 'gpt-4o-mini') and not stream",
    "prompt_tokens + 1024 < min(daily_limit - day_tokens_used, hour_limit - hour_tokens_used)",
    "discount_active && effective_price < price_per_token",
    "api_key_name == 'team-b' || weekday >= 5",
    "day_requests_used < 1000 and (9 <= hour < 18 if weekday < 5 else true)",
    "effective_price * 1000000 <= 0.5",
    "true",
]


def build_channels() -> list[ChannelConfig]:
    night = (TimeWindow(parse_hhmm("22:00"), parse_hhmm("02:00")),)
    out = []
    for i in range(10):
        out.append(
            ChannelConfig(
                name=f"ch{i}",
                type="openai",
                endpoint=f"https://up{i}.test/v1",
                models=("gpt-4o-mini", "gpt-4o") if i != 7 else ("llama-3",),
                price_per_token=0.0 if i < 3 else i * 1e-7,
                daily_limit=500_000 if i < 3 else 0,
                hour_limit=50_000 if i < 3 else 0,
                discount_time=night if i == 5 else (),
                discount_price=1e-8 if i == 5 else None,
                priority=i % 4,
            )
        )
    return out


def build_states() -> dict[str, ChannelState]:
    states = {f"ch{i}": ChannelState(day_tokens_used=i * 40_000, hour_tokens_used=i * 9_000)
              for i in range(10)}  # fmt: skip
    states["ch4"] = ChannelState(circuit="open")
    return states


def best_us(func: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the best is reported")
    args = parser.parse_args()

    channels = build_channels()
    states = build_states()
    rules = compile_rules(
        [
            RuleConfig(name=f"r{i}", channel=f"ch{(i * 3) % 10}", expression=e, priority=i)
            for i, e in enumerate(RULE_EXPRESSIONS)
        ]  # fmt: skip
    )
    decision = route(channels, rules, FACTS, states, AT, TZ, reserve_tokens=1374)

    def timed(func: Callable[..., object], *call_args: object, **kwargs: object) -> float:
        return best_us(partial(func, *call_args, **kwargs), args.number, args.repeat)

    rows: list[tuple[str, float]] = []
    # each rule with its own channel's variables, as route() evaluates it
    by_name = {ch.name: ch for ch in channels}
    for rule in rules:
        variables = rule_variables(FACTS, by_name[rule.channel], states[rule.channel], AT, TZ)
        rows.append((f"rule {rule.name}: {rule.expression[:48]}", timed(rule.evaluate, variables)))
    mean = sum(us for _, us in rows) / len(rows)
    rows.append(("rule evaluation, mean of the 10 rules", mean))
    rows.append(("rule_variables(), one channel", timed(rule_variables, FACTS, channels[0],
                                                         states["ch0"], AT, TZ)))  # fmt: skip
    for label, rule_set in (("no rules", ()), ("10 rules", rules)):
        us = timed(route, channels, rule_set, FACTS, states, AT, TZ, reserve_tokens=1374)
        rows.append((f"route(), 10 channels, {label}", us))

    print(f"Python {platform.python_version()} on {platform.machine()}, "
          f"best of {args.repeat} runs x {args.number} calls")  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print(f"{'what':<{width}}  {'µs/call':>8}")
    print(f"{'-' * width}  {'-' * 8}")
    for name, us in rows:
        print(f"{name:<{width}}  {us:8.2f}")
    evaluated = sum(1 for t in decision.rules if not (t.error or "").startswith("not evaluated"))
    print(
        f"\nroute() with rules: {len(decision.candidates)} candidates "
        f"({', '.join(c.channel.name for c in decision.candidates)}), "
        f"matched rule {decision.matched_rule!r}, {evaluated}/{len(rules)} rules evaluated, "
        f"{len(decision.excluded)} channels excluded"
    )


if __name__ == "__main__":
    main()
