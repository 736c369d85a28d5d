"""Per-channel health: a ``ChannelBreaker`` plus a 429 cool-down (``ChannelHealth``), and
``HealthBook``, every channel's health by name. Both are re-exported by ``breaker``.

Use: ``permit = health.begin_attempt()`` (None: open, trial in flight, or cooling down), then
one of ``health.success(permit)`` (2xx, or a 4xx the client caused: the channel answered),
``failure(permit, exc)`` (5xx, timeout, connection error) or ``rate_limited(retry_after, default,
permit)`` (429), and ``release(permit)`` in a ``finally`` (a no-op once an outcome was reported).
A 429 is neither failure nor success (the run of consecutive failures neither grows nor resets); a
trial that gets one ends undecided, and the first attempt after the cool-down is the next trial.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Set
from datetime import datetime, timedelta
from typing import Final, Literal

from smartproxy.upstream.breaker import (
    ChannelBreaker,
    Clock,
    Permit,
    StateListener,
    StateName,
    utc_now,
)
from smartproxy.upstream.retry import MAX_RETRY_AFTER

# The name these records had before the move (log configs and tests select it).
log = logging.getLogger("smartproxy.upstream.breaker")

HealthStatus = Literal["healthy", "half_open", "open", "cooldown"]

_NUMERIC: Final[dict[StateName, int]] = {"closed": 0, "half_open": 1, "open": 2}


class ChannelHealth:
    """One channel's breaker and 429 cool-down; ``permit=None`` reports without a ticket."""

    __slots__ = ("name", "breaker", "cooldown_until", "_clock")

    def __init__(
        self,
        name: str,
        fail_max: int = 5,
        reset_timeout: float = 30.0,
        *,
        clock: Clock = utc_now,
        on_state_change: StateListener | None = None,
    ) -> None:
        self.name = name
        self._clock = clock
        self.breaker = ChannelBreaker(
            fail_max, reset_timeout, clock=clock, name=name, on_state_change=on_state_change
        )
        self.cooldown_until: datetime | None = None

    def cooling_down(self, now: datetime | None = None) -> bool:
        return self.cooldown_until is not None and (now or self._clock()) < self.cooldown_until

    def status(self, now: datetime | None = None) -> HealthStatus:
        """healthy | half_open | open | cooldown (an open circuit outranks a cool-down)."""
        if self.cooldown_until is None and self.breaker.closed:
            return "healthy"  # the usual answer, asked for every request: no clock, no lookups
        now = now or self._clock()
        if (state := self.breaker.effective_state(now)) == "open":
            return "open"
        if self.cooling_down(now):
            return "cooldown"
        return "healthy" if state == "closed" else "half_open"

    def available(self, now: datetime | None = None) -> bool:
        """Would begin_attempt() succeed now? For the router's candidate filter; changes nothing."""
        return not self.cooling_down(now) and self.breaker.available(now)

    def begin_attempt(self) -> Permit | None:
        if self.cooldown_until is not None and self.cooling_down():
            return None
        return self.breaker.acquire()

    def cool_down(self, seconds: float) -> None:
        """Bench the channel for ``seconds`` (bounded); never shortens a running cool-down."""
        seconds = min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else 0.0
        until = self._clock() + timedelta(seconds=seconds)
        if self.cooldown_until is None or until > self.cooldown_until:
            self.cooldown_until = until

    def success(self, permit: Permit | None = None) -> None:
        self.breaker.record_success(permit)

    def failure(self, permit: Permit | None = None, exc: Exception | None = None) -> None:
        self.breaker.record_failure(permit, exc)

    def release(self, permit: Permit | None = None) -> None:
        self.breaker.release(permit)

    abandon = release  # the failover loop's name for it

    def rate_limited(
        self, retry_after: float | None, default: float, permit: Permit | None = None
    ) -> None:
        """429: cool down for Retry-After or ``default``; not a breaker failure; trial undecided."""
        self.cool_down(default if retry_after is None else retry_after)
        self.breaker.release(permit)


class HealthBook:
    """Every channel's health by name; outlives config snapshots so reloads keep breaker state."""

    def __init__(self, *, clock: Clock = utc_now, on_state_change: StateListener | None = None):
        self._clock = clock
        self._listener = on_state_change
        self._entries: dict[str, ChannelHealth] = {}

    def get(self, name: str, fail_max: int, reset_timeout: float) -> ChannelHealth:
        health = self._entries.get(name)
        if health is None:
            health = self._entries[name] = ChannelHealth(
                name, fail_max, reset_timeout, clock=self._clock, on_state_change=self._changed
            )
        elif health.breaker.params != (fail_max, reset_timeout):
            health.breaker.configure(fail_max, reset_timeout)
        return health

    def peek(self, name: str, now: datetime | None = None) -> HealthStatus:
        """A channel's status; one never used yet is "healthy". Creates nothing."""
        health = self._entries.get(name)
        return "healthy" if health is None else health.status(now)

    def detail(self, name: str, now: datetime | None = None) -> tuple[StateName, datetime | None]:
        """(breaker state, cool-down end if cooling down) of a channel, for the admin status."""
        health = self._entries.get(name)
        if health is None:
            return "closed", None
        now = now or self._clock()
        until = health.cooldown_until if health.cooling_down(now) else None
        return health.breaker.effective_state(now), until

    def forget(self, names_not_in: Set[str]) -> None:
        """Drop channels that left the config (a channel that comes back starts closed)."""
        for name in [n for n in self._entries if n not in names_not_in]:
            del self._entries[name]

    def states(self, now: datetime | None = None) -> dict[str, HealthStatus]:
        now = now or self._clock()
        return {name: health.status(now) for name, health in self._entries.items()}

    def numeric(self, name: str) -> int:
        """smartproxy_circuit_state: 0 closed, 1 half-open, 2 open (unknown channel: 0)."""
        health = self._entries.get(name)
        return _NUMERIC[health.breaker.effective_state()] if health else 0

    def _changed(self, name: str, old: str, new: str) -> None:
        level = logging.WARNING if new == "open" else logging.INFO
        log.log(level, "circuit breaker %s: %s -> %s", name, old, new)
        if self._listener is not None:
            self._listener(name, old, new)
