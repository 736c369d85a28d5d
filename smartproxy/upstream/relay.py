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
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..config import ChannelConfig
from ..providers.base import StreamAdapter, UpstreamReply
from ..storage.base import Reservation
from .encoding import Inflater, content_coding, inflated, readable
from .errors import AttemptError, UpstreamConnectError
from .exchange import AttemptLog, Exchange, Settler, Verdict
from .sse import EventSplitter, StreamTally, inspect_event


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
    resp = _EventStream(status=reply.status, headers=headers)
    if ex.request.version < (1, 1):
        # HTTP/1.0 has no chunked encoding: the stream ends when the connection does (aiohttp
        # kept a keep-alive HTTP/1.0 connection open after the last event).
        resp.force_close()
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
        # Push mode (the lean client's answers, read as they come): after the first chunk,
        # each chunk is relayed in the upstream connection's own callback (``_Pump``).
        push = getattr(reply, "push", None) if coding is None else None
        pump: _Pump | None = None
        while True:
            if pending is not None:
                if opaque:
                    await resp.write(pending)
                    pending = None
                    continue
                out = _events(pending, splitter, translate, inspect, tally, strip_usage)
                pending = None
                if tally.response_id is not None and ex.on_answer_id is not None:
                    ex.on_answer_id(ch.name, tally.response_id)  # before the client knows it
                    ex.on_answer_id = None
            elif pump is not None:
                got = await pump.next()  # the upstream's AttemptError propagates
                if got is None:
                    break
                out = got
            else:
                _send_head(resp)  # before waiting: the client sees the answer start
                try:
                    pending = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                continue
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
                        _send_head(resp)  # the head need not wait for the settlement
                        await asyncio.shield(written)
                await resp.write(b"".join(out))
            if push is not None:  # once, after the first chunk
                pump = _Pump.start(resp, reply, push, ex, ch, splitter, translate, tally,
                                   strip_usage)
                push = None
                aclose = getattr(chunks, "aclose", None)
                if pump is not None and aclose is not None:
                    await aclose()  # its chunks go to the pump from now on
        rest = splitter.rest()
        if rest and translate is not None:  # a last event without its blank line
            rest = b"".join(translate.feed(rest))
        elif rest and not opaque:
            # A last event without its blank line: completed when it ends the stream (a bare
            # "data: [DONE]\n"); else a piece cut off mid-event, which an SSE client discards
            # anyway, left out so that it cannot run into the error event below.
            rest = rest.rstrip(b"\r\n") + b"\n\n"
            if (inspect(rest, tally) and strip_usage) or not tally.done:
                rest = b""
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


class _EventStream(web.StreamResponse):
    """A relayed stream's response: its head goes out with the first events, in one write and
    one segment, not alone before them (``_send_head`` sends it before any wait: for more
    events, or for the settlement that the stream's end waits for)."""

    _send_headers_immediately = False


def _send_head(resp: web.StreamResponse) -> None:
    writer = getattr(resp, "_payload_writer", None)
    if writer is not None:
        writer.send_headers()  # once; a no-op after


def _events(
    data: bytes,
    splitter: EventSplitter,
    translate: StreamAdapter | None,
    inspect: Callable[[bytes, StreamTally], bool],
    tally: StreamTally,
    strip_usage: bool,
) -> list[bytes]:
    """The events of ``data`` as the client gets them (translated; the usage chunk the
    client did not ask for left out)."""
    out: list[bytes] = []
    for event in splitter.feed(data):
        if translate is not None:
            out.extend(translate.feed(event))
        elif inspect(event, tally) and strip_usage:
            continue
        else:
            out.append(event)
    return out


BACKLOG_HIGH = 256 * 1024  # bytes held for the relay coroutine before the upstream is paused
CLIENT_HIGH = 64 * 1024  # bytes waiting in the client's socket buffer: leave it to the coroutine


class _Pump:
    """Push mode: each upstream chunk is split into events, inspected (usage, the answer's
    id) and written to the client in the upstream connection's ``data_received``, without a
    wake-up of the relay coroutine per chunk (at 1,000 streams of 64 events that wake-up was
    a large share of the gateway's CPU, issue [8]). What needs the coroutine is left to it in
    ``backlog``, in order: the events that end the stream (settled before the client sees
    them), events while the client's buffer is full (it drains), and what comes while it holds
    earlier events. An error is raised by ``next``."""

    __slots__ = (
        "_transport", "_writer", "_chunked", "_reply", "_ex", "_channel", "_splitter",
        "_translate", "_inspect", "_tally", "_strip", "_backlog", "_size", "_held", "_error",
        "_ended", "_kick", "_loop", "_plain",
    )  # fmt: skip

    def __init__(self, transport: Any, writer: Any, reply: Any, ex: Exchange, ch: ChannelConfig,
                 splitter: EventSplitter, translate: StreamAdapter | None, tally: StreamTally,
                 strip_usage: bool) -> None:  # fmt: skip
        self._transport, self._writer, self._chunked = transport, writer, bool(writer.chunked)
        self._reply, self._ex, self._channel = reply, ex, ch.name
        self._splitter, self._translate, self._tally = splitter, translate, tally
        self._inspect, self._strip = ex.wire.inspect, strip_usage
        self._backlog: list[bytes] = []
        self._size = 0
        self._held = False  # the coroutine is writing events: later ones queue behind them
        self._error: Exception | None = None
        self._ended = False
        self._kick: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        # Chat completions relayed as they came: an upstream chunk holding one ordinary event
        # can go on to the client framing and all (``raw``).
        self._plain = translate is None and self._chunked and self._inspect is inspect_event

    @classmethod
    def start(cls, resp: web.StreamResponse, reply: Any, push: Callable[..., None],
              ex: Exchange, ch: ChannelConfig, splitter: EventSplitter,
              translate: StreamAdapter | None, tally: StreamTally,
              strip_usage: bool) -> _Pump | None:  # fmt: skip
        """A pump on ``reply``, or None when the response's writer is not one it can write
        past (compressed, or with a length)."""
        writer = getattr(resp, "_payload_writer", None)
        transport = ex.request.transport
        if (writer is None or transport is None or getattr(writer, "_compress", None) is not None
                or getattr(writer, "length", None) is not None):  # fmt: skip
            return None
        writer.send_headers()  # the headers go first (they wait for the first body write)
        pump = cls(transport, writer, reply, ex, ch, splitter, translate, tally, strip_usage)
        push(pump.sink, pump.end, pump.raw if pump._plain else None)
        return pump

    def raw(self, framed: bytes, starts: list[int]) -> bool:
        """Upstream chunks as read, framing and all (their data at ``starts``, ``whole_chunks``):
        written on to the client as they are when each holds exactly one ordinary event,
        ``data: {...}`` on one line, none the usage chunk (``"usage"`` only as ``null``: each is
        one content event, as ``inspect_event`` counts it), and nothing is held before them;
        else False (their data goes to ``sink``)."""
        n = len(starts)
        # Four LFs a chunk (its size line's, the event's line and blank line, its end) and two
        # CRs (the framing's): no event holds a second line or a CR.
        if not (self._plain and framed.count(b"\n") == 4 * n and framed.count(b"\r") == 2 * n
                and framed.count(b"\n\n\r\n") == n):  # fmt: skip
            return False
        for start in starts:
            if not framed.startswith(b"data: {", start):
                return False
        if b'"usage"' in framed and framed.count(b'"usage"') != (
            framed.count(b'"usage":null') + framed.count(b'"usage": null')
        ):
            return False
        if self._error is not None or not self._splitter.idle() or not self._straight_on():
            return False
        self._tally.content_events += n
        self._writer.output_size += len(framed)
        self._transport.write(framed)
        return True

    def _straight_on(self) -> bool:
        """Events may be written to the client now: nothing held before them, the stream's end
        not among what came (it is settled first), and the client's buffer not full."""
        t = self._transport
        return not (self._held or self._backlog or self._tally.done or t.is_closing()
                    or t.get_write_buffer_size() > CLIENT_HIGH)  # fmt: skip

    def sink(self, data: bytes) -> None:
        if self._error is not None:
            return
        try:
            out = _events(data, self._splitter, self._translate, self._inspect, self._tally,
                          self._strip)  # fmt: skip
        except Exception as exc:  # a translation's upstream error event (or a bug): raised
            self._error = exc  # by the coroutine, as it would have raised it reading the chunk
            self._wake()
            return
        ex, tally = self._ex, self._tally
        if tally.response_id is not None and ex.on_answer_id is not None:
            ex.on_answer_id(self._channel, tally.response_id)  # before the client knows it
            ex.on_answer_id = None
        if not out:
            return
        if not self._straight_on():
            self._backlog.extend(out)
            self._size += sum(map(len, out))
            if self._size > BACKLOG_HIGH:
                self._reply.pause_reading()
            self._wake()
            return
        payload = out[0] if len(out) == 1 else b"".join(out)
        if self._chunked:
            payload = b"%x\r\n%b\r\n" % (len(payload), payload)
        self._writer.output_size += len(payload)
        self._transport.write(payload)

    def end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        kick = self._kick
        if kick is not None:
            self._kick = None
            if not kick.done():
                kick.set_result(None)

    async def next(self) -> list[bytes] | None:
        """The events the coroutine writes next; None at the stream's end."""
        while True:
            if self._backlog:
                out, self._backlog, self._size = self._backlog, [], 0
                self._held = True
                return out
            self._held = False
            self._reply.resume_reading()
            if self._error is not None:
                raise self._error
            if self._ended:
                error = self._reply.error
                if error is not None:
                    raise error
                return None
            self._kick = self._loop.create_future()
            await self._kick


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
