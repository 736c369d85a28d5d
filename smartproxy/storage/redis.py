"""``redis`` backend: quotas, reservations, key limits, cool-downs and breakers shared in Redis.

Every process and host with the same ``storage.url`` and ``key_prefix`` counts against one quota:
``admit`` is one Lua script call (check the key's limits, the channel's breaker and cool-down, and
its quota; reserve) and settlements are batched into one script call per event-loop turn, so the
request path makes one Redis round trip before dispatch and one after. The scripts and the key
layout are in ``redis_scripts``. Routing reads a view of every channel (usage with reservations,
breaker, cool-down) that ``poll`` refreshes twice a second and each admit updates; the script
decides, so a stale view costs at most one refused admit. The request log stays on this host
(SQLite at ``storage.path``, shared by its workers); ``/api/usage`` totals come from Redis.

Redis unreachable (a call fails or takes longer than ``storage.timeout``): the outage is logged
once and counted, ``status()`` says so, and until ``poll`` reaches Redis again this process counts
alone (``on_error: open``, from the last numbers it saw) or refuses with ``StorageUnavailable``
(``closed``). Usage settled meanwhile is kept and written to Redis when it returns; reservations
held in Redis expire by themselves.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..config import StorageConfig
from ..errors import NoChannelAvailable
from . import redis_scripts as lua
from .base import (
    DAY,
    HOUR,
    Admission,
    Clock,
    Counter,
    CounterBook,
    KeyCheck,
    Limits,
    RequestRecord,
    Reservation,
    Usage,
)
from .sqlite import SqliteStore

log = logging.getLogger(__name__)

REDIS_ERRORS = (RedisError, OSError, TimeoutError)
POLL_INTERVAL = 0.5
MAX_BATCH = 256
MAX_REPLAY = 200_000  # settlements kept while Redis is away; beyond, the oldest are dropped


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


class RedisStore:
    """A ``UsageStore`` shared through Redis (see the module docstring)."""

    backend = "redis"
    shared = True

    def __init__(
        self,
        cfg: StorageConfig,
        tz: tzinfo,
        *,
        clock: Clock | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        if not cfg.url:
            raise ValueError("storage.url is required for the redis backend")
        self.url = cfg.url
        self.tz = tz
        self.on_error = cfg.on_error
        self.timeout = cfg.timeout
        self.grace = cfg.reservation_grace
        self.poll_interval = poll_interval
        self._k = f"{cfg.key_prefix}{{sp}}:"
        self._pool = aioredis.BlockingConnectionPool.from_url(
            cfg.url,
            max_connections=cfg.max_connections,
            timeout=cfg.timeout,
            socket_timeout=cfg.timeout,
            socket_connect_timeout=cfg.timeout,
        )
        self._redis = aioredis.Redis(connection_pool=self._pool, retry=Retry(NoBackoff(), 0))
        self._admit = self._redis.register_script(lua.ADMIT)
        self._settle = self._redis.register_script(lua.SETTLE)
        self._poll = self._redis.register_script(lua.POLL)
        self.log = RequestLog(cfg.path, tz, clock=clock)
        self._book = CounterBook(tz)  # window keys; counting while Redis is away
        self._inst = f"{os.getpid():x}{os.urandom(3).hex()}"
        self._ids = itertools.count(1)
        self._live: dict[int, SharedReservation] = {}
        self._view: dict[str, tuple[str, str, Usage]] = {}
        self._pending: list[Settlement] = []
        self._flusher: asyncio.Task[None] | None = None
        self._replay: list[Settlement] = []
        self.online = True
        self.errors = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.outage_since: str | None = None
        # Set by the gateway: told each failed Redis call, and each breaker the settle script
        # opened or closed (channel, 1 opened | 2 closed, ms open).
        self.on_error_count: Callable[[], None] | None = None
        self.on_breaker: Callable[[str, int, int], None] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.log.start()
        try:
            async with asyncio.timeout(self.timeout * 4):  # the first connect may be slower
                await self._redis.ping()
                await self._redis.script_load(lua.ADMIT)
                await self._redis.script_load(lua.SETTLE)
                await self._redis.script_load(lua.POLL)
        except REDIS_ERRORS as exc:
            self._outage(exc)
        else:
            log.info("usage store: redis %s (key prefix %r)", safe_url(self.url), self._k)

    async def close(self) -> None:
        if self._pending:
            await self._flush()
        if self._replay and await self._reachable():
            await self._write_replay()
        if self._replay:
            log.error("usage store: %d settlements never reached redis", len(self._replay))
        await self.log.close()
        await self._redis.aclose()
        await self._pool.disconnect()

    # ------------------------------------------------------------------ keys
    def _keys(self, channel: str, day: str, hour: str) -> tuple[str, str, str, str, str, str]:
        k = self._k
        return (
            f"{k}u:{channel}:d:{day}",
            f"{k}u:{channel}:h:{hour}",
            f"{k}r:{channel}",
            f"{k}rs:{channel}",
            f"{k}cb:{channel}",
            f"{k}cd:{channel}",
        )

    def _key_keys(self, name: str, day: str) -> tuple[str, str, str]:
        k = self._k
        return f"{k}kb:{name}", f"{k}kt:{name}", f"{k}kd:{name}:{day}"

    # ------------------------------------------------------------------ admit
    async def admit(
        self,
        channel: str,
        tokens: int,
        limits: Limits,
        *,
        now: datetime,
        ttl: float,
        breaker: tuple[int, float],
        check: KeyCheck | None = None,
    ) -> Admission:
        """Check the key (once per request), the channel's breaker, cool-down and quota, and
        reserve ``tokens``: one script call. Offline: this process's own counting (or 503)."""
        if tokens < 0:
            raise ValueError(f"cannot reserve a negative number of tokens ({tokens})")
        if not self.online:
            return self._admit_offline(channel, tokens, limits, now)
        day, hour = self._book.window_keys(now)
        ud, uh, rz, rs, cb, cd = self._keys(channel, day, hour)
        rid = next(self._ids)
        ttl_ms = max(1, int(ttl * 1000))
        if check is not None:
            keys = (ud, uh, rz, rs, cb, cd, *self._key_keys(check.name, check.day or day))
            args: tuple[Any, ...] = (
                f"{self._inst}.{rid}",
                tokens,
                limits.day_tokens,
                limits.hour_tokens,
                limits.day_requests,
                ttl_ms,
                1,
                check.rpm,
                check.burst,
                check.tpm,
                check.tpm_tokens,
                check.budget,
            )
        else:
            keys = (ud, uh, rz, rs, cb, cd, *self._key_keys("", day))
            args = (
                f"{self._inst}.{rid}",
                tokens,
                limits.day_tokens,
                limits.hour_tokens,
                limits.day_requests,
                ttl_ms,
                0,
                0,
                0,
                0,
                0,
                0,
            )
        try:
            async with asyncio.timeout(self.timeout):
                r = await self._admit(keys=keys, args=args)
        except REDIS_ERRORS as exc:
            self._outage(exc)
            return self._admit_offline(channel, tokens, limits, now)
        code = int(r[0])
        adm = Admission(
            code,
            wait_ms=int(r[13]),
            spent=float(r[14]),
            requests=(int(r[7]), int(r[8]), int(r[9])),
            tokens=(int(r[10]), int(r[11]), int(r[12])),
        )
        if code in (0, 1):
            self._remember(
                channel, day, hour, int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6])
            )
        if code == 0:
            res = SharedReservation(
                rid,
                channel,
                tokens,
                day,
                hour,
                member=f"{self._inst}.{rid}:{tokens}",
                trial=r[1] == 1,
                breaker=breaker,
                key_name=check.name if check else "",
                tpm=check.tpm if check else 0,
            )
            self._live[rid] = res
            adm.reservation = res
        return adm

    def _admit_offline(self, channel: str, tokens: int, limits: Limits, now: datetime) -> Admission:
        if self.on_error == "closed":
            raise StorageUnavailable(
                "the shared usage store (redis) is unreachable and storage.on_error is "
                "'closed': no request is admitted until it returns"
            )
        res = self._book.try_reserve(channel, tokens, limits, now)
        return Admission(0 if res is not None else 1, res, offline=True)

    def _remember(
        self, channel: str, day: str, hour: str, dt: int, hh: int, dr: int, ht: int, hr: int
    ) -> None:
        old = self._view.get(channel)
        u = old[2] if old is not None and old[0] == day else None
        self._view[channel] = (
            day,
            hour,
            Usage(
                day_tokens=dt,
                hour_tokens=hh,
                day_requests=dr,
                day_reserved_tokens=ht,
                hour_reserved_tokens=ht,
                total_tokens=u.total_tokens if u else 0,
                total_requests=u.total_requests if u else 0,
                total_prompt_tokens=u.total_prompt_tokens if u else 0,
                total_completion_tokens=u.total_completion_tokens if u else 0,
                total_cost=u.total_cost if u else 0.0,
                day_cost=u.day_cost if u else 0.0,
                reserved_requests=hr,
            ),
        )

    # ------------------------------------------------------------------ settle / release
    async def try_reserve(
        self, channel: str, tokens: int, limits: Limits, now: datetime
    ) -> Reservation | None:
        """The protocol's plain reservation (no key check, the default expiry)."""
        adm = await self.admit(
            channel, tokens, limits, now=now, ttl=30 + self.grace, breaker=(5, 30.0)
        )
        return adm.reservation

    async def settle(
        self, reservation: Reservation | None, record: RequestRecord, now: datetime
    ) -> None:
        if not self._forget(reservation):
            return
        day, hour = self._book.window_keys(now)
        budget_day = self._book.window_keys(datetime.fromtimestamp(record.ts, UTC))[0]
        self.log.add(record)
        item = self._settlement(record.channel, day, hour, reservation, record)
        item.budget_day = budget_day
        await self._submit(item)

    async def release(self, reservation: Reservation) -> None:
        if not self._forget(reservation):
            return
        day, hour = self._book.window_keys(datetime.now(UTC))
        await self._submit(self._settlement(reservation.channel, day, hour, reservation, None))

    def _forget(self, reservation: Reservation | None) -> bool:
        """Take a reservation out of this process's books; False if it was given back already."""
        if isinstance(reservation, SharedReservation):
            return self._live.pop(reservation.id, None) is not None
        if reservation is not None:  # made while Redis was away
            return self._book.release(reservation)
        return True

    @staticmethod
    def _settlement(
        channel: str, day: str, hour: str, res: Reservation | None, record: RequestRecord | None
    ) -> Settlement:
        item = Settlement(channel, day, hour, record=record)
        if isinstance(res, SharedReservation):
            item.member, item.outcome, item.cooldown_ms = res.member, res.outcome, res.cooldown_ms
            item.breaker, item.key_name, item.tpm = res.breaker, res.key_name, res.tpm
        elif record is not None:
            item.key_name = record.api_key_name
        return item

    async def _submit(self, item: Settlement) -> None:
        if not self.online:
            self._keep_for_replay([item])
            return
        item.done = asyncio.get_running_loop().create_future()
        self._pending.append(item)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        await asyncio.shield(item.done)

    async def _flush(self) -> None:
        """Write everything pending, one script call per batch (settlements of one loop turn)."""
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                if not self.online:
                    raise ConnectionError("redis is unreachable")
                async with asyncio.timeout(self.timeout):
                    results = await self._run_settle(batch)
            except REDIS_ERRORS as exc:
                if self.online:
                    self._outage(exc)
                self._keep_for_replay(batch)
            else:
                for item, (_, event, open_ms, dt, hh, dr, ht, hr) in zip(
                    batch, results, strict=True
                ):
                    self._remember(item.channel, item.day, item.hour, dt, hh, dr, ht, hr)
                    if event and self.on_breaker is not None:
                        self.on_breaker(item.channel, int(event), int(open_ms))
            for item in batch:
                if item.done is not None and not item.done.done():
                    item.done.set_result(None)

    async def _run_settle(self, batch: Sequence[Settlement]) -> list[list[int]]:
        keys: list[str] = []
        args: list[Any] = []
        k = self._k
        for s in batch:
            keys.extend(
                (
                    f"{k}u:{s.channel}:d:{s.day}",
                    f"{k}u:{s.channel}:h:{s.hour}",
                    f"{k}u:{s.channel}:t",
                    f"{k}r:{s.channel}",
                    f"{k}rs:{s.channel}",
                    f"{k}cb:{s.channel}",
                    f"{k}cf:{s.channel}",
                    f"{k}cd:{s.channel}",
                    f"{k}kt:{s.key_name}",
                    f"{k}kd:{s.key_name}:{s.budget_day or s.day}",
                )
            )
            r = s.record
            args.extend(
                (
                    s.member,
                    1 if r is not None else 0,
                    r.prompt_tokens if r else 0,
                    r.completion_tokens if r else 0,
                    repr(float(r.cost)) if r else "0",
                    s.outcome,
                    s.cooldown_ms,
                    s.breaker[0],
                    int(s.breaker[1] * 1000),
                    s.tpm,
                    0,
                    0,
                )
            )
        result: list[list[int]] = await self._settle(keys=keys, args=args)
        return result

    def _keep_for_replay(self, batch: Iterable[Settlement]) -> None:
        for item in batch:
            if item.record is not None:
                # Counted here meanwhile, so this process's own quota checks see it.
                self._book.count(item.channel, item.day, item.hour, item.record)
                item.outcome = ""  # breaker verdicts are not replayed: they are stale by then
                item.done = None
                self._replay.append(item)
        if len(self._replay) > MAX_REPLAY:
            drop = len(self._replay) - MAX_REPLAY
            del self._replay[:drop]
            self.dropped += drop

    # ------------------------------------------------------------------ outage and recovery
    def _outage(self, exc: BaseException) -> None:
        self.errors += 1
        if self.on_error_count is not None:
            self.on_error_count()
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if not self.online:
            return
        self.online = False
        self.outage_since = datetime.now(UTC).isoformat()
        mode = (
            "counting in this process"
            if self.on_error == "open"
            else "answering 503 (storage.on_error: closed)"
        )
        log.error(
            "usage store: redis %s unreachable (%s); %s until it returns",
            safe_url(self.url),
            self.last_error,
            mode,
        )
        # Count on from the last shared numbers seen (reservations of others included).
        self._book = CounterBook(self.tz)
        for channel, (day, hour, u) in self._view.items():
            self._book.load(
                channel,
                DAY,
                day,
                Counter(u.day_tokens + u.day_reserved_tokens, requests=u.day_requests),
            )
            self._book.load(channel, HOUR, hour, Counter(u.hour_tokens + u.hour_reserved_tokens))

    async def _reachable(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                await self._redis.ping()
        except REDIS_ERRORS:
            return False
        return True

    async def _write_replay(self) -> None:
        while self._replay:
            batch = self._replay[:MAX_BATCH]
            async with asyncio.timeout(self.timeout * 4):
                await self._run_settle(batch)
            del self._replay[: len(batch)]

    async def recover(self) -> bool:
        """While offline: if Redis answers, write what was settled meanwhile and go back to
        shared counting. True once online."""
        if self.online:
            return True
        if not await self._reachable():
            self.errors += 1
            if self.on_error_count is not None:
                self.on_error_count()
            return False
        try:
            written = len(self._replay)
            await self._write_replay()
        except REDIS_ERRORS as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        self.online = True
        self.last_error = None
        self.outage_since = None
        log.warning(
            "usage store: redis %s reachable again; %d settlements made meanwhile "
            "written, shared counting resumed",
            safe_url(self.url),
            written,
        )
        return True

    # ------------------------------------------------------------------ reading
    async def poll(self, channels: Sequence[str], now: datetime) -> list[ChannelView] | None:
        """Refresh the routing view of ``channels`` (one script call); None while offline."""
        if not await self.recover() or not channels:
            return None
        day, hour = self._book.window_keys(now)
        keys: list[str] = []
        for ch in channels:
            ud, uh, rz, rs, cb, cd = self._keys(ch, day, hour)
            keys.extend((ud, uh, rs, cb, cd, rz))
        try:
            async with asyncio.timeout(self.timeout):
                rows = await self._poll(keys=keys, args=())
        except REDIS_ERRORS as exc:
            self._outage(exc)
            return None
        views = []
        for ch, (dt, hh, dr, ht, hr, breaker, cool) in zip(channels, rows, strict=True):
            self._remember(ch, day, hour, int(dt), int(hh), int(dr), int(ht), int(hr))
            views.append(ChannelView(ch, int(breaker), int(cool)))
        return views

    def usage_now(self, channels: Iterable[str], now: datetime) -> dict[str, Usage]:
        """The routing view (no round trip): as of the last poll or admit."""
        if not self.online:
            return self._book.usages(channels, now)
        day, hour = self._book.window_keys(now)
        out = {}
        for ch in channels:
            hit = self._view.get(ch)
            if hit is None:
                out[ch] = _zero()
            elif hit[0] == day and hit[1] == hour:
                out[ch] = hit[2]
            else:  # a new window since the last poll: only the reservations carry over
                u = hit[2]
                out[ch] = Usage(
                    0 if hit[0] != day else u.day_tokens,
                    0,
                    0 if hit[0] != day else u.day_requests,
                    u.day_reserved_tokens,
                    u.hour_reserved_tokens,
                    0,
                    0,
                    0,
                    0,
                    0.0,
                    0.0,
                    u.reserved_requests,
                )
        return out

    async def usage(self, channels: Sequence[str], now: datetime) -> dict[str, Usage]:
        """Exact numbers from Redis (every process and host); offline: this process's view."""
        if not self.online:
            return self._book.usages(channels, now)
        day, hour = self._book.window_keys(now)
        try:
            async with asyncio.timeout(self.timeout * 4):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for ch in channels:
                        ud, uh, _, rs, _, _ = self._keys(ch, day, hour)
                        for key in (ud, uh, f"{self._k}u:{ch}:t", rs):
                            pipe.hgetall(key)
                    rows = await pipe.execute()
        except REDIS_ERRORS as exc:
            self._outage(exc)
            return self._book.usages(channels, now)
        out = {}
        for i, ch in enumerate(channels):
            d, h, t, held = (_decode(x) for x in rows[4 * i : 4 * i + 4])
            out[ch] = Usage(
                day_tokens=int(d.get("tokens", 0)),
                hour_tokens=int(h.get("tokens", 0)),
                day_requests=int(d.get("requests", 0)),
                day_reserved_tokens=max(0, int(held.get("t", 0))),
                hour_reserved_tokens=max(0, int(held.get("t", 0))),
                total_tokens=int(t.get("tokens", 0)),
                total_requests=int(t.get("requests", 0)),
                total_prompt_tokens=int(t.get("prompt", 0)),
                total_completion_tokens=int(t.get("completion", 0)),
                total_cost=float(t.get("cost", 0.0)),
                day_cost=float(d.get("cost", 0.0)),
                reserved_requests=max(0, int(held.get("r", 0))),
            )
        return out

    async def spent(self, key_name: str, day: str) -> float:
        """A key's spend (USD) on local day ``day`` across every process (0 when offline)."""
        if not self.online:
            return 0.0
        try:
            async with asyncio.timeout(self.timeout):
                raw = await self._redis.get(self._key_keys(key_name, day)[2])
        except REDIS_ERRORS as exc:
            self._outage(exc)
            return 0.0
        return float(raw or 0.0)

    async def query(
        self, start: datetime | None, end: datetime | None, group_by: str
    ) -> list[dict[str, object]]:
        """The request log of this host (every worker of it shares the file)."""
        return await self.log.query(start, end, group_by)

    def status(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "ok": self.online,
            "url": safe_url(self.url),
            "key_prefix": self._k,
            "on_error": self.on_error,
            "last_error": self.last_error,
            "outage_since": self.outage_since,
            "errors": self.errors,
            "pending_writes": len(self._pending) + len(self._replay),
            "unwritten_settlements": len(self._replay),
            "dropped_writes": self.dropped,
            "reservations": len(self._live) + self._book.reservations,
            "request_log": {
                "path": str(self.log.path),
                "ok": self.log.status()["ok"],
                "pending_writes": self.log.status()["pending_writes"],
            },
        }


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _zero() -> Usage:
    return Usage(0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0)
