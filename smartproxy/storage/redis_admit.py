"""The redis backend's admission: ``admit`` checks a key's limits and a channel's breaker,
cool-down and quota and reserves, in one Lua step; the admits of one event-loop turn travel as one
script call (``_flush_admits``). Offline, this process counts alone or refuses (``on_error``).

``RedisAdmitter`` sits between ``redis_view.RedisView`` (connection, keys, reads) and
``redis.RedisStore`` (settlement, release, write-back after an outage).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from functools import partial
from typing import Any

from .base import Admission, KeyCheck, Limits, Reservation
from .redis_values import (
    MAX_BATCH,
    REDIS_ERRORS,
    SharedReservation,
    StorageUnavailable,
    _Unreachable,
)
from .redis_view import RedisView

NO_KEY_CHECK = (0, 0, 0, 0, 0, 0)  # the script's key fields when the key is not checked
NOT_WAITING = (-1, "")  # ``line`` of a request that is not waiting for a slot (a newcomer)


class RedisAdmitter(RedisView):
    """Admission of the redis backend (see the module docstring)."""

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
        line: tuple[int, str] = NOT_WAITING,
    ) -> Admission:
        """Check the key (once per request), the channel's breaker, cool-down and quota, and
        reserve ``tokens``: one script call. Offline: this process's own counting (or 503).
        ``line``: for the first of this process's requests waiting for the channel, the ms it
        and the next one have waited (-1: none); the script keeps the channel's line across
        processes in that order."""
        if tokens < 0:
            raise ValueError(f"cannot reserve a negative number of tokens ({tokens})")
        if not self.online:
            return self._admit_offline(channel, tokens, limits, now)
        day, hour = self._book.window_keys(now)
        ud, uh, rz, rs, cb, cd = self._keys(channel, day, hour)
        rid = next(self._ids)
        ttl_ms = max(1, int(ttl * 1000))
        if check is not None:
            key_name, key_day = check.name, check.day or day
            key_args: tuple[int | float, ...] = (
                1, check.rpm, check.burst, check.tpm, check.tpm_tokens, check.budget
            )
        else:
            key_name, key_day, key_args = "", day, NO_KEY_CHECK
        queue = f"{self._k}q:{channel}"
        keys = (ud, uh, rz, rs, cb, cd, *self._key_keys(key_name, key_day), queue)
        args = (
            f"{self._inst}.{rid}",
            tokens,
            limits.day_tokens,
            limits.hour_tokens,
            limits.day_requests,
            ttl_ms,
            *key_args,
            limits.concurrency,
            self._inst,
            *line,
        )
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._admits.append((keys, args, done))
        if self._admitter is None or self._admitter.done():
            self._admitter = asyncio.ensure_future(self._flush_admits())
        try:
            r = await asyncio.shield(done)
        except _Unreachable:
            return self._admit_offline(channel, tokens, limits, now)
        except asyncio.CancelledError:
            # The client went away while the batch was in flight: give back what it reserves.
            done.add_done_callback(partial(self._abandoned, channel, rid, tokens, day, hour))
            raise
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
                ordered=bool(
                    limits.day_tokens or limits.hour_tokens or limits.day_requests
                    or limits.concurrency or (check and (check.tpm or check.budget))
                ),
                ttl_ms=ttl_ms,
            )
            self._hold(res)
            adm.reservation = res
        return adm

    async def _flush_admits(self) -> None:
        """Send the admits queued so far as one script call (they were made in one event-loop
        turn, or while the previous batch was in flight); one batch in flight at a time."""
        while self._admits:
            self._admit_sent = await self._paced(self._admit_sent, self.ADMIT_PACE)
            # Settlements first where they change what may be granted: a request that answered
            # holds no reservation of a quota, a slot or a key's limits when the next is admitted.
            # Others (no limit to hold) keep their pace: waiting on them cost every admit a
            # round trip (S4: +7 ms to the first chunk at p50, issue [8]).
            if any(item.ordered or item.urgent for item in self._pending):
                last = self._pending[-1].done
                self._hurry()
                if last is not None:
                    await asyncio.shield(last)
            batch, self._admits = self._admits[:MAX_BATCH], self._admits[MAX_BATCH:]
            keys = [k for item in batch for k in item[0]]
            args = [a for item in batch for a in item[1]]
            try:
                if not self.online:
                    raise ConnectionError("redis is unreachable")
                async with asyncio.timeout(self.timeout):
                    rows = await self._admit(keys=keys, args=args)
            except REDIS_ERRORS as exc:
                if self.online:
                    self._outage(exc)
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(_Unreachable())
                        done.exception()  # retrieved: a cancelled waiter must not warn
                continue
            except Exception as exc:  # a bug, not an outage: the waiters get it, never a hang
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                        done.exception()
                continue
            for (_, _, done), row in zip(batch, rows, strict=True):
                if not done.done():
                    done.set_result(row)

    def _abandoned(
        self,
        channel: str,
        rid: int,
        tokens: int,
        day: str,
        hour: str,
        done: asyncio.Future[list[Any]],
    ) -> None:
        if done.cancelled() or done.exception() is not None or int(done.result()[0]) != 0:
            return
        res = SharedReservation(
            rid, channel, tokens, day, hour, member=f"{self._inst}.{rid}:{tokens}"
        )
        self._hold(res)
        task = asyncio.ensure_future(self.release(res))
        self._abandoned_tasks.add(task)
        task.add_done_callback(self._abandoned_tasks.discard)

    def vacate(self, channel: str) -> None:
        """No request of this process waits for ``channel`` any more (timed out, gone, served
        on another channel): give up its place in the channel's line now rather than let it
        lapse (``LINE_TTL_MS``) while it keeps others from a free slot."""
        if self.online:
            task = asyncio.ensure_future(self._vacate(channel))
            self._abandoned_tasks.add(task)
            task.add_done_callback(self._abandoned_tasks.discard)

    async def _vacate(self, channel: str) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._redis.hdel(f"{self._k}q:{channel}", self._inst)
        except REDIS_ERRORS:
            pass  # it lapses by itself

    def _admit_offline(self, channel: str, tokens: int, limits: Limits, now: datetime) -> Admission:
        if self.on_error == "closed":
            raise StorageUnavailable(
                "the shared usage store (redis) is unreachable and storage.on_error is "
                "'closed': no request is admitted until it returns"
            )
        res = self._book.try_reserve(channel, tokens, limits, now)
        return Admission(0 if res is not None else 1, res, offline=True)

    async def release(self, reservation: Reservation) -> None:
        """Give a reservation back (``RedisStore``)."""
        raise NotImplementedError
