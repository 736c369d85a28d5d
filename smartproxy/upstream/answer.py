"""The answer side of an attempt: settle usage and cost, shape the response headers, and the
error (or the latest upstream reply) when every candidate failed.

``Answerer`` is the base of ``attempt.AttemptRunner`` and so of ``client.Dispatcher``; the stream
relay (``relay``) calls ``_settle`` and ``_response_headers`` through ``exchange.Settler``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from ..config import ChannelConfig
from ..errors import NoChannelAvailable, UpstreamFailed, UpstreamTimeout
from ..routing.pricing import cost_local
from ..state import Gateway
from ..storage.base import RequestRecord, Reservation
from . import shared
from .exchange import AttemptLog, Exchange, header_safe
from .headers import channel_secrets, response_header_allowed
from .wire import tokens_of

log = logging.getLogger("smartproxy.upstream")


class Answerer:
    gw: Gateway

    def _settle(
        self,
        ex: Exchange,
        ch: ChannelConfig,
        reservation: Reservation,
        status: int,
        usage: dict[str, Any] | None,
        completion_estimate: int,
        error: str | None = None,
        *,
        estimate: bool = False,
    ) -> asyncio.Future[None] | None:
        """Record tokens and cost; runs as a task so a cancelled request still gets billed.

        With a shared store and a channel whose quota or concurrency cap other processes check:
        the settlement is sent at once and its future returned, for the answer to wait on. A
        client that sends its next request the moment it has this answer, through another
        process, must find this request's reservation gone (contract §1: exactly as in one
        process), or that process would count it as in flight and send the request elsewhere
        while the quota still has room.

        ``completion_estimate`` is billed when upstream gave no ``usage``: for a stream, one token
        per content chunk sent; for a whole answer, the estimate of its text."""
        gw, snap = self.gw, ex.snap
        ex.settled = True
        source = "upstream"
        if usage is not None:
            prompt, completion = tokens_of(usage)
        elif estimate or status < 400 or completion_estimate > 0:
            # Upstream said nothing: estimate (prompt from the request, completion from the answer).
            source = "estimated"
            prompt = ex.facts.prompt_tokens
            completion = max(completion_estimate, 0)
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
        written = None
        if counters is not None:  # in-process counters: no task, nothing to cancel
            counters.settle_now(reservation, record, gw.clock())
        elif gw.shared:  # queued for the shared store's next batch: no task either
            # What other processes check (a channel's quota or cap, the key's tokens per
            # minute or budget): written before the client sees the end, so that its next
            # request, through any process, finds it counted.
            limited = (
                ch.has_quota or bool(ch.max_concurrency) or getattr(reservation, "ordered", False)
            )
            written = shared.settle(gw, reservation, record, urgent=limited)
            if not limited:
                written = None
        else:
            gw.spawn(gw.store.settle(reservation, record, gw.clock()))
        if ex.on_settle is not None:
            ex.on_settle(record)
        return written

    def _all_failed(
        self,
        ex: Exchange,
        last_reply: tuple[AttemptLog, int, CIMultiDict[str], bytes] | None,
        skipped: list[str],
    ) -> web.StreamResponse:
        """Every attempt failed. An upstream that answered at all is heard (contract §3): the
        latest HTTP answer goes back unchanged, also when later attempts got no answer; a
        gateway-made 502/503/504 only when no upstream answered. ``last_reply`` is that latest
        answer (the only one kept)."""
        attempts_header = ", ".join(a.short() for a in ex.attempts)
        if last_reply is not None:
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
        """The upstream's headers as the header policy lets them through (``headers``), plus
        ``x-smartproxy-channel`` and ``x-request-id``. The client key's ``x-ratelimit-*`` fill in
        only names the upstream answer does not carry: an upstream header is never dropped or
        overwritten (contract §3: the answer is returned unchanged)."""
        out: CIMultiDict[str] = CIMultiDict()
        secrets = channel_secrets(ch or of)
        for k, v in upstream.items():
            if response_header_allowed(k, v, secrets):
                out.add(k, v)
        for k, v in ex.limit_headers.items():
            if k not in out and k.lower() != "retry-after":
                out[k] = v
        if ch is not None:
            out["x-smartproxy-channel"] = header_safe(ch.name)
        out["x-request-id"] = ex.request_id
        return out
