"""``redis`` backend: quotas, reservations, key limits, cool-downs and breakers shared in Redis.

Every process and host with the same ``storage.url`` and ``key_prefix`` counts against one quota:
``admit`` is one atomic Lua step (check the key's limits, the channel's breaker and cool-down, and
its quota; reserve), and the admits of one event-loop turn (while busy: of up to 5 ms) travel as
one script call; settlements are batched the same way (``RedisView._paced``); so the request path
makes one Redis round trip before dispatch and one after. The scripts and the key layout are in ``redis_scripts``; the connection, outage bookkeeping
and every read are in ``redis_view``. Routing reads a view of every channel (usage with reservations,
breaker, cool-down) that ``poll`` refreshes twice a second and each admit updates; the script
decides, so a stale view costs at most one refused admit. The request log stays on this host
(SQLite at ``storage.path``, shared by its workers); ``/api/usage`` totals come from Redis.

Redis unreachable (a call fails or takes longer than ``storage.timeout``): the outage is logged
once and counted, ``status()`` says so, and until ``poll`` reaches Redis again this process counts
alone (``on_error: open``, from the last numbers it saw) or refuses with ``StorageUnavailable``
(``closed``). Usage settled meanwhile is kept and written to Redis when it returns; reservations
held in Redis expire by themselves.

``admit`` and its batching are in ``redis_admit`` (``RedisAdmitter``, this store's base); the
shared value objects in ``redis_values``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from . import redis_scripts as lua
from .base import Limits, RequestRecord, Reservation
from .redis_admit import RedisAdmitter
from .redis_values import (
    MAX_BATCH,
    MAX_REPLAY,
    POLL_INTERVAL,
    REDIS_ERRORS,
    ChannelView,
    RequestLog,
    Settlement,
    SharedReservation,
    StorageUnavailable,
    safe_url,
)
from .redis_view import log

__all__ = [
    "POLL_INTERVAL",
    "ChannelView",
    "RedisStore",
    "RequestLog",
    "SharedReservation",
    "StorageUnavailable",
    "safe_url",
]


class RedisStore(RedisAdmitter):
    """A ``UsageStore`` shared through Redis (see the module docstring)."""

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

    async def drain(self) -> None:
        """Wait until the admits and settlements queued so far are written (or kept)."""
        while True:
            busy = [t for t in (self._admitter, self._flusher) if t is not None and not t.done()]
            if not busy:
                return
            await asyncio.wait(busy)

    async def close(self) -> None:
        for task in (self._admitter, self._flusher, *self._abandoned_tasks):
            if task is not None and not task.done():
                await asyncio.wait([task], timeout=self.timeout * 4)
        if self._pending:
            await self._flush()
        if self._replay and await self._reachable():
            await self._write_replay()
        if self._replay:
            log.error("usage store: %d settlements never reached redis", len(self._replay))
        await self.log.close()
        await self._redis.aclose()
        await self._pool.disconnect()

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
        done = self.settle_nowait(reservation, record, now)
        if done is not None:
            await asyncio.shield(done)

    def settle_nowait(
        self,
        reservation: Reservation | None,
        record: RequestRecord,
        now: datetime,
        *,
        urgent: bool = False,
    ) -> asyncio.Future[None] | None:
        """``settle`` without a coroutine (the request path's way): queued for the next batch
        (``urgent``: the batch goes at once); the future is done once it is written (or kept
        for the write-back)."""
        if not self._forget(reservation):
            return None
        day, hour = self._book.window_keys(now)
        budget_day = self._book.window_keys(datetime.fromtimestamp(record.ts, UTC))[0]
        self.log.add(record)
        item = self._settlement(record.channel, day, hour, reservation, record)
        item.budget_day = budget_day
        item.urgent = item.urgent or urgent
        if isinstance(reservation, SharedReservation) and self.online:
            self._settled_here(reservation, day, hour,
                               record.prompt_tokens + record.completion_tokens)  # fmt: skip
        return self._queue(item)

    async def release(self, reservation: Reservation) -> None:
        if not self._forget(reservation):
            return
        day, hour = self._book.window_keys(datetime.now(UTC))
        if isinstance(reservation, SharedReservation) and self.online:
            self._settled_here(reservation, day, hour, -1)
        await self._submit(self._settlement(reservation.channel, day, hour, reservation, None))

    def _forget(self, reservation: Reservation | None) -> bool:
        """Take a reservation out of this process's books; False if it was given back already."""
        if isinstance(reservation, SharedReservation):
            return self._unhold(reservation.id)
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
            item.urgent = res.trial or res.outcome in ("f", "c")
            item.ordered = res.ordered
        elif record is not None:
            item.key_name = record.api_key_name
        return item

    async def _submit(self, item: Settlement) -> None:
        done = self._queue(item)
        if done is not None:
            await asyncio.shield(done)

    def _queue(self, item: Settlement) -> asyncio.Future[None] | None:
        if not self.online:
            self._keep_for_replay([item])
            return None
        item.done = asyncio.get_running_loop().create_future()
        self._pending.append(item)
        if item.urgent:
            self._hurry()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return item.done

    async def _flush(self) -> None:
        """Write everything pending, one script call per batch (paced while busy: ``_paced``)."""
        while self._pending:
            self._settle_sent = await self._paced(self._settle_sent, self.SETTLE_PACE, True)
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
            except Exception:  # a bug, not an outage: say so; the waiters are answered below
                log.exception("usage store: %d settlements could not be written", len(batch))
            else:
                for item, (_, event, open_ms, dt, hh, dr, ht, hr) in zip(
                    batch, results, strict=True
                ):
                    self._remember(item.channel, item.day, item.hour, dt, hh, dr, ht, hr)
                    if event and self.on_breaker is not None:
                        self.on_breaker(item.channel, int(event), int(open_ms))
            finally:  # whatever happened, nobody waits forever (shutdown drains these waits)
                for item in batch:
                    if item.done is not None and not item.done.done():
                        item.done.set_result(None)

    async def _run_settle(self, batch: Sequence[Settlement]) -> list[list[int]]:
        keys: list[str] = []
        args: list[Any] = []
        k = self._k
        for s in batch:
            if s.record is not None and not s.seq:  # a write-back keeps the number it was sent with
                s.seq = next(self._settle_seq)
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
                    s.seq,
                    0,
                )
            )
        keys.append(f"{k}sw:{self._inst}")
        result: list[list[int]] = await self._settle(keys=keys, args=args)
        return result

    def _keep_for_replay(self, batch: Iterable[Settlement]) -> None:
        for item in batch:
            if item.record is not None:
                # Counted here meanwhile, so this process's own quota checks see it.
                self._book.count(item.channel, item.day, item.hour, item.record)
                item.outcome = ""  # breaker verdicts are not replayed: they are stale by then
                self._replay.append(item)
            if item.done is not None:  # kept is as good as written for whoever waits on it
                if not item.done.done():
                    item.done.set_result(None)
                item.done = None
        if len(self._replay) > MAX_REPLAY:
            drop = len(self._replay) - MAX_REPLAY
            del self._replay[:drop]
            self.dropped += drop

    async def _write_replay(self) -> None:
        # Those sent before (numbered) first, in the order they were sent: the script counts a
        # number at most once, and none below the highest it has counted for this process.
        self._replay.sort(key=lambda s: (s.seq == 0, s.seq))
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
