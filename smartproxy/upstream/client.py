"""Send one client request upstream: attempt -> retry -> failover, then relay and settle usage.

Each attempt: the channel's breaker says yes, a quota reservation succeeds, the provider sends.
Retryable answers (429, 5xx, 401/403) and connection errors/timeouts move down the candidate
list with backoff between attempts; other 4xx come back at once. A stream is failed over only
before its first byte reaches the client; later it ends with an SSE ``error`` event.
The SSE relay is in ``relay``; ``Exchange``, ``AttemptLog``, ``Verdict`` and ``header_safe`` live
in ``exchange`` and are re-exported from here. One attempt (send, read, account a failure) is in
``attempt``; settling usage and shaping the answer or the all-failed error is in ``answer``.
"""

from __future__ import annotations

import logging
from datetime import datetime

from aiohttp import web
from multidict import CIMultiDict

from ..config import ChannelConfig, RetryConfig
from ..errors import NoChannelAvailable, Untranslatable
from ..providers import adapter_for
from ..providers.base import Timeouts
from ..routing.router import Candidate
from ..state import Gateway, Snapshot
from ..storage.base import Limits, Reservation
from ..storage.redis_admit import NOT_WAITING
from . import shared
from .attempt import AttemptRunner, _Plan
from .exchange import AttemptLog as AttemptLog
from .exchange import Exchange as Exchange
from .exchange import Verdict as Verdict
from .exchange import header_safe as header_safe
from .proxyconf import proxy_route
from .retry import RetryPolicy
from .slots import Slot, SlotQueue, Turn

log = logging.getLogger("smartproxy.upstream")

SHARED_POLL = 0.05  # with redis, the first in a line looks for a slot freed elsewhere this often

_UNAVAILABLE = {
    "open": "circuit open",
    "half_open": "circuit half-open, trial in flight",
    "cooldown": "cooling down after 429",
}


class Dispatcher(AttemptRunner):
    def __init__(self, gateway: Gateway, retry: RetryPolicy | None = None) -> None:
        self.gw = gateway
        self._retry = retry
        self._cached: tuple[RetryConfig, RetryPolicy] | None = None
        self._plans: dict[str, _Plan] = {}

    def retry_policy(self, snap: Snapshot) -> RetryPolicy:
        """The policy of ``snap``'s retry section, built once per config (reloads make new ones)."""
        if self._retry is not None:
            return self._retry
        cfg = snap.config.retry
        if self._cached is None or self._cached[0] is not cfg:
            policy = RetryPolicy(cfg, sleep=self.gw.retry_sleep, jitter=self.gw.retry_jitter)
            self._cached = (cfg, policy)
        return self._cached[1]

    async def dispatch(self, ex: Exchange, candidates: tuple[Candidate, ...]) -> web.StreamResponse:
        gw = self.gw
        if not candidates:
            raise NoChannelAvailable(
                f"no channel is available for model {ex.facts.model!r}", param="model"
            )
        policy = self.retry_policy(ex.snap)
        queue = list(candidates)
        last_reply: tuple[AttemptLog, int, CIMultiDict[str], bytes] | None = None
        skipped: list[str] = []
        refused: Untranslatable | None = None
        tried = 0
        waited = False
        full: dict[str, Candidate] = {}  # skipped at max_concurrency: the queue waits for them
        granted: Slot | None = None  # a slot the queue handed over, for queue[0]
        queuing: SlotQueue | None = None  # made when the request first has to wait
        slot: Slot | None = None
        try:
            while tried < policy.max_attempts:
                if not queue:
                    if not full:
                        break
                    queuing = queuing or SlotQueue(
                        gw.slots, ex.snap.config.server.queue_timeout, gw.metrics.queue_wait
                    )
                    if (step := await self._queue_for_slot(queuing, full)) is None:
                        skipped += queuing.why_not(_caps(full))
                        break
                    queue, granted = step
                    waited = True  # the wait in the queue stands in for a backoff
                ch = queue[0].channel
                plan = self._plan(ch)
                adapter = adapter_for(ch.provider, ex.path)
                try:
                    outgoing = self._outgoing(ex, ch, adapter)
                except Untranslatable as exc:  # this channel's API cannot say it; another may
                    queue.pop(0)
                    skipped.append(f"{ch.name}: {exc.message}")
                    refused = refused or exc
                    if granted is not None:
                        granted.release()
                        granted = None
                    continue
                outgoing.proxy = plan.proxy
                health = gw.health.get(ch.name, *plan.breaker)
                if tried and not waited and health.available():
                    # Wait before taking a permit or a reservation: a client that goes away during
                    # the backoff then leaves no half-open trial slot or reserved tokens behind.
                    # (A channel known to be unavailable is skipped below without a wait.)
                    await policy.wait(tried - 1)
                    waited = True
                permit = health.begin_attempt()
                if permit is None:
                    queue.pop(0)
                    skipped.append(f"{ch.name}: {_UNAVAILABLE.get(health.status(), 'unavailable')}")
                    if granted is not None:
                        granted.release()
                        granted = None
                    continue
                cap = None if gw.shared else ch.max_concurrency  # shared: Redis counts them all
                turn = queuing.turn if queuing is not None else None  # shared: its place in line
                slot, granted = granted or gw.slots.try_acquire(ch.name, cap, turn), None
                if slot is None:  # full: skipped like a used-up quota; waited for if all are full
                    health.release(permit)
                    full[ch.name] = queue.pop(0)
                    continue
                # The first attempt starts at the request's start; a retry may be seconds later.
                now = gw.clock() if tried or waited else ex.started
                try:
                    reservation, why = await self._reserve(ex, ch, plan, now, turn)
                except BaseException:
                    health.release(permit)
                    raise
                if reservation is None:
                    health.release(permit)
                    if gw.shared:
                        slot.give_back()  # nothing freed: the line is not woken
                    else:
                        slot.release()
                    if why == shared.AT_MAX_CONCURRENCY:
                        full[ch.name] = queue.pop(0)
                    else:
                        queue.pop(0)
                        skipped.append(f"{ch.name}: {why}")
                    continue
                if queuing is not None:
                    queuing.stop(ch.name)  # served after waiting: how long it waited
                if tried:
                    gw.metrics.retry(ex.attempts[-1].channel)  # the channel whose failure cost a retry
                tried += 1
                waited = False
                verdict = (
                    shared.verdict(gw, health, permit, reservation)
                    if gw.shared
                    else Verdict(health, permit)
                )
                try:  # a stream holds its slot until it ends (the relay returns then)
                    outcome = await self._attempt(
                        ex, plan, verdict, reservation, outgoing, adapter
                    )
                except BaseException as exc:
                    self._abandon(ex, ch, verdict, reservation, exc)
                    raise
                finally:
                    slot.release()
                if isinstance(outcome, web.StreamResponse):
                    return outcome
                if outcome is not None:
                    last_reply = outcome
                # Fall back down the list; with one candidate left, retry that one — unless its key
                # was refused (401/403): retrying a broken key cannot help.
                if len(queue) > 1 or (outcome is not None and outcome[1] in (401, 403)):
                    queue.pop(0)
        finally:  # a client gone mid-wait leaves no slot taken, no place in line
            for held in (granted, slot):
                if held is not None:
                    held.release()
            if queuing is not None:
                queuing.leave()
        if refused is not None and not ex.attempts:
            raise refused  # nothing was sent anywhere: the client's field is the reason
        return self._all_failed(ex, last_reply, skipped)

    async def _queue_for_slot(
        self, queuing: SlotQueue, full: dict[str, Candidate]
    ) -> tuple[list[Candidate], Slot | None] | None:
        """Every candidate is at max_concurrency: wait for a slot. The candidates to try next
        (and the slot the queue handed over), or None when ``server.queue_timeout`` is up."""
        if self.gw.shared:  # the count is in Redis; the order is kept by this process's lines
            heads = await queuing.next_turn(full, SHARED_POLL)
            if heads is None:
                return None
            return [full.pop(name) for name in [n for n in full if n in heads]], None
        granted = await queuing.wait(_caps(full))
        if granted is None:
            return None
        return [full.pop(granted.channel)], granted

    async def _reserve(
        self, ex: Exchange, ch: ChannelConfig, plan: _Plan, now: datetime, turn: Turn | None
    ) -> tuple[Reservation | None, str]:
        """Quota tokens for one attempt: (reservation, "") or (None, why the channel is skipped).
        ``turn``: the request's place in this process's lines (shared store: the script keeps
        the channel's line across processes)."""
        gw = self.gw
        counters = gw.counters
        if counters is not None:
            return counters.try_reserve_now(ch.name, ex.reserve_on(ch), plan.limits, now), (
                "quota used"
            )
        if gw.shared:  # one round trip: key limits (first attempt), breaker, quota
            line = gw.slots.place(ch.name, turn) if turn is not None else NOT_WAITING
            return await shared.admit(
                gw, ex, ch, plan.limits, plan.timeouts.total, plan.breaker, now, line
            )
        reservation = await gw.store.try_reserve(ch.name, ex.reserve_on(ch), plan.limits, now)
        return reservation, "quota used"

    def _plan(self, ch: ChannelConfig) -> _Plan:
        """The channel's limits, timeouts and breaker settings, derived once per config."""
        config = self.gw.config
        hit = self._plans.get(ch.name)
        if hit is not None and hit.channel is ch and hit.config is config:
            return hit
        server, cb = config.server, config.circuit_breaker
        total = ch.timeout or server.timeout
        plan = self._plans[ch.name] = _Plan(
            channel=ch,
            config=config,
            limits=Limits(
                day_tokens=ch.daily_limit,
                hour_tokens=ch.hour_limit,
                day_requests=ch.daily_request_limit,
                concurrency=ch.max_concurrency or 0,
            ),
            timeouts=Timeouts(
                total=total,
                connect=ch.connect_timeout or min(server.connect_timeout, total),
                first_byte=ch.first_byte_timeout or total,
            ),
            breaker=(ch.fail_max or cb.fail_max, ch.reset_timeout or cb.reset_timeout),
            proxy=proxy_route(ch, server),
        )
        if len(self._plans) > 4 * len(config.channels) + 16:  # channels renamed by reloads
            self._plans = {ch.name: plan}
        return plan


def _caps(full: dict[str, Candidate]) -> dict[str, int]:
    return {name: c.channel.max_concurrency or 1 for name, c in full.items()}
