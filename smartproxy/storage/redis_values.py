"""What both halves of the redis backend share: error types, the tunables, the value objects
(``SharedReservation``, ``Settlement``, ``ChannelView``), this host's ``RequestLog`` and
``safe_url``. The reads are in ``redis_view``, the writes in ``redis`` (which re-exports the
public ones).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import RedisError

from ..errors import NoChannelAvailable
from .base import RequestRecord, Reservation
from .sqlite import SqliteStore

REDIS_ERRORS = (RedisError, OSError, TimeoutError)
POLL_INTERVAL = 0.5
MAX_BATCH = 256
MAX_REPLAY = 200_000  # settlements kept while Redis is away; beyond, the oldest are dropped


class _Unreachable(Exception):
    """An admit's batch could not reach Redis (the store is offline now)."""


class StorageUnavailable(NoChannelAvailable):
    """503: the shared store is unreachable and ``storage.on_error`` is ``closed``."""

    code = "storage_unavailable"


@dataclass(slots=True)
class SharedReservation(Reservation):
    """A reservation held in Redis; the attempt's breaker outcome rides along to settlement."""

    member: str = ""
    trial: bool = False
    outcome: str = ""  # s success | f failure | c 429 cool-down | n none
    cooldown_ms: int = 0
    breaker: tuple[int, float] = (5, 30.0)
    key_name: str = ""
    tpm: int = 0
    # Its settlement changes what this process's next admits may be granted (a channel quota or
    # cap, a key's tokens per minute or budget): it is written before them (``_flush_admits``).
    ordered: bool = False
    ttl_ms: int = 0  # its expiry in Redis, from the admit (renewed while it lasts: ``_renew``)


@dataclass(slots=True)
class Settlement:
    channel: str
    day: str
    hour: str
    member: str = ""
    record: RequestRecord | None = None  # None: release only
    outcome: str = ""
    cooldown_ms: int = 0
    breaker: tuple[int, float] = (5, 30.0)
    key_name: str = ""
    tpm: int = 0
    budget_day: str = ""
    seq: int = 0  # this process's number for it, given when first sent (see redis_scripts.SETTLE)
    urgent: bool = False  # changes a breaker (a failure, a cool-down, a trial's end): no pacing
    ordered: bool = False  # written before this process's next admits (``SharedReservation``)
    done: asyncio.Future[None] | None = field(default=None, repr=False)


@dataclass(slots=True)
class ChannelView:
    """One channel as ``poll`` read it: breaker -1 closed, 0 due for its trial, >0 ms open."""

    name: str
    breaker_ms: int
    cooldown_ms: int


class RequestLog(SqliteStore):
    """This host's request log (SQLite); the counters live in Redis."""

    count_windows = False

    def add(self, record: RequestRecord) -> None:
        self._pending.append((record, "", ""))


def safe_url(url: str) -> str:
    """The URL without its password (for logs and /health)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))
