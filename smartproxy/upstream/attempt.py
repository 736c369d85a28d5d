"""One attempt at one channel: build the outgoing request, send it, read or relay the answer,
and account a failed one (breaker, failures log, reservation given back).

``AttemptRunner`` is the base of ``client.Dispatcher`` (the failover loop); settling and the
answer's headers come from ``answer.Answerer``. ``_Plan`` is a channel's per-config settings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from .. import fastjson
from ..config import ChannelConfig, Config
from ..providers.base import Adapter, OutgoingRequest, ProxyRoute, Timeouts, UpstreamReply
from ..routing.estimate import answer_tokens
from ..storage.base import Limits, Reservation
from .answer import Answerer
from .encoding import content_coding, decoded
from .errors import AttemptError, UpstreamConnectError
from .exchange import AttemptLog, Exchange, Verdict
from .headers import for_channel
from .relay import relay_stream
from .retry import is_breaker_failure_status, is_retryable_status, parse_retry_after

JSON_TYPE = "application/json"
log = logging.getLogger("smartproxy.upstream")


class AttemptRunner(Answerer):
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
                headers = CIMultiDict(reply.headers)
                if adapter is not None:
                    body = adapter.error(status, _plain(ex, reply.headers, body) or b"")
                    headers["Content-Type"] = JSON_TYPE
                    headers.popall("Content-Encoding", None)
                self._failed_http(ex, ch, health, status, reply.headers, t0)
                if (pending := self._release(reservation)) is not None:
                    await pending
                return ex.attempts[-1], status, headers, body
            # An event stream is relayed as it comes, also when the request did not ask for one
            # (contract §3: never buffered whole); a translated one only when it was asked.
            if status == 200 and _is_sse(reply.headers) and (outgoing.stream or adapter is None):
                translate = adapter.stream(include_usage=ex.client_wants_usage) if adapter else None
                return await relay_stream(self, ex, ch, health, reservation, reply, t0, translate)
            body = await reply.read()
            # An answer the upstream compressed anyway goes back as it came; usage is read from
            # a decoded copy (None: a coding the gateway cannot read, usage is estimated).
            plain = _plain(ex, reply.headers, body)
            usage = None
            if adapter is not None:
                if status >= 400:
                    body = adapter.error(status, plain or b"")
                elif plain is None:
                    coding = reply.headers.get("Content-Encoding")
                    raise UpstreamConnectError(f"answer in an unreadable coding: {coding}")
                else:
                    body, usage = adapter.answer(plain)  # an unreadable answer: AttemptError
                plain = body
            elif status < 400 and plain is not None:
                usage = ex.wire.usage_of_body(plain)
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
            answer_id = ex.wire.id_of_body(plain or b"")
            if answer_id is not None:
                ex.on_answer_id(ch.name, answer_id)
        guess = 0
        if usage is None and status < 400:  # upstream gave none: estimate the answer's text
            guess = answer_tokens(_json_or_none(plain), ex.snap.config.usage.chars_per_token)
        written = self._settle(ex, ch, reservation, status, usage, guess)
        if written is not None:  # the shared quota knows this request ended before its client
            await asyncio.shield(written)
        headers = self._response_headers(ex, ch, reply.headers)
        if adapter is not None:  # the body is the translation, JSON whatever upstream sent
            headers["Content-Type"] = JSON_TYPE
            headers.popall("Content-Encoding", None)
        return web.Response(status=status, body=body, headers=headers)

    def _outgoing(
        self, ex: Exchange, ch: ChannelConfig, adapter: Adapter | None = None
    ) -> OutgoingRequest:
        body = ex.raw_body
        path = ex.path
        mapped = ch.upstream_model(ex.facts.model)
        parsed = ex.json_body()
        if ex.rereadable:
            ex.body = None  # this attempt's request is built below; the next one reads it again
        if adapter is not None and parsed is not None:
            path, body = adapter.request(parsed, model=mapped, channel=ch)
        elif parsed is not None:
            changes: dict[str, Any] = {}
            if mapped != ex.facts.model:
                changes["model"] = mapped
            if ex.facts.stream and not ex.client_wants_usage and ex.wire.ask_stream_usage:
                opts = dict(parsed.get("stream_options") or {})
                opts["include_usage"] = True
                changes["stream_options"] = opts
            if changes:  # every other byte as the client sent it (contract §3)
                body = fastjson.with_members(body, changes) or json.dumps(
                    {**parsed, **changes}, ensure_ascii=False
                ).encode()
        return OutgoingRequest(
            method=ex.request.method,
            path=path,
            # A translated request leaves the client API's own query (Claude Code's ?beta=true).
            query_string=ex.request.rel_url.raw_query_string if adapter is None else "",
            headers=for_channel(ex.headers, ch),
            body=body,
            stream=ex.facts.stream,
            model=mapped,
        )

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
    # Media types are case-insensitive (RFC 9110 8.3.1): "Text/Event-Stream" is a stream too.
    return str(headers.get("Content-Type", ""))[:17].lower() == "text/event-stream"


def _plain(ex: Exchange, headers: Any, body: bytes) -> bytes | None:
    """``body`` without its content coding: itself, decoded, or None when it cannot be."""
    coding = content_coding(headers)
    if coding is None:
        return body
    return decoded(body, coding, ex.snap.config.server.max_body_bytes)


def _json_or_none(body: bytes | None) -> Any:
    if body is None:
        return None
    try:
        return fastjson.loads(body)
    except ValueError:
        return None
