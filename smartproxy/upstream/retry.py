"""Retry policy (contract §5): which upstream answers fail over, and how long to wait in between.

The delay curve comes from the ``backoff`` package: ``backoff.expo(base=2, factor=base_delay,
max_value=max_delay)`` jittered by ``backoff.full_jitter``, i.e. after failed attempt ``n``
(0-based) the loop waits ``uniform(0, min(max_delay, base_delay * 2**n))`` -- the "full jitter" of
the AWS architecture blog, so that clients retrying together do not stampede a recovering upstream.

Why not backoff's ``on_exception`` decorator around the failover loop: it re-invokes the *same*
call, while each of our retries moves down the candidate list, a stream must not be retried after
its first byte, and it calls ``asyncio.sleep`` itself, so tests could not inject the sleep. We
take its generators and jitter and keep the loop explicit::

    policy = RetryPolicy(snapshot.config.retry)
    for index, channel in enumerate(attempt_plan):   # at most policy.max_attempts entries
        if index:
            await policy.wait(index - 1)
        ...attempt; break on success or a non-retryable status...
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from itertools import islice
from typing import Final

import backoff

from smartproxy.config import RetryConfig

Sleep = Callable[[float], Awaitable[object]]
Jitter = Callable[[float], float]

# Statuses that fail over to the next candidate (contract §5). 401/403 from upstream mean the
# channel's key is broken, not the client's: another channel may well answer. 529 is Anthropic's
# "overloaded" (an outage of that channel, like 503).
RETRYABLE_STATUSES: Final = frozenset({401, 403, 429, 500, 502, 503, 504, 529})
# Of those, the ones that count against the channel's circuit breaker (an outage). 429 does not
# (it cools the channel down instead), nor do 401/403 (a broken key is not an outage: the attempt
# is released without a verdict, as the failover loop does).
BREAKER_FAILURE_STATUSES: Final = frozenset({500, 502, 503, 504, 529})
MAX_RETRY_AFTER: Final = 3600.0  # a hostile or broken Retry-After must not bench a channel for days


def is_retryable_status(status: int) -> bool:
    """True for answers that fail over; other 4xx are the client's fault, 2xx/3xx are answers."""
    return status in RETRYABLE_STATUSES


def is_breaker_failure_status(status: int) -> bool:
    """True for answers that count as a breaker failure: 500, 502-504, 529 (not 429, 401, 403)."""
    return status in BREAKER_FAILURE_STATUSES


def parse_retry_after(
    value: str | None, *, now: datetime | None = None, cap: float = MAX_RETRY_AFTER
) -> float | None:
    """Retry-After as seconds (delay-seconds or HTTP-date), within [0, cap]; None if absent/bad."""
    text = (value or "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 HTTP-dates are always GMT
            when = when.replace(tzinfo=UTC)
        seconds = max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)
    else:
        if not math.isfinite(seconds) or seconds < 0:
            return None
    return min(seconds, cap)


class RetryPolicy:
    """Attempt budget and backoff delays from ``RetryConfig``; jitter and sleep are injectable."""

    __slots__ = ("max_attempts", "base_delay", "max_delay", "_jitter", "_sleep", "_curve")

    def __init__(
        self,
        config: RetryConfig,
        *,
        jitter: Jitter = backoff.full_jitter,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if config.max_attempts < 1:
            raise ValueError(f"retry.max_attempts must be at least 1, got {config.max_attempts}")
        for field, value in (
            ("base_delay_ms", config.base_delay_ms),
            ("max_delay_ms", config.max_delay_ms),
        ):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"retry.{field} must be a finite number >= 0, got {value}")
        self.max_attempts = config.max_attempts
        self.base_delay = config.base_delay_ms / 1000.0
        self.max_delay = config.max_delay_ms / 1000.0
        self._jitter = jitter
        self._sleep = sleep
        # Only max_attempts - 1 waits can ever happen in one request: compute them once.
        self._curve = tuple(islice(self._expo(), max(self.max_attempts - 1, 0)))

    def _expo(self) -> Iterator[float]:
        gen = backoff.expo(base=2, factor=self.base_delay, max_value=self.max_delay)
        next(gen)  # backoff's generators yield once before the first value (its decorators prime)
        return gen

    def capped_delay(self, attempt_index: int) -> float:
        """The un-jittered wait after failed attempt ``attempt_index``: min(max, base * 2**n)."""
        if attempt_index < 0:
            raise ValueError(f"attempt_index must be >= 0, got {attempt_index}")
        if attempt_index < len(self._curve):
            return self._curve[attempt_index]
        return next(islice(self._expo(), attempt_index, None))

    def next_delay(self, attempt_index: int) -> float:
        """Seconds to wait after failed attempt ``attempt_index`` (0-based), jitter applied."""
        ceiling = self.capped_delay(attempt_index)
        # Clamped so that an injected jitter cannot break the max_delay promise or go negative.
        return min(max(self._jitter(ceiling), 0.0), ceiling)

    def delays(self, attempts: int | None = None) -> list[float]:
        """The waits between ``attempts`` attempts (default max_attempts), jittered."""
        count = self.max_attempts if attempts is None else attempts
        return [self.next_delay(i) for i in range(max(count - 1, 0))]

    async def wait(self, attempt_index: int) -> float:
        """Sleep the backoff after failed attempt ``attempt_index``; returns the seconds slept."""
        delay = self.next_delay(attempt_index)
        await self._sleep(delay)
        return delay
