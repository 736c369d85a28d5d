"""Per-key token buckets (requests and, optionally, LLM tokens) and the auth-failure penalty.

A bucket holds at most ``burst`` requests and refills at ``requests_per_minute / 60`` per second,
so a key may send ``burst`` at once and then its steady rate. Buckets are keyed by the key's *name*
and live outside the config snapshot: a reload that changes a key's limits adjusts its bucket in
place instead of handing it a fresh, full one.

These are in-process and meant for one event loop (no locks: nothing here awaits). The ``limit``
reported in the OpenAI-style headers is the bucket's capacity (``burst``) so that ``remaining``
counts down from it and ``reset`` is the time until it is full again.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_SWEEP_EVERY = 1024  # checks between sweeps, at least; scaled with the number of buckets


def format_duration(seconds: float) -> str:
    """OpenAI's reset format (Go durations): ``250ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h0m0s``."""
    ms = math.ceil(round(max(seconds, 0.0) * 1000, 6))  # round up: waiting that long is enough
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}" if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


_HEADER_NAMES = {
    kind: tuple(f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset"))
    for kind in ("requests", "tokens")
}


@dataclass(slots=True)  # not frozen: built on every check, and a frozen __init__ costs 4x
class RateDecision:
    """The outcome of one check; ``limit == 0`` means unlimited (no headers are sent then).
    Treat it as read-only (the shared unlimited decisions are module constants)."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float  # until the bucket is full again
    retry_after: float  # until this request would pass; 0 when allowed
    kind: str = "requests"  # "requests" or "tokens": the suffix of the header names

    def headers(self) -> dict[str, str]:
        if self.limit == 0:
            return {}
        limit, remaining, reset = _HEADER_NAMES[self.kind]  # built once, not per request
        out = {
            limit: str(self.limit),
            remaining: str(self.remaining),
            reset: format_duration(self.reset_seconds),
        }
        if not self.allowed:
            # Whole seconds, rounded up (minus float noise), never 0 (0 invites a hot retry loop).
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after - 1e-9)))
        return out


_UNLIMITED = {kind: RateDecision(True, 0, 0, 0.0, 0.0, kind) for kind in ("requests", "tokens")}


class _Bucket:
    __slots__ = ("capacity", "rate", "level", "stamp")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate  # per second
        self.level = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def full_at(self, now: float) -> bool:
        return self.level + (now - self.stamp) * self.rate >= self.capacity


class RateLimiter:
    """Token buckets per key name: ``check`` for requests; ``check_tokens``/``add_tokens`` for
    an optional tokens-per-minute limit."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._since_sweep = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, kind: str, name: str, capacity: float, rate: float, now: float) -> _Bucket:
        self._since_sweep += 1
        if self._since_sweep >= max(_SWEEP_EVERY, len(self._buckets)):
            self._sweep(now)
        bucket = self._buckets.get((kind, name))
        if bucket is None:
            bucket = self._buckets[(kind, name)] = _Bucket(capacity, rate, now)
            return bucket
        bucket.refill(now)  # at the old rate up to now, then the new settings apply
        if bucket.capacity != capacity or bucket.rate != rate:
            bucket.capacity, bucket.rate = capacity, rate
            bucket.level = min(bucket.level, capacity)
        return bucket

    def _sweep(self, now: float) -> None:
        # A full bucket is indistinguishable from a new one, so dropping it loses nothing.
        # Runs after at least len(buckets) checks: O(1) amortised per check.
        self._since_sweep = 0
        for key in [k for k, b in self._buckets.items() if b.full_at(now)]:
            del self._buckets[key]

    def _forget(self, kind: str, name: str) -> None:
        self._buckets.pop((kind, name), None)

    def check(
        self, key_name: str, requests_per_minute: float, burst: int, cost: float = 1.0
    ) -> RateDecision:
        """Take ``cost`` requests from the key's bucket if it holds them; rpm 0 = unlimited."""
        if requests_per_minute <= 0:
            self._forget("requests", key_name)
            return _UNLIMITED["requests"]
        capacity = float(max(1, burst))  # burst 0 would refuse every request forever
        now = self._clock()
        bucket = self._bucket("requests", key_name, capacity, requests_per_minute / 60.0, now)
        allowed = bucket.level >= cost
        if allowed:
            bucket.level -= cost
        return self._decision(bucket, allowed, cost, "requests")

    def check_tokens(self, key_name: str, tokens_per_minute: int, tokens: int) -> RateDecision:
        """Is there room for a request estimated at ``tokens``? Takes nothing (see ``add_tokens``).

        The estimate is capped at the capacity so a prompt larger than a minute's budget still
        passes once the bucket is full, instead of never.
        """
        if tokens_per_minute <= 0:
            self._forget("tokens", key_name)
            return _UNLIMITED["tokens"]
        now = self._clock()
        bucket = self._bucket(
            "tokens", key_name, float(tokens_per_minute), tokens_per_minute / 60.0, now
        )
        needed = min(float(tokens), bucket.capacity)
        return self._decision(bucket, bucket.level >= needed, needed, "tokens")

    def add_tokens(self, key_name: str, tokens_per_minute: int, tokens: int) -> RateDecision:
        """Charge the tokens a request actually used; the bucket may go into debt, which delays
        the key's next requests until it is repaid."""
        if tokens_per_minute <= 0:
            self._forget("tokens", key_name)
            return _UNLIMITED["tokens"]
        now = self._clock()
        bucket = self._bucket(
            "tokens", key_name, float(tokens_per_minute), tokens_per_minute / 60.0, now
        )
        bucket.level -= max(0, tokens)
        return self._decision(bucket, True, 0.0, "tokens")

    @staticmethod
    def _decision(bucket: _Bucket, allowed: bool, cost: float, kind: str) -> RateDecision:
        level = bucket.level
        return RateDecision(
            allowed=allowed,
            limit=int(bucket.capacity),
            remaining=max(0, int(level)),
            reset_seconds=(bucket.capacity - level) / bucket.rate,
            retry_after=0.0 if allowed else (cost - level) / bucket.rate,
            kind=kind,
        )


class FailurePenalty:
    """A small, bounded delay for addresses that keep failing authentication.

    A failure costs nothing while the address has at most ``free_failures`` earlier ones (typos
    happen; with the default 3, failures 1-4 are free); after that each failure doubles the delay
    from ``base_delay`` up to ``max_delay``. ``quiet_period`` seconds without a failure
    forgets the address. At most ``max_addresses`` are remembered (least recently failing evicted),
    so a flood of addresses costs bounded memory; the delay is only ever applied to the failing
    request itself, so other clients are never slowed. ``sleep`` is how ``punish`` waits (tests
    inject one that records instead of sleeping).
    """

    def __init__(
        self,
        *,
        free_failures: int = 3,
        base_delay: float = 0.1,
        max_delay: float = 2.0,
        quiet_period: float = 60.0,
        max_addresses: int = 10_000,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if max_addresses < 1:
            raise ValueError("max_addresses must be at least 1")
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.quiet_period = quiet_period
        self.max_addresses = max_addresses
        self._clock = clock
        self._sleep = sleep
        self._seen: OrderedDict[str, tuple[int, float]] = OrderedDict()  # addr -> (count, last)

    def __len__(self) -> int:
        return len(self._seen)

    def _count(self, address: str, now: float) -> int:
        entry = self._seen.get(address)
        if entry is None:
            return 0
        count, last = entry
        if now - last >= self.quiet_period:
            del self._seen[address]
            return 0
        return count

    def delay(self, address: str) -> float:
        """Seconds to wait before answering this address (0 for well-behaved clients)."""
        extra = self._count(address, self._clock()) - self.free_failures
        if extra <= 0:
            return 0.0
        return min(self.max_delay, self.base_delay * 2.0 ** min(extra - 1, 32))

    def record_failure(self, address: str) -> None:
        now = self._clock()
        count = self._count(address, now)
        self._seen[address] = (count + 1, now)
        self._seen.move_to_end(address)
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)

    async def punish(self, address: str) -> float:
        """Count one more failure for ``address`` and hold this request for its delay (seconds)."""
        delay = self.delay(address)
        self.record_failure(address)
        if delay > 0:
            await self._sleep(delay)
        return delay

    def record_success(self, address: str) -> None:
        if self._seen:  # usually nobody is failing: skip the lookup
            self._seen.pop(address, None)
