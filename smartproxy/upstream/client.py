"""Send one client request upstream: attempt -> retry -> failover, then relay and settle usage.

Each attempt: the channel's breaker says yes, a quota reservation succeeds, the provider sends.
Retryable answers (429, 5xx, 401/403) and connection errors/timeouts move down the candidate
list with backoff between attempts; other 4xx come back at once. A stream is failed over only
before its first byte reaches the client; later it ends with an SSE ``error`` event.
The SSE relay is in ``relay``; ``Exchange``, ``AttemptLog``, ``Verdict`` and ``header_safe`` live
in ``exchange`` and are re-exported from here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from ..config import ChannelConfig, Config, RetryConfig
from ..errors import NoChannelAvailable, Untranslatable, UpstreamFailed, UpstreamTimeout
from ..providers import adapter_for
from ..providers.base import Adapter, OutgoingRequest, Timeouts, UpstreamReply
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
from .relay import relay_stream
from .retry import RetryPolicy, is_breaker_failure_status, is_retryable_status, parse_retry_after
from .sse import usage_of_body

log = logging.getLogger("smartproxy.upstream")

# Upstream response headers never relayed (hop-by-hop, or recomputed by our server).
_DROP_RESPONSE = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
        "Content-Encoding",
        "Date",
        "Server",
    )
)


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
        while queue and tried < policy.max_attempts:
            ch = queue[0].channel
            plan = self._plan(ch)
            adapter = adapter_for(ch.provider, ex.path)
            try:
                outgoing = self._outgoing(ex, ch, adapter)
            except Untranslatable as exc:  # this channel's API cannot say it; another may
                queue.pop(0)
                skipped.append(f"{ch.name}: {exc.message}")
                refused = refused or exc
                continue
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
                continue
            # The first attempt starts at the request's start; a retry may be seconds later.
            now = gw.clock() if tried or waited else ex.started
            counters = gw.counters
            why = "quota used"
            if counters is not None:
                reservation = counters.try_reserve_now(ch.name, ex.reserve_on(ch), plan.limits, now)
            elif gw.shared:  # one round trip: key limits (first attempt), breaker, quota
                try:
                    reservation, why = await shared.admit(
                        gw, ex, ch, plan.limits, plan.timeouts.total, plan.breaker, now
                    )
                except BaseException:
                    health.release(permit)
                    raise
            else:
                reservation = await gw.store.try_reserve(
                    ch.name, ex.reserve_on(ch), plan.limits, now
                )
            if reservation is None:
                health.release(permit)
                queue.pop(0)
                skipped.append(f"{ch.name}: {why}")
                continue
            if tried:
                gw.metrics.retry(ex.attempts[-1].channel)  # the channel whose failure cost a retry
            tried += 1
            waited = False
            verdict = shared.verdict(gw, health, permit, reservation) if gw.shared else Verdict(
                health, permit
            )
            outcome = await self._attempt(ex, plan, verdict, reservation, outgoing, adapter)
            if isinstance(outcome, web.StreamResponse):
                return outcome
            if outcome is not None:
                last_reply = outcome
            # Fall back down the list; with one candidate left, retry that one.
            if len(queue) > 1:
                queue.pop(0)
        if refused is not None and not ex.attempts:
            raise refused  # nothing was sent anywhere: the client's field is the reason
        return self._all_failed(ex, last_reply, skipped)

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
            ),
            timeouts=Timeouts(
                total=total,
                connect=ch.connect_timeout or min(server.connect_timeout, total),
                first_byte=ch.first_byte_timeout or total,
            ),
            breaker=(ch.fail_max or cb.fail_max, ch.reset_timeout or cb.reset_timeout),
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
                translate = (
                    adapter.stream(include_usage=ex.client_wants_usage) if adapter else None
                )
                return await relay_stream(
                    self, ex, ch, health, reservation, reply, t0, translate
                )
            body = await reply.read()
            usage = None
            if adapter is not None:
                if status < 400:
                    body, usage = adapter.answer(body)  # an unreadable answer: AttemptError
                else:
                    body = adapter.error(status, body)
            elif status < 400:
                usage = usage_of_body(body)
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
            if not ex.settled:  # cancelled before any verdict: give everything back
                health.release()
                if (pending := self._release(reservation)) is not None:
                    gw.spawn(pending)
            raise
        seconds = time.monotonic() - t0
        ex.attempts.append(AttemptLog(ch.name, status, None, seconds))
        gw.metrics.observe_upstream(ch.name, status, seconds)
        health.failure() if is_breaker_failure_status(status) else health.success()
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
            if ex.facts.stream and not ex.client_wants_usage and ex.path != "/embeddings":
                opts = dict(ex.body.get("stream_options") or {})
                opts["include_usage"] = True
                changes["stream_options"] = opts
            if changes:
                body = json.dumps({**ex.body, **changes}, ensure_ascii=False).encode()
        return OutgoingRequest(
            method=ex.request.method,
            path=path,
            query_string=ex.request.query_string,
            headers=ex.headers,
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
    ) -> None:
        """Record tokens and cost; runs as a task so a cancelled request still gets billed."""
        gw, snap = self.gw, ex.snap
        ex.settled = True
        source = "upstream"
        if usage is not None:
            prompt = int(usage.get("prompt_tokens") or 0)
            completion = int(usage.get("completion_tokens") or 0)
            if not completion and usage.get("total_tokens"):
                completion = max(0, int(usage["total_tokens"]) - prompt)
        elif status < 400 or content_events > 0:
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
        self.gw.failures.add(ex.attempts[-1], model=ex.facts.model, request_id=ex.request_id,
                             now=self.gw.clock())
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
        self.gw.failures.add(ex.attempts[-1], model=ex.facts.model, request_id=ex.request_id,
                             now=self.gw.clock())
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
            out = self._response_headers(ex, None, headers)
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
        self, ex: Exchange, ch: ChannelConfig | None, upstream: Any
    ) -> CIMultiDict[str]:
        out: CIMultiDict[str] = CIMultiDict()
        # The client's key limits replace the channel account's (which describe our upstream key).
        ours = ex.limit_headers
        for k, v in upstream.items():
            lower = k.lower()
            if lower not in _DROP_RESPONSE and not (ours and lower.startswith("x-ratelimit-")):
                out.add(k, v)
        if ch is not None:
            out["x-smartproxy-channel"] = header_safe(ch.name)
        out["x-request-id"] = ex.request_id
        for k, v in ours.items():
            if k.lower() != "retry-after":
                out[k] = v
        return out


@dataclass(slots=True, frozen=True)
class _Plan:
    """What one channel of one config needs on every attempt, built once (see ``_plan``)."""

    channel: ChannelConfig
    config: Config
    limits: Limits
    timeouts: Timeouts
    breaker: tuple[int, float]  # fail_max, reset_timeout


def _is_sse(headers: Any) -> bool:
    return str(headers.get("Content-Type", "")).startswith("text/event-stream")
