"""The relay's push mode (``relay._Pump``): events written in the upstream connection's callback
while the client keeps up, and handed to the relay coroutine, in order, whenever it must act
(the stream's end, a full client buffer, events behind ones it holds). The end-to-end stream
tests (``test_e2e_proxy``, ``test_e2e_failover``, ...) run through it too."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from smartproxy.upstream.errors import UpstreamConnectError
from smartproxy.upstream.relay import BACKLOG_HIGH, CLIENT_HIGH, _Pump
from smartproxy.upstream.sse import EventSplitter, StreamTally
from smartproxy.upstream.wire import CHAT


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.buffered = 0  # what get_write_buffer_size says

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        self.written.append(data)


class Writer:
    chunked = True
    length = None
    _compress = None

    def __init__(self) -> None:
        self.output_size = 0
        self.headers_sent = False

    def send_headers(self) -> None:
        self.headers_sent = True


class Reply:
    def __init__(self) -> None:
        self.paused = False
        self.error: Exception | None = None

    def push(self, sink: Any, end: Any, raw: Any = None) -> None:
        self.sink, self.end, self.raw = sink, end, raw

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def event(i: int) -> bytes:
    return b'data: {"choices":[{"delta":{"content":"t%d"}}]}\n\n' % i


def pump() -> tuple[_Pump, Transport, Reply, Writer, StreamTally]:
    transport, writer, reply, tally = Transport(), Writer(), Reply(), StreamTally()
    ex: Any = SimpleNamespace(wire=CHAT, on_answer_id=None,
                              request=SimpleNamespace(transport=transport))  # fmt: skip
    resp: Any = SimpleNamespace(_payload_writer=writer)
    ch: Any = SimpleNamespace(name="a")
    p = _Pump.start(resp, reply, reply.push, ex, ch, EventSplitter(), None, tally, True)
    assert p is not None and writer.headers_sent and reply.sink == p.sink and reply.raw == p.raw
    return p, transport, reply, writer, tally


async def test_events_are_written_in_the_callback_framed_as_chunks() -> None:
    p, transport, _, writer, tally = pump()
    p.sink(event(0) + event(1)[:10])  # a whole event and the start of the next
    p.sink(event(1)[10:])
    both = event(0), event(1)
    assert transport.written == [b"%x\r\n%s\r\n" % (len(e), e) for e in both]
    assert writer.output_size == sum(map(len, transport.written))
    assert tally.content_events == 2


def framed(*data: bytes) -> tuple[bytes, list[int]]:
    """Chunks as one read, and where the data of each starts."""
    read, starts = b"", []
    for d in data:
        head = b"%x\r\n" % len(d)
        starts.append(len(read) + len(head))
        read += head + d + b"\r\n"
    return read, starts


async def test_a_chunk_of_one_ordinary_event_goes_on_as_it_came() -> None:
    """``raw``: an upstream chunk that is one plain event is written on framing and all (no
    split, inspection or new framing), counted as ``inspect_event`` counts it; one with a
    usage object, several events, a CR or another shape is left to ``sink``."""
    p, transport, _, writer, tally = pump()
    nulled = b'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}\n\n'
    spaced = b'data: {"choices": [{"delta": {"content": "x"}}], "usage": null}\n\n'
    reads = [framed(event(0)), framed(nulled), framed(event(1), spaced, nulled, event(2))]
    for read in reads:
        assert p.raw(*read) is True
    assert transport.written == [read for read, _ in reads]
    assert writer.output_size == sum(map(len, transport.written)) and tally.content_events == 6
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n'
    for data in (usage, event(1) + event(2), event(1).replace(b"\n", b"\r\n"),
                 b"data: [DONE]\n\n", b"event: x\ndata: {}\n\n", b": keep-alive\n\n",
                 b'data: {"a":1}\n\n\n', b": data: {\n\n"):  # fmt: skip
        assert p.raw(*framed(data)) is False, data
        assert p.raw(*framed(event(3), data)) is False, data  # one such chunk among others
    assert len(transport.written) == 3 and tally.content_events == 6


@pytest.mark.parametrize("state", ["part of an event held", "events held", "buffer full", "translated"])
async def test_a_plain_chunk_waits_its_turn(state: str) -> None:
    """Whatever holds ``raw`` back leaves the chunk to ``sink``, which keeps the order."""
    p, transport, _, _, tally = pump()
    if state == "part of an event held":
        p.sink(event(0)[:10])
    elif state == "events held":
        transport.buffered = CLIENT_HIGH + 1
        p.sink(event(0))
        transport.buffered = 0
    elif state == "buffer full":
        transport.buffered = CLIENT_HIGH + 1
    else:  # events translated (or another wire's): not offered whole chunks at all
        reply = Reply()
        ex: Any = SimpleNamespace(wire=CHAT, on_answer_id=None,
                                  request=SimpleNamespace(transport=transport))  # fmt: skip
        resp: Any = SimpleNamespace(_payload_writer=Writer())
        translate: Any = SimpleNamespace(tally=tally)
        ch: Any = SimpleNamespace(name="a")
        q = _Pump.start(resp, reply, reply.push, ex, ch, EventSplitter(), translate, tally, True)
        assert q is not None and reply.raw is None
        p._plain = False
    assert p.raw(*framed(event(1))) is False
    assert transport.written == [] and tally.content_events == (state == "events held")


async def test_a_full_client_buffer_leaves_events_to_the_coroutine_in_order() -> None:
    p, transport, reply, _, _ = pump()
    transport.buffered = CLIENT_HIGH + 1
    p.sink(event(0))
    assert transport.written == []
    assert await p.next() == [event(0)]  # the coroutine writes it (and drains)
    transport.buffered = 0
    p.sink(event(1))  # the coroutine still holds event 0: event 1 queues behind it
    assert transport.written == []
    assert await p.next() == [event(1)]
    p.sink(b"x" * (BACKLOG_HIGH + 1) + b"\n\n")  # while held: queued, and upstream paused
    assert reply.paused
    assert (await p.next())[0].startswith(b"xxx")
    reply.end()
    assert await p.next() is None and not reply.paused  # nothing held: read on
    p.sink(event(2))
    assert transport.written == [b"%x\r\n%s\r\n" % (len(event(2)), event(2))]


async def test_the_stream_end_and_the_usage_chunk_go_to_the_coroutine() -> None:
    p, transport, _, _, tally = pump()
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
    p.sink(event(0) + usage)  # the usage chunk the client did not ask for: left out
    assert transport.written == [b"%x\r\n%s\r\n" % (len(event(0)), event(0))]
    p.sink(b"data: [DONE]\n\n")
    assert tally.done and tally.usage == {"prompt_tokens": 1, "completion_tokens": 2}
    assert len(transport.written) == 1  # the end waits: it is settled before it is written
    assert await p.next() == [b"data: [DONE]\n\n"]


async def test_a_broken_upstream_is_raised_by_next() -> None:
    p, _, reply, _, _ = pump()
    reply.error = UpstreamConnectError("connection broke mid-body (payload not completed)")
    reply.end()
    with pytest.raises(UpstreamConnectError):
        await p.next()
