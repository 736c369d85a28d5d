"""The streaming half of an attempt: relay an upstream SSE answer to the client event by event.

``relay_stream`` waits for the first chunk (until then a failure is invisible to the client and the
dispatcher may fail over), then streams, drops the usage events the client did not ask for, ends a
cut-short or broken stream with an SSE ``error`` event, and settles usage through the dispatcher.
A stream the upstream compressed anyway is decoded first (``encoding``); one in a coding the
gateway cannot read is relayed byte for byte, unread (a break then closes the connection).
A stream the upstream ended with its own ``error`` event gets no second one, but is settled as a
failure like a broken stream (status 502, the upstream's message).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from ..config import ChannelConfig
from ..providers.base import StreamAdapter, UpstreamReply
from ..storage.base import Reservation
from .encoding import Inflater, content_coding, inflated, readable
from .errors import AttemptError, UpstreamConnectError
from .exchange import AttemptLog, Exchange, Settler, Verdict
from .sse import EventSplitter, StreamTally


async def relay_stream(
    dispatcher: Settler,
    ex: Exchange,
    ch: ChannelConfig,
    health: Verdict,
    reservation: Reservation,
    reply: UpstreamReply,
    t0: float,
    translate: StreamAdapter | None = None,
) -> web.StreamResponse:
    """Relay SSE event by event; fail over only while nothing has reached the client.

    With ``translate`` (the channel speaks another API shape) each upstream event goes through
    it and it keeps the tally; an error it raises before the response starts fails over too.
    """
    chunks = reply.iter_chunks()
    # A stream the upstream compressed anyway: decoded as it comes and relayed decoded (its
    # events are read); in a coding the gateway cannot read, relayed as it came, unread, its
    # usage estimated (a translation cannot be made of it: the next channel is tried).
    coding = content_coding(reply.headers)
    opaque = coding is not None and not readable(coding)
    if coding is not None and not opaque:
        chunks = inflated(chunks, Inflater(coding, ex.snap.config.server.max_body_bytes))
    elif opaque and translate is not None:
        raise UpstreamConnectError(f"stream in an unreadable coding: {coding}")
    splitter = EventSplitter()
    tally = StreamTally() if translate is None else translate.tally
    # Only the usage chunk the gateway asked for goes (a stream the client did not ask for
    # was not asked for usage either).
    strip_usage = ex.facts.stream and not ex.client_wants_usage
    wire = ex.wire
    inspect = wire.inspect
    # The first chunk decides: before it, a failure is invisible to the client.
    try:
        first = await chunks.__anext__()  # AttemptError propagates to the failover loop
    except StopAsyncIteration:
        raise UpstreamConnectError("upstream closed the stream before sending anything") from None
    first_out: list[bytes] | None = None
    if translate is not None:  # an upstream error event here still fails over (AttemptError)
        first_out = [out for event in splitter.feed(first) for out in translate.feed(event)]
    seconds_to_first = time.monotonic() - t0
    headers = dispatcher._response_headers(ex, ch, reply.headers)
    if coding is not None and not opaque:
        headers.popall("Content-Encoding", None)
    resp = web.StreamResponse(status=reply.status, headers=headers)
    ex.attempts.append(AttemptLog(ch.name, reply.status, None, seconds_to_first))
    status = reply.status
    error: str | None = None
    settled = False  # at the end event, before the client can see it (see below)
    try:
        await resp.prepare(ex.request)
        pending: bytes | None = first
        if first_out is not None:
            pending = None
            if first_out:
                await resp.write(b"".join(first_out))
        while True:
            if pending is None:
                try:
                    pending = await chunks.__anext__()
                except StopAsyncIteration:
                    break
            if opaque:
                await resp.write(pending)
                pending = None
                continue
            out = []
            for event in splitter.feed(pending):
                if translate is not None:
                    out.extend(translate.feed(event))
                elif inspect(event, tally) and strip_usage:
                    continue
                else:
                    out.append(event)
            pending = None
            if tally.response_id is not None and ex.on_answer_id is not None:
                ex.on_answer_id(ch.name, tally.response_id)  # before the client can know it
                ex.on_answer_id = None
            if out:
                if tally.done and not settled:
                    # The stream's end is in these events: settle first, so that a client
                    # that starts its next request the moment it reads the end, through
                    # another process, finds this reservation gone (``Settler._settle``).
                    settled = True
                    if tally.error is not None:  # the upstream's own error event: a failure
                        status, error = 502, tally.error
                    written = _finish_stream(dispatcher, ex, ch, health, reservation, tally,
                                             status, error, t0)
                    if written is not None:
                        await asyncio.shield(written)
                await resp.write(b"".join(out))
        rest = splitter.rest()
        if rest and translate is not None:  # a last event without its blank line
            rest = b"".join(translate.feed(rest))
        if rest:
            await resp.write(rest)
        if not tally.done and wire.ends_with_marker and not opaque:
            # The upstream closed cleanly but never ended the stream: the answer is cut short.
            error = "upstream closed the stream before its end event"
            await resp.write(wire.error_event(error))
        await resp.write_eof()
    except AttemptError as exc:
        error = exc.message
        status = 502
        if opaque:  # an event would corrupt the encoded bytes: the client sees a broken body
            if ex.request.transport is not None:
                ex.request.transport.close()
        else:
            await _write_quietly(resp, wire.error_event(f"upstream stream broke: {exc.message}"))
    except (ConnectionError, asyncio.CancelledError) as exc:
        error = "client disconnected"
        status = 499
        reply.close()
        if not settled:
            _finish_stream(dispatcher, ex, ch, health, reservation, tally, status, error, t0)
        if isinstance(exc, asyncio.CancelledError):
            raise
        return resp
    finally:
        reply.close()
    if not settled:
        _finish_stream(dispatcher, ex, ch, health, reservation, tally, status, error, t0)
    return resp


def _finish_stream(
    dispatcher: Settler,
    ex: Exchange,
    ch: ChannelConfig,
    health: Verdict,
    reservation: Reservation,
    tally: StreamTally,
    status: int,
    error: str | None,
    t0: float,
) -> asyncio.Future[None] | None:
    seconds = time.monotonic() - t0
    dispatcher.gw.metrics.observe_upstream(ch.name, status if status != 499 else 200, seconds)
    if error and status != 499:  # broken, or closed cleanly but cut short: an upstream failure
        health.failure()
    else:
        health.success()
    return dispatcher._settle(ex, ch, reservation, status, tally.usage, tally.content_events,
                              error)


async def _write_quietly(resp: web.StreamResponse, data: bytes) -> None:
    try:
        await resp.write(data)
        await resp.write_eof()
    except (ConnectionError, RuntimeError):
        pass
