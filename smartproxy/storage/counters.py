"""In-process counting that every backend shares: ``Counter``, ``CounterBook`` (windows,
reservations, quota checks) and ``InProcessCounters`` (the synchronous ``*_now`` request path).

The windows and reservation rules are described once in ``base``, beside the value objects
(``Limits``, ``Usage``, ``Reservation``, ``RequestRecord``) and the ``UsageStore`` protocol.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from ..localtime import MinuteClock
from .base import DAY, HOUR, TOTAL, TOTAL_KEY, Limits, RequestRecord, Reservation, Usage


@dataclass(slots=True)
class Counter:
    tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    cost: float = 0.0

    def add(self, prompt: int, completion: int, requests: int, cost: float) -> None:
        self.tokens += prompt + completion
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.requests += requests
        self.cost += cost


_EMPTY = Counter()


class CounterBook:
    """In-process counters and reservations; every backend keeps one and persists around it.

    Methods are synchronous on purpose: a check and its update can never be interleaved with
    another coroutine. Only the ``keep`` newest day and hour keys of each channel are kept.
    """

    def __init__(self, tz: tzinfo, *, keep: int = 2) -> None:
        self.tz = tz
        self._keep = keep
        self._counters: dict[tuple[str, str], dict[str, Counter]] = {}
        self._inflight: dict[str, list[int]] = {}  # channel -> [tokens, requests]
        self._live: dict[int, Reservation] = {}
        # channel -> (day key, hour key, Usage): the router asks for every channel per request,
        # and building a Usage costs microseconds; any change to a channel drops its entry.
        self._cache: dict[str, tuple[str, str, Usage]] = {}
        self._ids = itertools.count(1)
        self._minutes = MinuteClock(tz)  # window keys, asked for ~3 times per request

    def window_keys(self, now: datetime) -> tuple[str, str]:
        """``window_keys(now, self.tz)``, converted once per minute."""
        minute = self._minutes.at(now)
        return minute.day_key, minute.hour_key

    @property
    def reservations(self) -> int:
        return len(self._live)

    def counter(self, channel: str, window: str, key: str) -> Counter:
        """The counter of one window key, created (and old keys trimmed) if missing."""
        keys = self._counters.setdefault((channel, window), {})
        self._cache.pop(channel, None)  # callers get it to change it
        c = keys.get(key)
        if c is None:
            c = keys[key] = Counter()
            if len(keys) > self._keep:
                del keys[min(keys)]  # keys sort by time: "YYYY-MM-DD[THH]"
        return c

    def load(self, channel: str, window: str, key: str, saved: Counter) -> None:
        """Put back a counter a backend persisted (replacing what is in memory for that key)."""
        c = self.counter(channel, window, key)
        c.tokens = saved.tokens
        c.prompt_tokens = saved.prompt_tokens
        c.completion_tokens = saved.completion_tokens
        c.requests = saved.requests
        c.cost = saved.cost

    def _peek(self, channel: str, window: str, key: str) -> Counter:
        return self._counters.get((channel, window), {}).get(key, _EMPTY)

    def try_reserve(
        self, channel: str, tokens: int, limits: Limits, now: datetime
    ) -> Reservation | None:
        if tokens < 0:
            raise ValueError(f"cannot reserve a negative number of tokens ({tokens})")
        day, hour = self.window_keys(now)
        held_tokens, held_requests = self._inflight.get(channel, (0, 0))
        # Admission (contract §4): room while used + reserved is below the limit; the request
        # then reserves its whole estimate, so a quota overruns by at most one request.
        if limits.day_tokens > 0:
            if self._peek(channel, DAY, day).tokens + held_tokens >= limits.day_tokens:
                return None
        if limits.hour_tokens > 0:
            if self._peek(channel, HOUR, hour).tokens + held_tokens >= limits.hour_tokens:
                return None
        if limits.day_requests > 0:
            if self._peek(channel, DAY, day).requests + held_requests >= limits.day_requests:
                return None
        res = Reservation(next(self._ids), channel, tokens, day, hour)
        self._cache.pop(channel, None)
        pool = self._inflight.setdefault(channel, [0, 0])
        pool[0] += tokens
        pool[1] += res.requests
        self._live[res.id] = res
        return res

    def release(self, reservation: Reservation) -> bool:
        """Give back a reservation; False (and nothing changes) if it was already given back."""
        res = self._live.pop(reservation.id, None)
        if res is None:
            return False
        self._cache.pop(res.channel, None)
        pool = self._inflight[res.channel]
        pool[0] -= res.tokens
        pool[1] -= res.requests
        if pool == [0, 0]:
            del self._inflight[res.channel]
        return True

    def settle(
        self, reservation: Reservation | None, record: RequestRecord, now: datetime
    ) -> tuple[str, str] | None:
        """Count ``record`` in the windows of ``now``; the (day, hour) keys used, or None if the
        reservation was already settled or released (then nothing is counted twice)."""
        if reservation is not None and not self.release(reservation):
            return None
        day, hour = self.window_keys(now)
        self.count(record.channel, day, hour, record)
        return day, hour

    def count(self, channel: str, day: str, hour: str, record: RequestRecord) -> None:
        p, c, cost = record.prompt_tokens, record.completion_tokens, record.cost
        self._cache.pop(channel, None)
        counters = self._counters
        for window, key in ((DAY, day), (HOUR, hour), (TOTAL, TOTAL_KEY)):
            keys = counters.get((channel, window))
            counter = keys.get(key) if keys is not None else None
            if counter is None:  # a new window: create it (and trim the old ones)
                counter = self.counter(channel, window, key)
            counter.add(p, c, 1, cost)

    def usages(self, channels: Iterable[str], now: datetime) -> dict[str, Usage]:
        day_key, hour_key = self.window_keys(now)  # once per call: the router asks per request
        return {ch: self._usage(ch, day_key, hour_key) for ch in channels}

    def _usage(self, channel: str, day_key: str, hour_key: str) -> Usage:
        hit = self._cache.get(channel)
        if hit is not None and hit[0] == day_key and hit[1] == hour_key:
            return hit[2]
        day = self._peek(channel, DAY, day_key)
        hour = self._peek(channel, HOUR, hour_key)
        total = self._peek(channel, TOTAL, TOTAL_KEY)
        held_tokens, held_requests = self._inflight.get(channel, (0, 0))
        usage = Usage(
            day_tokens=day.tokens,
            hour_tokens=hour.tokens,
            day_requests=day.requests,
            day_reserved_tokens=held_tokens,
            hour_reserved_tokens=held_tokens,
            total_tokens=total.tokens,
            total_requests=total.requests,
            total_prompt_tokens=total.prompt_tokens,
            total_completion_tokens=total.completion_tokens,
            total_cost=total.cost,
            day_cost=day.cost,
            reserved_requests=held_requests,
        )
        self._cache[channel] = (day_key, hour_key, usage)
        return usage


class InProcessCounters:
    """For stores whose counters and reservations live in this process (memory, sqlite).

    The request path calls the ``*_now`` methods directly: no coroutine per call, and no
    ``await`` between a check and its update. The async ``UsageStore`` methods wrap them. A
    store shared between processes (Redis) is not one of these and is awaited instead.
    """

    _book: CounterBook

    def try_reserve_now(
        self, channel: str, tokens: int, limits: Limits, now: datetime
    ) -> Reservation | None:
        return self._book.try_reserve(channel, tokens, limits, now)

    def release_now(self, reservation: Reservation) -> None:
        self._book.release(reservation)

    def usage_now(self, channels: Iterable[str], now: datetime) -> dict[str, Usage]:
        return self._book.usages(channels, now)

    def settle_now(
        self, reservation: Reservation | None, record: RequestRecord, now: datetime
    ) -> None:
        raise NotImplementedError  # each store keeps the settled record its own way

    async def try_reserve(
        self, channel: str, tokens: int, limits: Limits, now: datetime
    ) -> Reservation | None:
        return self.try_reserve_now(channel, tokens, limits, now)

    async def settle(
        self, reservation: Reservation | None, record: RequestRecord, now: datetime
    ) -> None:
        self.settle_now(reservation, record, now)

    async def release(self, reservation: Reservation) -> None:
        self.release_now(reservation)

    async def usage(self, channels: Sequence[str], now: datetime) -> dict[str, Usage]:
        return self.usage_now(channels, now)
