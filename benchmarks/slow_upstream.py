"""A fake OpenAI-compatible upstream that holds 10,000+ slow requests cheaply (for ``concurrency.py``).

``fast_upstream.py`` is an aiohttp app: fine at 50 connections, but at 10,000 in flight aiohttp's own
per-request cost would make the fake upstream, not the proxy, the bottleneck. This one is a bare
``asyncio.Protocol`` on uvloop with a minimal HTTP/1.1 (keep-alive) parser: each request costs one
timer and one write.

* ``POST`` anything: after a delay drawn uniformly from ``[--delay-ms, --delay-ms + --jitter-ms)``
  it answers a fixed chat completion with ``usage``.
* a body containing ``"stream":true`` (or ``"stream": true``) is answered as SSE after the delay:
  ``--chunks`` events ``--chunk-ms`` apart, each ``data: {...,"seq":i,...}``, then a usage event and
  ``data: [DONE]``, in chunked transfer encoding (as real providers send it).
* every JSON answer carries ``X-Upstream-Held-Us``: the microseconds from the request's last byte
  arriving to its answer being written (the delay drawn plus this process's own lateness), so a
  client can tell, per request, the time spent outside the upstream (``concurrency.py`` S3-steady);
* ``GET /stats``: ``{"answered": N, "open": M}`` (requests answered, connections open), so a
  benchmark can count requests in a window without stopping its load generator.
* ``--procs N`` runs N processes sharing the port (SO_REUSEPORT).

Run: ``python benchmarks/slow_upstream.py --port 9201 --delay-ms 5000 --jitter-ms 10000``
It prints ``ready http://HOST:PORT`` once every process accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import sys
import time

CHAT = json.dumps(
    {
        "id": "chatcmpl-bench0000000000000000",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Ten thousand in flight, one core."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 28, "completion_tokens": 9, "total_tokens": 37},
    },
    separators=(",", ":"),
).encode()
JSON_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    b"X-Upstream-Held-Us: %%d\r\n\r\n" % len(CHAT)
)
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def sse_event(seq: int) -> bytes:
    doc = {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "seq": seq,
        "choices": [{"index": 0, "delta": {"content": f"t{seq} "}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Stats:
    answered = 0
    open = 0


class Upstream(asyncio.Protocol):
    """One client connection; requests are answered in order (no pipelining needed)."""

    __slots__ = ("_buf", "_t", "_loop", "_cfg", "_busy")

    def __init__(self, cfg: argparse.Namespace) -> None:
        self._buf = b""
        self._cfg = cfg
        self._busy = False
        self._t: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._t = transport  # type: ignore[assignment]
        Stats.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._t = None
        Stats.open -= 1

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._next()

    def _next(self) -> None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = buf[:end].lower()
        length = 0
        at = head.find(b"content-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at)
            length = int(head[at + 15 : stop if stop > 0 else None])
        if len(buf) < end + 4 + length:
            return
        body = buf[end + 4 : end + 4 + length]
        self._buf = buf[end + 4 + length :]
        self._busy = True
        if head.startswith(b"get /stats"):
            doc = json.dumps({"answered": Stats.answered, "open": Stats.open}).encode()
            self._send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(doc), doc))
            return
        cfg = self._cfg
        delay = (cfg.delay_ms + cfg.jitter_ms * random.random()) / 1000.0
        if b'"stream":true' in body or b'"stream": true' in body:
            self._loop.call_later(delay, self._stream, 0)
        else:
            self._loop.call_later(delay, self._answer, time.monotonic())

    def _send(self, data: bytes) -> None:
        if self._t is None:
            return
        self._t.write(data)
        Stats.answered += 1
        self._done()

    def _answer(self, arrived: float) -> None:
        held_us = int((time.monotonic() - arrived) * 1e6)
        self._send(JSON_HEAD % held_us + CHAT)

    def _done(self) -> None:
        self._busy = False
        if self._buf:
            self._next()

    def _stream(self, seq: int) -> None:
        t = self._t
        if t is None:
            return
        cfg = self._cfg
        t.write(cfg.events[seq])
        if seq < cfg.chunks:
            self._loop.call_later(cfg.chunk_ms / 1000.0, self._stream, seq + 1)
            return
        Stats.answered += 1
        self._done()


def stream_events(chunks: int) -> list[bytes]:
    """Every stream's bytes, written one item each ``--chunk-ms``: the head with event 0, events
    1..chunks-1, then the usage event, ``[DONE]`` and the last chunk. Made once: all streams
    send the same events, and building them per stream would make this fake, not what it
    serves, the load's cost (S4: 1,000 streams are 50,000 events a second)."""
    usage = (b'data: {"id":"chatcmpl-s","object":"chat.completion.chunk","choices":[],'
             b'"usage":{"prompt_tokens":28,"completion_tokens":%d,"total_tokens":%d}}\n\n'
             % (chunks, chunks + 28))
    events = [chunked(sse_event(seq)) for seq in range(chunks)]
    events.append(chunked(usage + b"data: [DONE]\n\n") + b"0\r\n\r\n")
    events[0] = SSE_HEAD + events[0]  # the head goes with the first
    return events


async def serve(
    cfg: argparse.Namespace, sock: socket.socket, ready: bool, children: tuple[int, ...] = ()
) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(cfg), sock=sock, backlog=8192)
    if ready:
        print(f"ready http://{cfg.host}:{sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    for pid in children:
        os.kill(pid, signal.SIGTERM)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9201)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="add a uniform 0..J ms")
    parser.add_argument("--chunks", type=int, default=64, help="SSE events per stream")
    parser.add_argument("--chunk-ms", type=float, default=20.0, help="time between SSE events")
    parser.add_argument("--procs", type=int, default=1, help="processes sharing the port")
    cfg = parser.parse_args()
    cfg.events = stream_events(cfg.chunks)
    import gc
    import resource

    import uvloop

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.freeze()  # the fake keeps no cycles per request; its collector need not walk 10k sockets
    gc.disable()
    socks = []
    for _ in range(cfg.procs):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((cfg.host, cfg.port if not socks else socks[0].getsockname()[1]))
        sock.listen(8192)
        socks.append(sock)
    cfg.port = socks[0].getsockname()[1]
    children = []
    for sock in socks[1:]:
        pid = os.fork()
        if pid == 0:
            uvloop.run(serve(cfg, sock, ready=False))
            os._exit(0)
        children.append(pid)
    uvloop.run(serve(cfg, socks[0], ready=True, children=tuple(children)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
