"""The dispatcher's side of a shared store (``storage.backend: redis``).

``admit``: the attempt's one round trip before dispatch; the first attempt of a request also
carries the client key's limits (``KeyCheck``, left by the key gate), so rate limits, token limits
and the daily budget are checked in the same atomic step as the quota. ``SharedVerdict``: the
attempt's breaker outcome goes to Redis with its settlement (the settle script counts consecutive
failures across processes, opens the breaker for everyone and arbitrates the one half-open trial);
this process's breaker then mirrors the shared one. ``sync_ctx``: a background task that refreshes
the routing view twice a second and mirrors shared breakers and 429 cool-downs into this process's
``HealthBook``, so ``/health``, rules and the router see them within a second.
While Redis is unreachable (``on_error: open``) everything here falls back to this process's own
breakers and the key gate's in-process checks.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from aiohttp import web

from ..config import ChannelConfig, Config
from ..state import GATEWAY, KEY_CHECK, PRINCIPAL, Gateway
from ..storage.base import KeyCheck, Limits, RequestRecord, Reservation
from ..storage.redis import RedisStore, SharedReservation
from ..storage.redis_admit import NOT_WAITING
from .breaker import Permit
from .exchange import Exchange, Verdict
from .health import ChannelHealth
from .retry import MAX_RETRY_AFTER
from .slots import LocalSlots

log = logging.getLogger("smartproxy.upstream")

AT_MAX_CONCURRENCY = "at max_concurrency"  # the dispatcher queues for these (all processes' count)

_REFUSED = {
    1: "quota used",
    2: "circuit open",
    3: "circuit half-open, trial in flight",
    4: "cooling down after 429",
    5: AT_MAX_CONCURRENCY,
}


def shared_store(gw: Gateway) -> RedisStore | None:
    store = gw.store
    return store if isinstance(store, RedisStore) else None


def breaker_params(config: Config, ch: ChannelConfig) -> tuple[int, float]:
    cb = config.circuit_breaker
    return ch.fail_max or cb.fail_max, ch.reset_timeout or cb.reset_timeout


async def admit(
    gw: Gateway,
    ex: Exchange,
    ch: ChannelConfig,
    limits: Limits,
    attempt_timeout: float,
    breaker: tuple[int, float],
    now: datetime,
    line: tuple[int, str] = NOT_WAITING,
) -> tuple[Reservation | None, str]:
    """Reserve on ``ch`` through the shared store; (reservation, "") or (None, why skipped).
    Raises the key's 429 when its limits refuse the request. ``line``: the request is the first
    of this process's waiters for ``ch`` (``LocalSlots.place``)."""
    store = shared_store(gw)
    assert store is not None
    check = ex.request.pop(KEY_CHECK, None)
    try:
        return await _admit(gw, store, ch, ex, limits, attempt_timeout, breaker, now, check, line)
    finally:
        if check is not None:
            check.drop()


async def _admit(
    gw: Gateway,
    store: RedisStore,
    ch: ChannelConfig,
    ex: Exchange,
    limits: Limits,
    attempt_timeout: float,
    breaker: tuple[int, float],
    now: datetime,
    check: KeyCheck | None,
    line: tuple[int, str],
) -> tuple[Reservation | None, str]:
    if check is not None and not store.online and store.on_error == "open":
        for local_check in check.local or ():
            local_check()  # in-process limits while Redis is away; raises 429
        check = None
    adm = await store.admit(
        ch.name,
        ex.reserve_on(ch),
        limits,
        now=now,
        ttl=attempt_timeout + store.grace,
        breaker=breaker,
        check=check,
        line=line,
    )
    if check is not None and check.answer is not None:
        if adm.offline:  # Redis went away during this very call
            try:
                for local_check in check.local or ():
                    local_check()
            except BaseException:
                if adm.reservation is not None:
                    await store.release(adm.reservation)
                raise
        else:
            check.answer(adm)  # headers; raises 429 for codes 10-12 (nothing was reserved)
    if adm.code == 0:
        res = adm.reservation
        if check is None and isinstance(res, SharedReservation) and ex.key_name:
            # A later attempt (the key was checked with the first): its settlement still
            # charges the key's daily spend and tokens per minute.
            principal = ex.request.get(PRINCIPAL)
            res.key_name = ex.key_name
            res.tpm = (principal.key.tokens_per_minute or 0) if principal is not None else 0
        return res, ""
    if adm.code in (2, 4) and adm.wait_ms > 0:  # learnt here first: mirror it now
        mirror(gw, ch, adm.wait_ms if adm.code == 2 else -2, adm.wait_ms if adm.code == 4 else 0)
    return None, _REFUSED.get(adm.code, "refused by the shared store")


def settle(
    gw: Gateway, reservation: Reservation, record: RequestRecord, *, urgent: bool = False
) -> asyncio.Future[None] | None:
    """Queue the settlement for the store's next batch (the one round trip after the answer);
    ``urgent``: sent at once, not paced. The future is done once it is written."""
    store = shared_store(gw)
    assert store is not None
    return store.settle_nowait(reservation, record, gw.clock(), urgent=urgent)


@dataclass(slots=True)
class SharedVerdict(Verdict):
    """A verdict whose outcome also travels to Redis with the attempt's settlement. While the
    store is online this process's breaker does not count failures itself: the shared count
    decides, and opening comes back through ``mirror``."""

    reservation: Reservation | None = None
    store: RedisStore | None = None  # its ``online`` is read when the outcome is known

    def _mark(self, outcome: str, cooldown_ms: int = 0) -> None:
        res = self.reservation
        if isinstance(res, SharedReservation):
            res.outcome = outcome
            res.cooldown_ms = cooldown_ms

    def _shared(self) -> bool:
        return (
            isinstance(self.reservation, SharedReservation)
            and self.store is not None
            and self.store.online
        )

    def success(self) -> None:
        self.health.success(self.permit)
        self._mark("s")

    def failure(self) -> None:
        if self._shared():
            self.health.release(self.permit)
            self._mark("f")
        else:
            self.health.failure(self.permit)

    def release(self) -> None:
        self.health.release(self.permit)
        self._mark("n")

    def rate_limited(self, retry_after: float | None, default: float) -> None:
        self.health.rate_limited(retry_after, default, self.permit)
        seconds = default if retry_after is None else retry_after
        seconds = min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else 0.0
        self._mark("c", int(seconds * 1000))


def verdict(
    gw: Gateway, health: ChannelHealth, permit: Permit, reservation: Reservation
) -> Verdict:
    store = shared_store(gw)
    if store is None:
        return Verdict(health, permit)
    return SharedVerdict(health, permit, reservation, store)


# ----------------------------------------------------------------------------- mirroring
def mirror(gw: Gateway, ch: ChannelConfig, breaker_ms: int, cooldown_ms: int) -> None:
    """Make this process's health of ``ch`` show the shared state: breaker_ms > 0 open for that
    long, 0 due for its trial, -1 closed (-2: unknown, leave it); a cool-down of cooldown_ms."""
    fail_max, reset = breaker_params(gw.config, ch)
    health = gw.health.get(ch.name, fail_max, reset)
    br = health.breaker
    now = gw.clock()
    if breaker_ms > 0:
        due = now + timedelta(milliseconds=breaker_ms)
        opened = br._state_storage.opened_at
        state = br.effective_state(now)
        if (
            state != "open"
            or opened is None
            or abs((opened + br.timeout_duration - due).total_seconds()) > 0.25
        ):
            br.open()
            br._state_storage.opened_at = due - br.timeout_duration
    elif breaker_ms == 0:
        if br.closed:
            br.open()
            br._state_storage.opened_at = now - br.timeout_duration  # due: half-open
    elif breaker_ms == -1 and not br.closed:
        br.close()
    if cooldown_ms > 0:
        health.cool_down(cooldown_ms / 1000)


def _on_breaker(gw: Gateway) -> Callable[[str, int, int], None]:
    def told(channel: str, event: int, open_ms: int) -> None:
        ch = gw.snapshot.channels.get(channel)
        if ch is not None:
            mirror(gw, ch, open_ms if event == 1 else -1, 0)

    return told


async def sync_once(gw: Gateway) -> None:
    store = shared_store(gw)
    if store is None:
        return
    channels = gw.snapshot.config.channels
    views = await store.poll([c.name for c in channels], gw.clock())
    if views is None:
        return
    for ch, view in zip(channels, views, strict=True):
        mirror(gw, ch, view.breaker_ms, view.cooldown_ms)


def sync_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: with a shared store, keep this process's view of it fresh."""

    async def ctx() -> AsyncIterator[None]:
        gw = app[GATEWAY]
        store = shared_store(gw)
        if store is None:
            yield
            return
        store.on_breaker = _on_breaker(gw)
        if isinstance(gw.slots, LocalSlots):
            gw.slots.on_vacate = store.vacate
        store.on_error_count = gw.metrics.storage_error
        await sync_once(gw)

        running = True

        async def loop() -> None:
            # Stops on the flag too: a cancellation that lands inside a Redis call can be lost
            # (seen: workers still polling 40 s into their shutdown, sync_ctx awaiting this task).
            while running:
                await asyncio.sleep(store.poll_interval)
                if not running:
                    break
                try:
                    await sync_once(gw)
                except Exception:  # a bug must not stop the sync; it is logged
                    log.exception("shared store sync failed")

        task = asyncio.create_task(loop(), name="shared-store-sync")
        yield
        running = False
        task.cancel()
        await asyncio.wait([task], timeout=store.poll_interval + store.timeout * 2)
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("shared store sync ended with %r", task.exception())

    return ctx()
