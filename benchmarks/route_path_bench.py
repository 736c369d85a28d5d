"""Micro-benchmark of routing on the proxy path: µs per ``smartproxy.api.proxy.decide()``.

Run: ``python benchmarks/route_path_bench.py [--number N] [--repeat R] [--backend memory|sqlite]``

``decide()`` is what every proxied request runs between parsing its body and dispatching it:
read the clock, ask the usage store for every channel's counters (with in-flight reservations),
peek at every breaker, then ``route()`` with the snapshot's compiled rules. This builds a real
``Gateway`` (``create_app`` with the config below: the 10 channels and 10 rules of
``routing_bench.py``, written as a config file would have them), puts usage in the store and
opens one breaker, then times ``decide()`` and its two parts on one event loop, reporting the
best of several runs (CPU time of this process). No network, no pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from routing_bench import RULE_EXPRESSIONS  # noqa: E402

from smartproxy.api.proxy import decide  # noqa: E402
from smartproxy.app import create_app  # noqa: E402
from smartproxy.config import parse_config  # noqa: E402
from smartproxy.routing.router import ChannelState, RequestFacts, route  # noqa: E402
from smartproxy.state import GATEWAY, Gateway  # noqa: E402
from smartproxy.storage.base import RequestRecord  # noqa: E402

AT = datetime(2025, 3, 10, 14, 30, tzinfo=UTC)  # 22:30 in Shanghai: channel ch5's discount is on
FACTS = RequestFacts(model="gpt-4o-mini", stream=True, api_key_name="team-a", prompt_tokens=350,
                     max_tokens=1024)  # fmt: skip
RESERVE = FACTS.prompt_tokens + (FACTS.max_tokens or 1024)


def config(backend: str, path: str) -> dict[str, Any]:
    channels = []
    for i in range(10):
        ch: dict[str, Any] = {
            "name": f"ch{i}", "type": "openai", "endpoint": f"https://up{i}.test/v1",
            "api_key": f"sk-bench-{i}",
            "models": ["gpt-4o-mini", "gpt-4o"] if i != 7 else ["llama-3"],
            "price_per_token": 0.0 if i < 3 else i * 1e-7, "priority": i % 4,
        }  # fmt: skip
        if i < 3:
            ch.update(daily_limit=500_000, hour_limit=50_000)
        if i == 5:
            ch.update(discount_time=["22:00-02:00"], discount_price=1e-8)
        channels.append(ch)
    rules = [{"name": f"r{i}", "channel": f"ch{(i * 3) % 10}", "expression": e, "priority": i}
             for i, e in enumerate(RULE_EXPRESSIONS)]  # fmt: skip
    return {
        "server": {"timezone": "Asia/Shanghai"},
        "channels": channels,
        "rules": rules,
        "security": {
            "auth": {"api_keys": {"team-a": "sk-bench-team-a"}, "jwt": {"secret": "x" * 32}}
        },
        "storage": {"backend": backend, "path": path},
    }


async def fill(gw: Gateway) -> None:
    """Usage on every channel (as routing_bench's states) and ch4's breaker open."""
    for i in range(10):
        for _ in range(3):
            tokens = i * 40_000 // 3
            record = RequestRecord(AT.timestamp(), "req", "team-a", f"ch{i}", "gpt-4o-mini",
                                   tokens // 2, tokens - tokens // 2, 0.0, 200, 1.0)  # fmt: skip
            await gw.store.settle(None, record, AT)
    health = gw.health.get("ch4", 1, 30)
    health.failure(health.begin_attempt())


async def best_us(call: Callable[[], Awaitable[object]], number: int, repeat: int) -> float:
    """Best of ``repeat`` runs, in this process's CPU time (other load on the machine counts
    less than with wall-clock time; there is no I/O to wait for here)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(number):
            await call()
        best = min(best, time.process_time() - t0)
    return best / number * 1e6


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config(config(args.backend, str(Path(tmp) / "bench.db")))
        app = create_app(cfg, clock=lambda: AT)
        gw = app[GATEWAY]
        await gw.store.start()
        try:
            await fill(gw)
            snap = gw.snapshot
            states = await gw.channel_states(snap, AT)
            channels, rules, tz = snap.config.channels, snap.rules, snap.tz

            def forget() -> None:  # rules remember outcomes by input (since the memo was added)
                for rule in rules:
                    getattr(rule, "forget", lambda: None)()

            # Usage moves on with every request, so rules reading it see new inputs each time;
            # rules reading only the request, the clock or prices see the same ones.
            moving = [
                {name: ChannelState(s.day_tokens_used + k, s.hour_tokens_used + k,
                                    s.day_requests_used + k, s.circuit)
                 for name, s in states.items()}
                for k in range(997)
            ]  # fmt: skip
            turn = iter(range(10**9))

            async def no_rules() -> object:
                return route(channels, (), FACTS, states, AT, tz, reserve_tokens=1374)

            async def cold() -> object:
                forget()
                return route(channels, rules, FACTS, states, AT, tz, reserve_tokens=1374)

            async def usage_moving() -> object:
                live = moving[next(turn) % len(moving)]
                return route(channels, rules, FACTS, live, AT, tz, reserve_tokens=1374)

            async def same_again() -> object:
                return route(channels, rules, FACTS, states, AT, tz, reserve_tokens=1374)

            async def decide_cold() -> object:
                forget()
                return await decide(gw, snap, FACTS, RESERVE)

            cases: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("gw.channel_states() (usage + breakers)", lambda: gw.channel_states(snap, AT)),
                ("route(), 10 channels, no rules", no_rules),
                ("route(), 10 rules, every rule evaluated", cold),
                ("route(), 10 rules, usage changing per call", usage_moving),
                ("route(), 10 rules, same inputs again", same_again),
                ("decide(), every rule evaluated", decide_cold),
                ("decide(), same inputs again", lambda: decide(gw, snap, FACTS, RESERVE)),
            ]
            rows = [(name, await best_us(call, args.number, args.repeat)) for name, call in cases]
            decision = await decide(gw, snap, FACTS, RESERVE)
        finally:
            await gw.store.close()

    print(f"Python {platform.python_version()} on {platform.machine()}, backend {args.backend}, "
          f"best of {args.repeat} runs x {args.number} calls")  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print(f"{'what':<{width}}  {'µs/call':>8}")
    print(f"{'-' * width}  {'-' * 8}")
    for name, us in rows:
        print(f"{name:<{width}}  {us:8.2f}")
    names = ", ".join(c.channel.name for c in decision.candidates)
    left_out = ", ".join(f"{e.channel} ({e.reason})" for e in decision.excluded)
    print(f"\ndecide(): {len(decision.candidates)} candidates ({names}), "
          f"matched rule {decision.matched_rule!r}, excluded {left_out}")  # fmt: skip


def main() -> None:
    logging.disable(logging.WARNING)  # "circuit breaker ch4: closed -> open" is set up on purpose
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the best is reported")
    parser.add_argument("--backend", choices=("memory", "sqlite"), default="memory")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
