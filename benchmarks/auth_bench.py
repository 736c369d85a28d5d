"""Per-request cost of gateway-key authentication plus rate limiting (issue [4], must-show 5).

Builds 1,000 keys (half configured as ``sha256:<hex>``), then times 10,000 requests spread over
them, at two levels:

- core: ``extract_key`` on aiohttp-style headers + ``KeyRing.authenticate`` + ``RateLimiter.check``;
- aiohttp: what the proxy handler runs before it reads the body, on real ``aiohttp.web.Request``
  objects (``make_mocked_request``, built up front): ``authenticate()`` + ``rate_limit()`` +
  ``budget()``, once with plain keys and once with every key also carrying ``tokens_per_minute``
  and ``daily_budget_usd`` (then ``limit_tokens()`` runs too).

Run: ``python benchmarks/auth_bench.py`` (optionally ``--requests N --keys N --repeat N``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout, uninstalled

from smartproxy.api.gate import authenticate, budget, limit_tokens, rate_limit  # noqa: E402
from smartproxy.api.proxy import create_proxy_app  # noqa: E402
from smartproxy.app import create_app  # noqa: E402
from smartproxy.config import ApiKeyConfig, parse_config  # noqa: E402
from smartproxy.security.apikeys import KeyRing, extract_key  # noqa: E402
from smartproxy.security.ratelimit import RateLimiter  # noqa: E402
from smartproxy.state import GATEWAY  # noqa: E402


def build(n_keys: int) -> tuple[KeyRing, list[str]]:
    configs, plain = [], []
    for i in range(n_keys):
        key = f"sk-gw-bench-{i:06d}-{random.getrandbits(64):016x}"
        plain.append(key)
        stored = f"sha256:{hashlib.sha256(key.encode()).hexdigest()}" if i % 2 else key
        configs.append(
            ApiKeyConfig(name=f"app-{i}", key=stored, requests_per_minute=6000, burst=100)
        )
    return KeyRing(configs), plain


def run(n_requests: int, n_keys: int) -> float:
    ring, plain = build(n_keys)
    limiter = RateLimiter()
    rng = random.Random(7)
    # Headers built up front: the benchmark measures auth + limit, not header construction.
    requests = [
        CIMultiDictProxy(
            CIMultiDict(
                {
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {plain[rng.randrange(n_keys)]}",
                }
            )
        )
        for _ in range(n_requests)
    ]
    allowed = 0
    gc.collect()
    gc.disable()  # timed: the per-request work, not a collection of the set-up objects
    start = time.perf_counter()
    for headers in requests:
        key = extract_key(headers)
        assert key is not None
        principal = ring.authenticate(key)
        assert principal is not None
        cfg = principal.key
        decision = limiter.check(principal.name, cfg.requests_per_minute or 600.0, cfg.burst or 60)
        allowed += decision.allowed
    elapsed = time.perf_counter() - start
    gc.enable()
    assert allowed == n_requests, f"only {allowed} of {n_requests} allowed"
    return elapsed / n_requests * 1e6


def gateway_config(plain: list[str], with_options: bool) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for i, key in enumerate(plain):
        stored = f"sha256:{hashlib.sha256(key.encode()).hexdigest()}" if i % 2 else key
        entry: dict[str, Any] = {"key": stored, "requests_per_minute": 6000, "burst": 100}
        if with_options:
            entry.update(tokens_per_minute=10_000_000, daily_budget_usd=100.0)
        keys[f"app-{i}"] = entry
    return {
        "channels": [],
        "storage": {"backend": "memory"},
        "security": {"auth": {"api_keys": keys, "jwt": {"secret": "x" * 32}}},
    }


async def run_aiohttp(n_requests: int, n_keys: int, with_options: bool) -> float:
    """µs per request for authenticate() + rate_limit() + budget() (+ limit_tokens()) on real
    aiohttp requests, as the proxy handler calls them."""
    _, plain = build(n_keys)
    gw = create_app(parse_config(gateway_config(plain, with_options)))[GATEWAY]
    proxy_app = create_proxy_app(gw)
    snap = gw.snapshot
    rng = random.Random(7)
    transport = mock.Mock()
    transport.get_extra_info.return_value = ("10.1.2.3", 40000)
    requests = [
        make_mocked_request(
            "POST",
            "/v1/chat/completions",
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {plain[rng.randrange(n_keys)]}",
            },
            transport=transport,
            app=proxy_app,
        )
        for _ in range(n_requests)
    ]
    gc.collect()
    gc.disable()  # 10,000 mocked requests make a large heap; time the work, not its collection
    start = time.perf_counter()
    for request in requests:
        principal = await authenticate(request, gw, snap)
        rate_limit(request, gw, snap, principal)
        budget(request, gw, snap, principal)
        limit_tokens(request, gw, principal, 1100)
    elapsed = time.perf_counter() - start
    gc.enable()
    return elapsed / n_requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    results = [run(args.requests, args.keys) for _ in range(args.repeat)]
    print(
        f"auth + rate limit: {args.requests:,} requests over {args.keys:,} keys "
        f"(half sha256-configured), {args.repeat} runs"
    )
    print(
        f"  core (extract + keyring + bucket): median {statistics.median(results):.2f} µs/request,"
        f" best {min(results):.2f}"
    )
    for with_options, label in ((False, "plain keys"), (True, "+ tokens_per_minute + budget")):
        timed = [
            asyncio.run(run_aiohttp(args.requests, args.keys, with_options))
            for _ in range(args.repeat)
        ]
        print(
            f"  aiohttp authenticate()+rate_limit()+budget()+limit_tokens(), {label}: "
            f"median {statistics.median(timed):.2f} µs/request, best {min(timed):.2f}"
        )


if __name__ == "__main__":
    main()
