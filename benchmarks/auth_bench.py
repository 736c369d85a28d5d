"""Per-request cost of gateway-key authentication plus rate limiting (issue [4], must-show 5).

Builds 1,000 keys (half configured as ``sha256:<hex>``), then times 10,000 requests spread over
them: ``extract_key`` on aiohttp-style headers + ``KeyRing.authenticate`` + ``RateLimiter.check``.
Run: ``python benchmarks/auth_bench.py`` (optionally ``--requests N --keys N --repeat N``).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import time
from pathlib import Path

from multidict import CIMultiDict, CIMultiDictProxy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout, uninstalled

from smartproxy.config import ApiKeyConfig  # noqa: E402
from smartproxy.security.apikeys import KeyRing, extract_key  # noqa: E402
from smartproxy.security.ratelimit import RateLimiter  # noqa: E402


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
    assert allowed == n_requests, f"only {allowed} of {n_requests} allowed"
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
        f"  median {statistics.median(results):.2f} µs/request, best {min(results):.2f} µs/request"
    )


if __name__ == "__main__":
    main()
