"""Send one client request upstream: attempt -> retry -> failover, then relay and settle usage.

Each attempt: the channel's breaker says yes, a quota reservation succeeds, the provider sends.
Retryable answers (429, 5xx, 401/403) and connection errors/timeouts move down the candidate
list with backoff between attempts; other 4xx come back at once. A stream is failed over only
before its first byte reaches the client; later it ends with an SSE ``error`` event.
The SSE relay is in ``relay``; ``Exchange``, ``AttemptLog``, ``Verdict`` and ``header_safe`` live
in ``exchange`` and are re-exported from here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from ..config import ChannelConfig, Config, RetryConfig
from ..errors import NoChannelAvailable, Untranslatable, UpstreamFailed, UpstreamTimeout
from ..providers import adapter_for
from ..providers.base import Adapter, OutgoingRequest, ProxyRoute, Timeouts, UpstreamReply
from ..routing.pricing import cost_local
from ..routing.router import Candidate
from ..state import Gateway, Snapshot
from ..storage.base import Limits, RequestRecord, Reservation
from . import shared
from .errors import AttemptError
from .exchange import AttemptLog as AttemptLog
from .exchange import Exchange as Exchange
from .exchange import Verdict as Verdict
from .exchange import header_safe as header_safe
from .headers import channel_secrets, for_channel, response_header_allowed
from .proxyconf import proxy_route
from .relay import relay_stream
from .retry import RetryPolicy, is_breaker_failure_status, is_retryable_status, parse_retry_after
from .slots import Slot, SlotQueue
from .wire import tokens_of

log = logging.getLogger("smartproxy.upstream")

SHARED_POLL = 0.05  # with redis, a waiting request looks for a freed slot this often (seconds)

_UNAVAILABLE = {
    "open": "circuit open",
    "half_open": "circuit half-open, trial in flight",
    "cooldown": "cooling down after 429",
}


class Dispatcher:
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
                slot, granted = granted or gw.slots.try_acquire(ch.name, cap), None
                if slot is None:  # full: skipped like a used-up quota; waited for if all are full
                    health.release(permit)
                    full[ch.name] = queue.pop(0)
                    continue
                # The first attempt starts at the request's start; a retry may be seconds later.
                now = gw.clock() if tried or waited else ex.started
                try:
                    reservation, why = await self._reserve(ex, ch, plan, now)
                except BaseException:
                    health.release(permit)
                    raise
                if reservation is None:
                    health.release(permit)
                    slot.release()
                    if why == shared.AT_MAX_CONCURRENCY:
                        full[ch.name] = queue.pop(0)
                    else:
                        queue.pop(0)
                        skipped.append(f"{ch.name}: {why}")
                    continue
                if queuing is not None:
                    queuing.stop()  # served after waiting: how long it waited
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
        finally:  # a client gone mid-wait leaves no slot taken
            for held in (granted, slot):
                if held is not None:
                    held.release()
        if refused is not None and not ex.attempts:
            raise refused  # nothing was sent anywhere: the client's field is the reason
        return self._all_failed(ex, last_reply, skipped)

    async def _queue_for_slot(
        self, queuing: SlotQueue, full: dict[str, Candidate]
    ) -> tuple[list[Candidate], Slot | None] | None:
        """Every candidate is at max_concurrency: wait for a slot. The candidates to try next
        (and the slot the queue handed over), or None when ``server.queue_timeout`` is up."""
        if self.gw.shared:  # the count is in Redis: look again every 50 ms
            if not await queuing.pause(SHARED_POLL):
                return None
            again = list(full.values())
            full.clear()
            return again, None
        granted = await queuing.wait(_caps(full))
        if granted is None:
            return None
        return [full.pop(granted.channel)], granted

    async def _reserve(
        self, ex: Exchange, ch: ChannelConfig, plan: _Plan, now: datetime
    ) -> tuple[Reservation | None, str]:
        """Quota tokens for one attempt: (reservation, "") or (None, why the channel is skipped)."""
        gw = self.gw
        counters = gw.counters
        if counters is not None:
            return counters.try_reserve_now(ch.name, ex.reserve_on(ch), plan.limits, now), (
                "quota used"
            )
        if gw.shared:  # one round trip: key limits (first attempt), breaker, quota
            return await shared.admit(
                gw, ex, ch, plan.limits, plan.timeouts.total, plan.breaker, now
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

    def _release(self, reservation: Reservation) -> Awaitable[None] | None:
        """Give a reservation back: at once for in-process counters, else the store's awaitable."""
        counters = self.gw.counters
        if counters is not None:
            counters.release_now(reservation)
            return None
        return self.gw.store.release(reservation)

    def _abandon(
        self,
        ex: Exchange,
        ch: ChannelConfig,
        verdict: Verdict,
        reservation: Reservation,
        exc: BaseException,
    ) -> None:
        """An attempt raised (a bug, a bad value, a cancelled client) before it settled: give
        the breaker permit and the reserved tokens back. The one place between reserve and
        settle that does so, so that no error path can leave a quota held until restart.

        A client that left a non-streaming request before its answer is billed the prompt
        estimate instead (upstream did the work); a stream cut before its first byte is not."""
        if ex.settled:
            return
        verdict.release()
        if isinstance(exc, asyncio.CancelledError) and not ex.facts.stream:
            self._settle(ex, ch, reservation, 499, None, 0, "client disconnected", estimate=True)
            return
        pending = self._release(reservation)
        if pending is not None:
            self.gw.spawn(pending)

    async def _attempt(
        self,
        ex: Exchange,
        plan: _Plan,
        health: Verdict,
        reservation: Reservation,
        outgoing: OutgoingRequest,
        adapter: Adapter | None,
    ) -> web.StreamResponse | tuple[AttemptLog, int, CIMultiDict[str], bytes] | None:
        """One try at one channel: a response sent to the client, a failed HTTP answer, or None.
        With an ``adapter`` (the channel speaks another API shape) answers, error bodies and
        stream events are translated on the way back."""
        gw = self.gw
        ch = plan.channel
        provider = gw.providers[ch.provider]
        t0 = time.monotonic()
        reply: UpstreamReply | None = None
        try:
            reply = await provider.send(ch, outgoing, plan.timeouts)
            status = reply.status
            if is_retryable_status(status):
                body = await reply.read()
                reply.close()
                if adapter is not None:
                    body = adapter.error(status, body)
                self._failed_http(ex, ch, health, status, reply.headers, t0)
                if (pending := self._release(reservation)) is not None:
                    await pending
                return ex.attempts[-1], status, CIMultiDict(reply.headers), body
            if outgoing.stream and status == 200 and _is_sse(reply.headers):
                translate = adapter.stream(include_usage=ex.client_wants_usage) if adapter else None
                return await relay_stream(self, ex, ch, health, reservation, reply, t0, translate)
            body = await reply.read()
            usage = None
            if adapter is not None:
                if status < 400:
                    body, usage = adapter.answer(body)  # an unreadable answer: AttemptError
                else:
                    body = adapter.error(status, body)
            elif status < 400:
                usage = ex.wire.usage_of_body(body)
        except AttemptError as exc:
            if reply is not None:
                reply.close()
            self._failed_attempt(ex, ch, health, exc, t0)
            if (pending := self._release(reservation)) is not None:
                await pending
            return None
        except BaseException:
            if reply is not None:
                reply.close()
            raise  # ``dispatch`` gives the permit and the reservation back (``_abandon``)
        seconds = time.monotonic() - t0
        ex.attempts.append(AttemptLog(ch.name, status, None, seconds))
        gw.metrics.observe_upstream(ch.name, status, seconds)
        health.failure() if is_breaker_failure_status(status) else health.success()
        if status < 400 and ex.on_answer_id is not None and ex.wire.id_of_body is not None:
            answer_id = ex.wire.id_of_body(body)
            if answer_id is not None:
                ex.on_answer_id(ch.name, answer_id)
        self._settle(ex, ch, reservation, status, usage, content_events=0 if usage is None else -1)
        headers = self._response_headers(ex, ch, reply.headers)
        return web.Response(status=status, body=body, headers=headers)

    def _outgoing(
        self, ex: Exchange, ch: ChannelConfig, adapter: Adapter | None = None
    ) -> OutgoingRequest:
        body = ex.raw_body
        path = ex.path
        mapped = ch.upstream_model(ex.facts.model)
        if adapter is not None and ex.body is not None:
            path, body = adapter.request(ex.body, model=mapped, channel=ch)
        elif ex.body is not None:
            changes: dict[str, Any] = {}
            if mapped != ex.facts.model:
                changes["model"] = mapped
            if ex.facts.stream and not ex.client_wants_usage and ex.wire.ask_stream_usage:
                opts = dict(ex.body.get("stream_options") or {})
                opts["include_usage"] = True
                changes["stream_options"] = opts
            if changes:
                body = json.dumps({**ex.body, **changes}, ensure_ascii=False).encode()
        return OutgoingRequest(
            method=ex.request.method,
            path=path,
            # A translated request leaves the client API's own query (Claude Code's ?beta=true).
            query_string=ex.request.query_string if adapter is None else "",
            headers=for_channel(ex.headers, ch),
            body=body,
            stream=ex.facts.stream,
            model=mapped,
        )

    def _settle(
        self,
        ex: Exchange,
        ch: ChannelConfig,
        reservation: Reservation,
        status: int,
        usage: dict[str, Any] | None,
        content_events: int,
        error: str | None = None,
        *,
        estimate: bool = False,
    ) -> None:
        """Record tokens and cost; runs as a task so a cancelled request still gets billed."""
        gw, snap = self.gw, ex.snap
        ex.settled = True
        source = "upstream"
        if usage is not None:
            prompt, completion = tokens_of(usage)
        elif estimate or status < 400 or content_events > 0:
            # Upstream said nothing: estimate (prompt from the request, one token per chunk sent).
            source = "estimated"
            prompt = ex.facts.prompt_tokens
            completion = max(content_events, 0)
        else:
            source = "none"
            prompt = completion = 0
        if source == "estimated":
            log.info(
                "usage estimated",
                extra={
                    "request_id": ex.request_id,
                    "channel": ch.name,
                    "usage_source": "estimated",
                },
            )
        # Priced at the request's start (a window closing mid-stream changes nothing).
        cost = cost_local(ch, prompt, completion, snap.minutes.at(ex.started).hhmm)
        latency_ms = (time.monotonic() - ex.started_mono) * 1000
        record = RequestRecord(
            ts=ex.started.timestamp(),
            request_id=ex.request_id,
            api_key_name=ex.key_name,
            channel=ch.name,
            model=ex.facts.model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=cost,
            status=status,
            latency_ms=latency_ms,
            stream=ex.facts.stream,
            usage_source=source,
            error=error,
            endpoint=ex.endpoint,
        )
        gw.metrics.add_usage(ch.name, prompt, completion, cost)
        counters = gw.counters
        if counters is not None:  # in-process counters: no task, nothing to cancel
            counters.settle_now(reservation, record, gw.clock())
        elif gw.shared:  # queued for the shared store's next batch: no task either
            shared.settle(gw, reservation, record)
        else:
            gw.spawn(gw.store.settle(reservation, record, gw.clock()))
        if ex.on_settle is not None:
            ex.on_settle(record)

    def _failed_http(
        self, ex: Exchange, ch: ChannelConfig, health: Verdict, status: int, headers: Any, t0: float
    ) -> None:
        seconds = time.monotonic() - t0
        ex.attempts.append(AttemptLog(ch.name, status, None, seconds))
        self.gw.metrics.observe_upstream(ch.name, status, seconds)
        self.gw.failures.add(
            ex.attempts[-1], model=ex.facts.model, request_id=ex.request_id, now=self.gw.clock()
        )
        if status == 429:
            retry_after = parse_retry_after(headers.get("Retry-After"))
            health.rate_limited(retry_after, self.gw.config.circuit_breaker.cooldown_seconds)
        elif status >= 500:
            health.failure()
        else:  # 401/403: the channel's key is broken; fail over, but it is not an outage
            health.release()
        log.warning(
            "upstream %s answered %d; failing over",
            ch.name,
            status,
            extra={"request_id": ex.request_id},
        )

    def _failed_attempt(
        self, ex: Exchange, ch: ChannelConfig, health: Verdict, exc: AttemptError, t0: float
    ) -> None:
        seconds = time.monotonic() - t0
        ex.attempts.append(AttemptLog(ch.name, None, exc.message, seconds, kind=exc.kind))
        self.gw.metrics.observe_upstream(ch.name, exc.kind, seconds)
        self.gw.failures.add(
            ex.attempts[-1], model=ex.facts.model, request_id=ex.request_id, now=self.gw.clock()
        )
        health.failure()
        log.warning(
            "upstream %s failed: %s", ch.name, exc.message, extra={"request_id": ex.request_id}
        )

    def _all_failed(
        self,
        ex: Exchange,
        last_reply: tuple[AttemptLog, int, CIMultiDict[str], bytes] | None,
        skipped: list[str],
    ) -> web.StreamResponse:
        attempts_header = ", ".join(a.short() for a in ex.attempts)
        if last_reply is not None and ex.attempts and ex.attempts[-1] is last_reply[0]:
            _, status, headers, body = last_reply
            # Not marked as this channel's answer, but filtered against its secrets all the same.
            out = self._response_headers(
                ex, None, headers, of=ex.snap.config.channel(last_reply[0].channel)
            )
            out["x-smartproxy-attempts"] = attempts_header
            return web.Response(status=status, body=body, headers=out)
        parts = [a.describe() for a in ex.attempts] + skipped
        detail = "; ".join(parts) if parts else "no attempt could be made"
        if not ex.attempts:
            raise NoChannelAvailable(
                f"no channel could take the request: {detail}",
                headers={"x-smartproxy-attempts": attempts_header},
            )
        if all(a.timed_out for a in ex.attempts):
            raise UpstreamTimeout(
                f"every upstream attempt timed out: {detail}",
                headers={"x-smartproxy-attempts": attempts_header},
            )
        raise UpstreamFailed(
            f"no upstream could answer: {detail}",
            headers={"x-smartproxy-attempts": attempts_header},
        )

    def _response_headers(
        self,
        ex: Exchange,
        ch: ChannelConfig | None,
        upstream: Any,
        *,
        of: ChannelConfig | None = None,
    ) -> CIMultiDict[str]:
        out: CIMultiDict[str] = CIMultiDict()
        # The client's key limits replace the channel account's (which describe our upstream key).
        ours = ex.limit_headers
        secrets = channel_secrets(ch or of)
        for k, v in upstream.items():
            if response_header_allowed(k, v, secrets) and not (
                ours and k.lower().startswith("x-ratelimit-")
            ):
                out.add(k, v)
        if ch is not None:
            out["x-smartproxy-channel"] = header_safe(ch.name)
        out["x-request-id"] = ex.request_id
        for k, v in ours.items():
            if k.lower() != "retry-after":
                out[k] = v
        return out


def _caps(full: dict[str, Candidate]) -> dict[str, int]:
    return {name: c.channel.max_concurrency or 1 for name, c in full.items()}


@dataclass(slots=True, frozen=True)
class _Plan:
    """What one channel of one config needs on every attempt, built once (see ``_plan``)."""

    channel: ChannelConfig
    config: Config
    limits: Limits
    timeouts: Timeouts
    breaker: tuple[int, float]  # fail_max, reset_timeout
    proxy: ProxyRoute | None  # outbound proxy (upstream.proxyconf)


def _is_sse(headers: Any) -> bool:
    return str(headers.get("Content-Type", "")).startswith("text/event-stream")
