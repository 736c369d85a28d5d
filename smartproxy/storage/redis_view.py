"""The redis backend's base: connection, key names, outage bookkeeping and every read.

``RedisView`` holds the connection pool and the scripts, names the keys (``redis_scripts`` draws
them), notices outages (``_outage``: logged once, counted, this process's own counting seeded from
the last shared numbers), and reads: ``poll`` (the routing view, twice a second), ``usage_now``
(that view, no round trip), ``usage`` (exact, every process and host), key spend, response ids,
the request log and ``status``. ``redis.RedisStore`` adds the writes (admit, in
``redis_admit``; settle, write-back).
The value objects both sides use are in ``redis_values``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..config import StorageConfig
from . import redis_scripts as lua
from .base import (
    DAY,
    HOUR,
    RESPONSE_TTL,
    BucketRow,
    Clock,
    Usage,
)
from .counters import Counter, CounterBook
from .redis_pack import pack_in_c
from .redis_values import (
    POLL_INTERVAL,
    REDIS_ERRORS,
    ChannelView,
    RequestLog,
    Settlement,
    SharedReservation,
    safe_url,
)
from .responses import visible

log = logging.getLogger("smartproxy.storage.redis")
_OWNER_SEP = "\x1f"  # between the owner key name and the channel in a stored response id
RENEWALS_SLACK = 1024  # entries of ended requests the renewal heap may keep beyond 2x the live



class RedisView:
    """Connection, keys, outages and reads of the redis backend (see the module docstring)."""

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
        pack_in_c(self._pool)  # hiredis packs each command (``redis_pack``)
        self._redis = aioredis.Redis(connection_pool=self._pool, retry=Retry(NoBackoff(), 0))
        self._admit = self._redis.register_script(lua.ADMIT)
        self._settle = self._redis.register_script(lua.SETTLE)
        self._poll = self._redis.register_script(lua.POLL)
        self._renew_script = self._redis.register_script(lua.RENEW)
        self.log = RequestLog(cfg.path, tz, clock=clock)
        self._book = CounterBook(tz)  # window keys; counting while Redis is away
        self._inst = f"{os.getpid():x}{os.urandom(3).hex()}"
        self._ids = itertools.count(1)
        self._settle_seq = itertools.count(1)  # settlements in the order they are sent
        self._live: dict[int, SharedReservation] = {}
        # (loop time, id): when each held reservation is renewed if it still runs (``_renew``)
        self._renewals: list[tuple[float, int]] = []
        self._renewer: asyncio.Task[None] | None = None
        self._own_tokens: dict[str, int] = {}  # per channel: tokens of ``_live``
        self._view: dict[str, tuple[str, str, Usage]] = {}
        self._pending: list[Settlement] = []
        self._admits: list[tuple[Sequence[str], Sequence[Any], asyncio.Future[list[Any]]]] = []
        self._admitter: asyncio.Task[None] | None = None
        self._abandoned_tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        # Loop times the last admit / settle batch was sent (see ``_paced``).
        self._admit_sent = self._settle_sent = -1e9
        self._settle_wait: asyncio.Future[None] | None = None  # the settle batch's pacing
        self._replay: list[Settlement] = []
        # response ids remembered while Redis was away (this process only; bounded)
        self._responses: dict[str, str] = _Bounded()
        self.online = True
        self.errors = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.outage_since: str | None = None
        # Set by the gateway: told each failed Redis call, and each breaker the settle script
        # opened or closed (channel, 1 opened | 2 closed, ms open).
        self.on_error_count: Callable[[], None] | None = None
        self.on_breaker: Callable[[str, int, int], None] | None = None

    # Under load, one script call per request is mostly the cost of the call itself (a write
    # and a read on the socket, redis-py's command packing): a batch is sent at most once per
    # ``ADMIT_PACE`` / ``SETTLE_PACE`` seconds, so that the calls of a busy second travel
    # together (benchmarks/README.md, issue [8]: ~650 -> ~480 µs of CPU per request). A batch
    # after a quiet spell goes at once: an idle gateway adds no delay. A settlement that moves
    # a breaker (``Settlement.urgent``) ends the wait: other processes must see it now.
    ADMIT_PACE = 0.005  # on the request's path: at most 5 ms, only while busy
    SETTLE_PACE = 0.02  # after the answer

    async def _paced(self, last: float, pace: float, settle: bool = False) -> float:
        """Wait until ``pace`` seconds after ``last`` (a batch's send time); the new one."""
        loop = asyncio.get_running_loop()
        when = last + pace
        if settle and any(item.urgent for item in self._pending):
            return loop.time()
        if when > loop.time():
            wake: asyncio.Future[None] = loop.create_future()
            timer = loop.call_at(when, _wake, wake)
            if settle:
                self._settle_wait = wake
            try:
                await wake
            finally:
                timer.cancel()
                if settle:
                    self._settle_wait = None
        return loop.time()

    def _hurry(self) -> None:
        """Send the pending settlements now (one of them moves a breaker)."""
        if self._settle_wait is not None:
            _wake(self._settle_wait)

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

    def _settled_here(self, res: SharedReservation, day: str, hour: str, used: int) -> None:
        """The routing view as it will be once this settlement is written: the reservation
        gone, ``used`` tokens (and the request, if answered) counted. A request that has
        answered must not keep its channel out of the next request's route while its
        settlement is on its way to Redis; the script's own numbers replace these when back."""
        hit = self._view.get(res.channel)
        if hit is None:
            return
        vd, vh, u = hit
        counted = used >= 0
        self._view[res.channel] = (vd, vh, Usage(
            u.day_tokens + used if counted and vd == day else u.day_tokens,
            u.hour_tokens + used if counted and vh == hour else u.hour_tokens,
            u.day_requests + 1 if counted and vd == day else u.day_requests,
            max(0, u.day_reserved_tokens - res.tokens),
            max(0, u.hour_reserved_tokens - res.tokens),
            u.total_tokens, u.total_requests, u.total_prompt_tokens,
            u.total_completion_tokens, u.total_cost, u.day_cost,
            max(0, u.reserved_requests - res.requests),
        ))  # fmt: skip

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

    def _hold(self, res: SharedReservation) -> None:
        self._live[res.id] = res
        self._own_tokens[res.channel] = self._own_tokens.get(res.channel, 0) + res.tokens
        if res.ttl_ms:
            # Due once its attempt's timeout has passed (its ttl is that plus ``grace``).
            due = asyncio.get_running_loop().time() + max(res.ttl_ms / 1000 - self.grace, 0.5)
            heap = self._renewals
            if len(heap) > 2 * len(self._live) + RENEWALS_SLACK:
                # Most entries are of requests that ended (they leave when due, a timeout
                # later): keep the live ones, so that the heap follows the requests in flight,
                # not the request rate times the timeout (~54,000 entries at 450 req/s and a
                # 120 s timeout). In place: ``_renew`` holds this list.
                heap[:] = [entry for entry in heap if entry[1] in self._live]
                heapq.heapify(heap)
            heapq.heappush(heap, (due, res.id))
            if self._renewer is None or self._renewer.done():
                self._renewer = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        """Push on the expiry of the reservations of requests still running past their
        attempt's timeout (a long stream), ``grace`` seconds before it passes; one script call
        for all that are due. Runs while there are reservations to look after."""
        loop = asyncio.get_running_loop()
        heap = self._renewals
        while heap:
            wait = heap[0][0] - loop.time()
            if wait > 0:
                await asyncio.sleep(min(wait, 1.0))  # an earlier one may be pushed meanwhile
                continue
            now = loop.time()
            due: list[SharedReservation] = []
            while heap and heap[0][0] <= now:
                res = self._live.get(heapq.heappop(heap)[1])
                if res is not None:  # else settled or released: nothing to renew
                    due.append(res)
            if not due or not self.online:
                continue  # offline, this process counts alone: nothing in Redis to renew
            keys: list[str] = []
            args: list[Any] = []
            for res in due:
                k = self._k
                keys += (f"{k}r:{res.channel}", f"{k}rs:{res.channel}", f"{k}cb:{res.channel}")
                args += (res.member, res.ttl_ms)
            try:
                async with asyncio.timeout(self.timeout):
                    await self._renew_script(keys=keys, args=args)
            except REDIS_ERRORS:
                pass  # Redis away: the outage handling counts; try again in a second
            for res in due:
                step = max(res.ttl_ms / 1000 - self.grace, 0.5) if self.online else 1.0
                heapq.heappush(heap, (now + step, res.id))

    def _unhold(self, rid: int) -> bool:
        """Take reservation ``rid`` out of this process's books; False if it was not there."""
        res = self._live.pop(rid, None)
        if res is None:
            return False
        left = self._own_tokens.get(res.channel, 0) - res.tokens
        if left > 0:
            self._own_tokens[res.channel] = left
        else:
            self._own_tokens.pop(res.channel, None)
        return True

    def usage_now(self, channels: Iterable[str], now: datetime) -> dict[str, Usage]:
        """The routing view (no round trip): settled usage as of the last poll or admit, and
        the tokens this process's own requests in flight hold. Other processes' reservations
        are left to the admit script, which sees them exactly: a view that still counted one
        whose request had ended elsewhere (it is known only at the next poll, up to half a
        second later) would keep the channel out of the route while its quota has room."""
        if not self.online:
            return self._book.usages(channels, now)
        day, hour = self._book.window_keys(now)
        own = self._own_tokens
        out = {}
        for ch in channels:
            hit = self._view.get(ch)
            held = own.get(ch, 0)
            if hit is None:
                out[ch] = _zero()
                if held:
                    out[ch].day_reserved_tokens = out[ch].hour_reserved_tokens = held
                continue
            u = hit[2]
            same_day, same_hour = hit[0] == day, hit[0] == day and hit[1] == hour
            out[ch] = Usage(
                u.day_tokens if same_day else 0,
                u.hour_tokens if same_hour else 0,
                u.day_requests if same_day else 0,
                held,
                held,
                u.total_tokens if same_hour else 0,
                u.total_requests if same_hour else 0,
                u.total_prompt_tokens if same_hour else 0,
                u.total_completion_tokens if same_hour else 0,
                u.total_cost if same_hour else 0.0,
                u.day_cost if same_hour else 0.0,
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

    async def timeseries(self, edges: list[float], group_by: str) -> list[BucketRow]:
        """The request log of this host in buckets (the dashboard's charts): the SQLite log's."""
        return await self.log.timeseries(edges, group_by)

    async def remember_response(
        self, response_id: str, channel: str, now: datetime, key: str = ""
    ) -> None:
        """Keep ``response_id -> (channel, owner key)`` for 30 days, for every process and host
        (a later ``previous_response_id`` goes to the same channel whichever process answers
        it). Stored as ``owner \\x1f channel``; a value without the separator is an older row
        (the channel alone, no owner)."""
        value = f"{key}{_OWNER_SEP}{channel}"
        if not self.online:
            self._responses[response_id] = value
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self._redis.set(f"{self._k}resp:{response_id}", value, ex=RESPONSE_TTL)
        except REDIS_ERRORS as exc:
            self._outage(exc)
            self._responses[response_id] = value

    async def response_channel(
        self, response_id: str, now: datetime, key: str = ""
    ) -> str | None:
        """The channel that answered ``response_id``, or None (unknown, expired, or another
        key's: ``responses.visible``)."""
        value = self._responses.get(response_id)
        if self.online:
            try:
                async with asyncio.timeout(self.timeout):
                    raw = await self._redis.get(f"{self._k}resp:{response_id}")
            except REDIS_ERRORS as exc:
                self._outage(exc)
            else:
                if raw is not None:
                    value = raw.decode() if isinstance(raw, bytes) else str(raw)
        if value is None:
            return None
        owner, sep, channel = value.rpartition(_OWNER_SEP)
        return channel if visible(owner if sep else "", key) else None

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

    async def recover(self) -> bool:
        """While offline: reach Redis again and write back (``RedisStore``); True once online."""
        raise NotImplementedError


class _Bounded(dict[str, str]):
    """A dict keeping its 10,000 newest entries."""

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        if len(self) > 10_000:
            del self[next(iter(self))]


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _zero() -> Usage:
    return Usage(0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
