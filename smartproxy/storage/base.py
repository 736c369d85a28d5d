"""The ``UsageStore`` protocol, its value objects, and ``CounterBook``, shared by every backend.

Windows. A request's tokens are counted in three windows per channel: the local day ("YYYY-MM-DD"),
the local hour ("YYYY-MM-DDTHH") and the running total. "Local" is the server timezone handed to the
backend, so a day starts at local midnight (16:00 UTC for Asia/Shanghai). Keys are local wall-clock
text: in a timezone with DST the repeated autumn hour shares one hour key.

Reservations. ``try_reserve`` checks and reserves in one step with no ``await`` in between, which is
what stops N concurrent requests from overrunning a quota. Settled tokens are counted in the windows
of the moment the request *ends* (``settle``'s ``now``); a reservation therefore holds capacity in
whatever window is current until it is settled or released. Concretely, every in-flight reservation
of a channel counts against that channel's current day and hour: one made at 23:59:59 still holds
its tokens at 00:00:01 (it will be counted in the new day), and releasing it takes them from the
in-flight pool it was added to, never from a window's settled count. ``Reservation.day_key`` and
``hour_key`` record where it was made, for logs and for backends that expire keys.

Responses. ``remember_response`` keeps which channel answered an OpenAI Responses request (its
server holds the conversation a later ``previous_response_id`` continues) for ``RESPONSE_TTL``
(30 days, as long as OpenAI stores a response by default); ``response_channel`` reads it back.
In-process backends keep at most ``RESPONSE_KEEP`` ids in memory (oldest dropped first).

A record's ``ts`` is the request's start, so near a boundary the request log grouped by ``ts`` and
the day counters may place one request on different sides of midnight; totals always agree.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Protocol, TypedDict, runtime_checkable

from ..errors import SmartProxyError
from ..localtime import MinuteClock, window_keys_of

Clock = Callable[[], datetime]  # returns an aware datetime; injected so tests never read the wall

DAY, HOUR, TOTAL = "day", "hour", "total"
TOTAL_KEY = "total"
GROUP_COLUMNS = {"channel": "channel", "api_key": "api_key_name", "model": "model"}
# ``query`` (``GET /api/usage?group_by=``) may also group by the front a request came through.
QUERY_COLUMNS = {**GROUP_COLUMNS, "endpoint": "endpoint"}
RESPONSE_TTL = 30 * 86400  # seconds a response id -> channel mapping is kept (as OpenAI does)


class StorageError(SmartProxyError):
    """The usage store cannot open or read its storage (the message names the path)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """A channel's quotas; 0 means unlimited."""

    day_tokens: int = 0
    hour_tokens: int = 0
    day_requests: int = 0
    # max_concurrency; a shared store (redis) checks it with the quota. In one process the
    # dispatcher's slots (upstream.slots) enforce it, so in-process counters ignore it.
    concurrency: int = 0


@dataclass(slots=True)  # built per request: a frozen init costs ~0.16 µs a field
class Usage:
    """One channel's counters at an instant. Settled numbers exclude in-flight reservations."""

    day_tokens: int
    hour_tokens: int
    day_requests: int
    day_reserved_tokens: int
    hour_reserved_tokens: int
    total_tokens: int
    total_requests: int
    total_prompt_tokens: int
    total_completion_tokens: int
    total_cost: float
    day_cost: float
    reserved_requests: int = 0

    @property
    def day_tokens_with_reserved(self) -> int:
        return self.day_tokens + self.day_reserved_tokens

    @property
    def hour_tokens_with_reserved(self) -> int:
        return self.hour_tokens + self.hour_reserved_tokens


@dataclass(slots=True)
class Reservation:
    id: int
    channel: str
    tokens: int
    day_key: str
    hour_key: str
    requests: int = 1


@dataclass(slots=True)  # built per request: a frozen init costs ~0.16 µs a field
class RequestRecord:
    """One finished request, as the request log keeps it. ``ts``: epoch seconds of its start."""

    ts: float
    request_id: str
    api_key_name: str
    channel: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    status: int
    latency_ms: float
    stream: bool = False
    usage_source: str = "upstream"  # upstream | estimated | none
    error: str | None = None
    endpoint: str = ""  # the client-facing route ("/v1/chat/completions", "/v1/messages", ...)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class KeyCheck:
    """A client key's limits, checked by a shared store in the same atomic step as the first
    reservation (one Redis round trip before dispatch). Built by the key gate, which also gives
    ``answer`` (reads an ``Admission``: sets the key's headers, raises 429 when refused) and
    ``local`` (the in-process checks, run instead while the shared store is unreachable)."""

    name: str
    rpm: float = 0.0
    burst: int = 0
    tpm: int = 0
    tpm_tokens: int = 0
    budget: float = 0.0
    day: str = ""  # the server-local day of the request's start (the budget's day)
    answer: Callable[[Admission], None] | None = None
    local: list[Callable[[], None]] | None = None


@dataclass(slots=True)
class Admission:
    """What one check-and-reserve of a shared store answered.

    ``code``: 0 reserved, 1 quota used, 2 circuit open, 3 half-open trial in flight, 4 cooling
    down after 429, 5 at max_concurrency (in flight in all processes); 10/11/12 the key's
    requests per minute / tokens per minute / daily budget refused it (nothing reserved). ``offline``: the store was unreachable and this process
    counted alone (``storage.on_error: open``); the key's checks were not made.
    """

    code: int
    reservation: Reservation | None = None
    offline: bool = False
    wait_ms: int = 0  # open circuit / cool-down left, or the key's retry-after
    spent: float = 0.0  # the key's spend today (code 12)
    requests: tuple[int, int, int] = (0, 0, 0)  # key bucket: remaining, limit, reset ms
    tokens: tuple[int, int, int] = (0, 0, 0)  # key tokens-per-minute bucket: the same


class BucketRow(TypedDict):
    """The request-log sums of one group in one time bucket (see :mod:`.buckets`)."""

    bucket: int  # index into the edges: covers edges[bucket] <= ts < edges[bucket + 1]
    key: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    errors: int


@runtime_checkable
class UsageStore(Protocol):
    """Where counters, reservations and the request log live. Every method takes ``now``."""

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Flush everything still pending."""

    async def try_reserve(
        self, channel: str, tokens: int, limits: Limits, now: datetime
    ) -> Reservation | None:
        """Reserve ``tokens`` and one request if every limit > 0 still has room (used plus
        reserved below the limit), else None."""

    async def settle(
        self, reservation: Reservation | None, record: RequestRecord, now: datetime
    ) -> None:
        """Release ``reservation`` (once) and count the record in the windows of ``now``."""

    async def release(self, reservation: Reservation) -> None:
        """Give a reservation back without counting anything (upstream was never reached)."""

    async def usage(self, channels: Sequence[str], now: datetime) -> dict[str, Usage]: ...

    async def query(
        self, start: datetime | None, end: datetime | None, group_by: str
    ) -> list[dict[str, object]]:
        """Sum the request log over ``start <= ts < end``, grouped by channel|api_key|model|
        endpoint."""

    async def remember_response(self, response_id: str, channel: str, now: datetime) -> None:
        """Keep ``response_id -> channel`` for ``RESPONSE_TTL`` seconds from ``now``."""

    async def response_channel(self, response_id: str, now: datetime) -> str | None:
        """The channel that answered ``response_id``, or None (unknown or older than the TTL)."""

    async def timeseries(self, edges: list[float], group_by: str) -> list[BucketRow]:
        """Sum the request log into the buckets between consecutive epoch ``edges``, grouped by
        channel|api_key|model, ordered by (bucket, key) (see :mod:`.buckets`)."""

    def status(self) -> dict[str, object]: ...


# ----------------------------------------------------------------------------- shared helpers
def window_keys(now: datetime, tz: tzinfo) -> tuple[str, str]:
    """The (day, hour) keys of ``now`` in ``tz``; ``now`` must be timezone-aware. (The request
    path asks ``CounterBook.window_keys``, which converts once per minute.)"""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    return window_keys_of(now.astimezone(tz))


def epoch(dt: datetime | None, tz: tzinfo) -> float | None:
    """Epoch seconds of a query bound; a naive bound is read in the server timezone."""
    if dt is None:
        return None
    return (dt if dt.tzinfo is not None else dt.replace(tzinfo=tz)).timestamp()


def group_column(group_by: str) -> str:
    try:
        return QUERY_COLUMNS[group_by]
    except KeyError:
        raise ValueError(
            f"group_by must be one of {', '.join(QUERY_COLUMNS)}, got {group_by!r}"
        ) from None


def aggregate(records: Iterable[RequestRecord], group_by: str) -> list[dict[str, object]]:
    """Rows of ``query`` computed in Python (the memory backend; sqlite does it in SQL)."""
    column = group_column(group_by)
    sums: dict[str, list[float]] = {}
    for r in records:
        s = sums.setdefault(str(getattr(r, column)), [0, 0, 0, 0.0, 0])
        s[0] += 1
        s[1] += r.prompt_tokens
        s[2] += r.completion_tokens
        s[3] += r.cost
        s[4] += r.status >= 400
    return [
        {
            group_by: key,
            "requests": int(n),
            "prompt_tokens": int(p),
            "completion_tokens": int(c),
            "total_tokens": int(p + c),
            "cost": cost,
            "errors": int(errors),
        }
        for key, (n, p, c, cost, errors) in sorted(sums.items())
    ]


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
