"""The ``UsageStore`` protocol and its value objects, shared by every backend.

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

The in-process counting itself (``Counter``, ``CounterBook``, ``InProcessCounters``) is in
``counters``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Protocol, TypedDict, runtime_checkable

from ..errors import SmartProxyError
from ..localtime import window_keys_of

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

    def drop(self) -> None:
        """Forget the callbacks once the check is done: they refer to the request and to this
        check, a reference cycle that would keep every request alive until the cycle collector
        runs (``smartproxy.gcpolicy``; ``tests/test_per_request.py``)."""
        self.answer = None
        self.local = None


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

    async def remember_response(
        self, response_id: str, channel: str, now: datetime, key: str = ""
    ) -> None:
        """Keep ``response_id -> (channel, key)`` for ``RESPONSE_TTL`` seconds from ``now``
        (``key``: the gateway key name that made it, its owner)."""

    async def response_channel(
        self, response_id: str, now: datetime, key: str = ""
    ) -> str | None:
        """The channel that answered ``response_id``, or None (unknown, older than the TTL, or
        made by another gateway key than ``key``: ``responses.visible``)."""

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
