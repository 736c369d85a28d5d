"""A lean HTTP/1.1 client for direct upstream calls: one ``asyncio.Protocol`` per connection, a
keep-alive pool, one timer per request.

Why not aiohttp's client here (it still carries calls through an outbound proxy, and a session
a caller injects): with 10,000 requests in flight its ``ClientRequest``/``ClientResponse``, their
stream reader, parser and timers hold about 10 KB per request, and a stream re-arms a read timer
on every chunk (``benchmarks/README.md``, issue [8]). This client keeps per request one small
object (``H1Reply``) and one timer handle, which is re-armed lazily: a stream's idle deadline is
checked when it fires, not moved on every chunk.

What it keeps of aiohttp's behaviour, so that ``openai.translate``'s messages stay the words a
user sees: a refused or unresolvable host is ``cannot connect to host:port: why``; waiting for a
pool slot counts toward ``connect timed out after Xs``; headers (and a stream's first chunk) must
arrive by the first-byte deadline (``no answer within`` / ``no first chunk within``); a stream
silent for the whole attempt timeout is ``no data for Xs``; a non-stream body must be read by the
attempt's end (``read timed out``); a connection closed before headers is ``server disconnected
without an answer``, and a body cut short ``connection broke mid-body (payload not completed)``.

Bodies are framed by ``Transfer-Encoding: chunked``, ``Content-Length`` or the connection's end;
``Content-Encoding`` is left alone (the gateway asks for ``identity``; an answer compressed
anyway is read by ``upstream.encoding``). A connection goes back to
the pool as soon as its answer is whole, unless it said ``Connection: close``; idle ones are closed
after ``keepalive`` seconds by one sweep for the whole pool. ``limit`` caps open connections
(``server.max_connections``); a request waits for a free one.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, cast

from multidict import CIMultiDict

from ..deadlines import Cancellable, for_loop
from ..upstream.errors import AttemptError, UpstreamConnectError, UpstreamTimeoutError

if TYPE_CHECKING:
    from .base import Timeouts

KEEPALIVE = 15.0  # seconds an idle connection is kept (aiohttp's default too)
DNS_TTL = 300.0  # seconds a host name's addresses are kept (as the aiohttp session does)
MAX_HEAD = 64 * 1024  # status line and headers of one answer
HIGH_WATER = 256 * 1024  # body bytes held for a slow reader before reading pauses
SAFE_PATH = "/%:@!$&'()*+,;=-._~"

MID_BODY = "connection broke mid-body (payload not completed)"
NO_ANSWER = "server disconnected without an answer"


class Target:
    """Where one URL goes: the pool key, the Host header and the request target."""

    __slots__ = ("tls", "host", "port", "key", "host_header", "target", "family")

    def __init__(self, url: str) -> None:
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if not sep or scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL {url!r}: only http:// and https://")
        authority, slash, path = rest.partition("/")
        path = slash + path
        path, _, query = path.partition("?")
        path = path.partition("#")[0]
        query = query.partition("#")[0]
        if "@" in authority:
            raise ValueError("credentials in the URL are not sent; use the channel's api_key")
        self.tls = scheme == "https"
        default = 443 if self.tls else 80
        if authority.startswith("["):  # [IPv6]:port
            host, _, after = authority[1:].partition("]")
            port_text = after[1:] if after.startswith(":") else ""
        else:
            host, _, port_text = authority.partition(":")
        if not host:
            raise ValueError(f"URL without a host: {url!r}")
        self.host = host.lower()
        self.family = _ip_family(self.host)  # 0: a name to resolve
        self.port = int(port_text) if port_text else default
        if not 0 < self.port < 65536:
            raise ValueError(f"port out of range in {url!r}")
        self.key = (self.tls, self.host, self.port)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = shown if self.port == default else f"{shown}:{self.port}"
        target = quote_path(path or "/")
        if query:
            target += "?" + quote_path(query, "?")
        self.target = target


@functools.lru_cache(maxsize=1024)
def target_of(url: str) -> Target:
    return Target(url)


def quote_path(text: str, extra: str = "") -> str:
    """Percent-encode what may not appear in a request target (spaces, non-ASCII), leaving
    existing escapes and reserved characters as they are, as yarl does for aiohttp."""
    if text.isascii() and all(c.isalnum() or c in SAFE_PATH or c in extra for c in text):
        return text
    from urllib.parse import quote

    return quote(text, safe=SAFE_PATH + extra)


def request_head(
    method: str, target: Target, headers: Mapping[str, str], body_size: int | None
) -> bytes:
    """The request line and headers; a CR, LF or NUL in a header is refused (ValueError), as
    aiohttp refuses it, so that no header can smuggle another request."""
    parts = [f"{method} {target.target} HTTP/1.1\r\nHost: {target.host_header}\r\n"]
    for name, value in headers.items():
        if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
            continue
        parts.append(f"{name}: {value}\r\n")
    if body_size is not None:
        parts.append(f"Content-Length: {body_size}\r\n")
    parts.append("\r\n")
    head = "".join(parts)
    lines = len(parts) + 1  # the request line and Host share the first part
    if "\0" in head or head.count("\r") != lines or head.count("\n") != lines:
        raise ValueError("a header name or value holds a newline or a NUL")
    return head.encode("utf-8")


def parse_head(block: bytes) -> tuple[int, bool, CIMultiDict[str]]:
    """(status, keep-alive allowed, headers) of one answer's head (without its blank line)."""
    lines = block.splitlines()
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1:] in (b" ", b"\t") or line[:1] in (b" ", b"\t"):
            raise ValueError(f"a malformed header line: {line[:80]!r}")
        headers.add(
            name.decode("utf-8", "surrogateescape"),
            value.strip(b" \t").decode("utf-8", "surrogateescape"),
        )
    connection = headers.get("Connection", "").lower()
    keep = "close" not in connection if version == b"HTTP/1.1" else "keep-alive" in connection
    return int(code), keep, headers


def _ip_family(host: str) -> int:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return 0
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def connect_failure(err: OSError) -> str:
    """Why a connection could not be made, in words (as ``openai.translate`` words aiohttp's)."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {err.verify_message or err.reason}"
    if isinstance(err, ssl.SSLError):  # its errno 1 would read "Operation not permitted"
        return f"TLS: {err.reason or err}"
    if isinstance(err, socket.gaierror) or not err.errno:
        return err.strerror or str(err) or "failed"
    return os.strerror(err.errno)


class _Conn(asyncio.Protocol):
    """One connection to one upstream; feeds the bytes of its current answer to ``reply``."""

    __slots__ = ("pool", "key", "transport", "reply", "idle_since", "closed")

    def __init__(self, pool: H1Pool, key: tuple[bool, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.reply: H1Reply | None = None
        self.idle_since = 0.0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        reply = self.reply
        if reply is None:  # bytes nobody asked for: this connection cannot be trusted again
            self.abort()
        else:
            reply.feed(data)

    def eof_received(self) -> bool:
        self.closed = True
        reply = self.reply
        if reply is not None:
            reply.ended(None)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reply = self.reply
        if reply is not None:
            reply.ended(exc)
        self.pool.lost(self)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


# Reply states
_HEAD, _BODY, _DONE = 0, 1, 2
_HEX = b"0123456789abcdefABCDEF"
# Timer kinds
_FIRST, _TOTAL, _IDLE = 0, 1, 2


def whole_chunks(data: bytes) -> list[int]:
    """Where each chunk's data starts when ``data`` is whole chunks of chunked coding
    (``<hex size>\r\n<data>\r\n``, no extensions, none the last), else []."""
    starts: list[int] = []
    pos, n = 0, len(data)
    while pos < n:
        end = data.find(b"\r\n", pos, pos + 10)
        if end <= pos or data[pos:end].strip(_HEX):
            return []
        size = int(data[pos:end], 16)
        pos = end + 4 + size
        if not size or pos > n or data[pos - 2 : pos] != b"\r\n":
            return []
        starts.append(end + 2)
    return starts


class H1Reply:
    """One answer: status and headers once they are in, then the body as it comes."""

    __slots__ = (
        "status",
        "headers",
        "_conn",
        "_pool",
        "_loop",
        "_state",
        "_buf",
        "_chunks",
        "_size",
        "_paused",
        "_whole",
        "_waiter",
        "_error",
        "_keep",
        "_left",
        "_chunked",
        "_no_body",
        "_stream",
        "_timeouts",
        "_timer",
        "_timer_kind",
        "_deadline",
        "_last",
        "_got_chunk",
        "_sink",
        "_raw",
        "_on_end",
    )

    def __init__(
        self,
        conn: _Conn,
        pool: H1Pool,
        loop: asyncio.AbstractEventLoop,
        *,
        head_only: bool,
        stream: bool,
        timeouts: Timeouts,
        started: float,
    ) -> None:
        self.status = 0
        self.headers: CIMultiDict[str] = CIMultiDict()
        self._conn: _Conn | None = conn
        self._pool = pool
        self._loop = loop
        self._state = _HEAD
        self._buf = b""
        self._chunks: list[bytes] = []  # an empty deque would hold a 520-byte block
        self._size = 0
        self._paused = False
        self._whole = False  # read() wants the whole body: never pause for it
        self._waiter: asyncio.Future[None] | None = None
        self._error: AttemptError | None = None
        self._keep = True
        self._left = 0  # chunked: bytes left of this chunk (0: a size line, -1: CRLF, -2: trailer)
        self._chunked = False
        self._no_body = head_only
        self._stream = stream
        self._timeouts = timeouts
        self._last = started
        self._got_chunk = False
        self._sink: Callable[[bytes], None] | None = None  # push mode (``push``)
        self._raw: Callable[[bytes, list[int]], bool] | None = None  # push mode: whole chunks
        self._on_end: Callable[[], None] | None = None
        self._timer: Cancellable | None = None
        self._timer_kind = _FIRST
        self._deadline = 0.0
        # One deadline for headers (and a stream's first chunk) when it is sooner than the
        # attempt's end; otherwise the end itself.
        if stream or timeouts.first_byte < timeouts.total:
            self._arm(_FIRST, started + timeouts.first_byte)
        else:
            self._arm(_TOTAL, started + timeouts.total)

    # ------------------------------------------------------------------ timer
    def _arm(self, kind: int, when: float) -> None:
        self._timer_kind = kind
        self._deadline = when
        self._timer = for_loop(self._loop).at(when, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._state == _DONE:
            return
        kind = self._timer_kind
        t = self._timeouts
        if kind == _IDLE:
            if self._paused:  # the gateway stopped reading for a slow client: not silence
                self._arm(_IDLE, self._loop.time() + t.total)
                return
            due = self._last + t.total
            if due > self._loop.time():  # data came since it was armed: look again then
                self._arm(_IDLE, due)
                return
            message = f"no data for {t.total:g}s"
        elif kind == _FIRST:
            message = (
                f"no answer within {t.first_byte:g}s"
                if self._state == _HEAD
                else f"no first chunk within {t.first_byte:g}s"
            )
        elif self._state == _HEAD:  # the attempt's end, before headers
            message = f"no answer within {t.first_byte:g}s"
        else:
            message = "read timed out"
        self._fail(UpstreamTimeoutError(message))

    # ------------------------------------------------------------------ from the connection
    def feed(self, data: bytes) -> None:
        raw = self._raw
        if raw is not None and self._left == 0 and not self._buf:
            # Push mode's usual read: whole chunks (``<hex size>\r\n<data>\r\n``), offered as
            # read, framing and all (``push``).
            starts = whole_chunks(data)
            if starts and raw(data, starts):
                self._last = self._loop.time()
                return
        if self._state == _HEAD:
            buf = self._buf + data if self._buf else data
            while True:
                end = buf.find(b"\r\n\r\n")
                skip = 4
                if end < 0:
                    end = buf.find(b"\n\n")
                    skip = 2
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        self._fail(UpstreamConnectError("connection failed: answer head too large"))
                        return
                    self._buf = buf
                    return
                try:
                    status, keep, headers = parse_head(buf[:end])
                except ValueError as exc:
                    self._fail(UpstreamConnectError(f"connection failed: bad HTTP answer: {exc}"))
                    return
                buf = buf[end + skip :]
                if 100 <= status < 200:  # 100 Continue, 103 Early Hints: the answer follows
                    continue
                break
            self._buf = b""
            self.status, self._keep, self.headers = status, keep, headers
            self._begin_body(bool(buf))
            if self._state == _BODY and buf:
                self._body(buf)
            self._wake()
            return
        if self._state == _BODY:
            self._body(data)

    def _begin_body(self, more: bool) -> None:
        """Frame the body by the headers; ``more``: bytes came after the head."""
        status, headers = self.status, self.headers
        if self._timer_kind == _FIRST and not self._stream:
            # Headers came: the body has until the attempt's end.
            self._disarm()
            self._arm(_TOTAL, self._deadline - self._timeouts.first_byte + self._timeouts.total)
        if self._no_body or status in (204, 304):
            self._keep = self._keep and not more  # bytes after a body-less answer: unclean
            self._finish()
            return
        self._state = _BODY
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            self._chunked = True
        elif (length := headers.get("Content-Length")) is not None:
            if not length.strip().isdigit():
                self._fail(UpstreamConnectError("connection failed: bad Content-Length"))
                return
            self._left = int(length)
            if self._left == 0:
                self._keep = self._keep and not more
                self._finish()
        else:
            self._left = -1  # until the connection ends
            self._keep = False

    def _body(self, data: bytes) -> None:
        if self._chunked:
            self._dechunk(data)
            return
        left = self._left
        if left < 0:  # until the end
            self._deliver(data)
            return
        if len(data) >= left:
            if len(data) > left:
                self._keep = False  # more than the answer: not reusable
                data = data[:left]
            self._left = 0
            if data:
                self._deliver(data)
            self._finish()
        else:
            self._left = left - len(data)
            self._deliver(data)

    def _dechunk(self, data: bytes) -> None:
        if self._left == 0 and not self._buf:
            # The usual read of a stream: exactly one whole chunk (``<hex size>\r\n<data>\r\n``).
            end = data.find(b"\r\n", 0, 10)
            if 0 < end and not data[:end].strip(_HEX):
                size = int(data[:end], 16)
                if size and len(data) == end + size + 4 and data.endswith(b"\r\n"):
                    self._deliver(data[end + 2 : end + 2 + size])
                    return
        buf = self._buf + data if self._buf else data
        pos, n = 0, len(buf)
        out: list[bytes] = []
        while pos < n:
            left = self._left
            if left > 0:
                take = min(left, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left = -1 if take == left else left - take
                continue
            end = buf.find(b"\n", pos)
            if end < 0:
                if n - pos > 4096:
                    self._fail(UpstreamConnectError(MID_BODY))
                    return
                break
            line = buf[pos:end].rstrip(b"\r")
            pos = end + 1
            if left == -1:  # the CRLF after a chunk's data
                if line:
                    self._fail(UpstreamConnectError(MID_BODY))
                    return
                self._left = 0
            elif left == -2:  # trailers after the last chunk, up to an empty line
                if not line:
                    self._keep = self._keep and pos == n
                    self._buf = b""
                    if out:
                        self._deliver(b"".join(out) if len(out) > 1 else out[0])
                    self._finish()
                    return
            else:  # a size line
                size_text = line.partition(b";")[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    size = -1
                if size < 0 or not size_text:
                    self._fail(UpstreamConnectError(MID_BODY))
                    return
                self._left = size if size else -2
        self._buf = buf[pos:] if pos < n else b""
        if out:
            self._deliver(b"".join(out) if len(out) > 1 else out[0])

    def _deliver(self, data: bytes) -> None:
        if self._stream:
            self._last = self._loop.time()
            if not self._got_chunk:
                self._got_chunk = True
                self._disarm()  # the first chunk came: from now on, silence is what counts
                self._arm(_IDLE, self._last + self._timeouts.total)
        if self._sink is not None:
            self._sink(data)
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER and not (self._paused or self._whole):
            # A reader taking chunks (a stream) is slower than the upstream: stop reading until
            # it has taken them (``iter_chunks``).
            conn = self._conn
            if conn is not None and conn.transport is not None:
                conn.transport.pause_reading()
                self._paused = True
        self._wake()

    def _finish(self) -> None:
        """The answer is whole: the connection goes back to the pool (or closes)."""
        self._state = _DONE
        self._disarm()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.reply = None
            if self._paused and conn.transport is not None:
                conn.transport.resume_reading()
                self._paused = False
            self._pool.release(conn, self._keep)
        self._wake()
        self._end_push()

    def ended(self, exc: Exception | None) -> None:
        """The connection ended (EOF or lost) while this answer was on it."""
        if self._state == _DONE:
            return
        if self._state == _BODY and self._left == -1 and not self._chunked:
            self._keep = False
            self._finish()  # an answer framed by the connection's end
            return
        self._fail(UpstreamConnectError(NO_ANSWER if self._state == _HEAD else MID_BODY))

    def _fail(self, error: AttemptError) -> None:
        if self._state == _DONE:
            return
        self._state = _DONE
        self._error = error
        self._disarm()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.reply = None
            conn.abort()
        self._wake()
        self._end_push()

    def _end_push(self) -> None:
        on_end = self._on_end
        if on_end is not None:
            self._on_end = self._sink = self._raw = None
            on_end()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        await waiter

    # ------------------------------------------------------------------ for the caller
    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while True:
            if chunks := self._chunks:  # all that came since the last look, as one chunk
                self._chunks = []
                self._size = 0
                self.resume_reading()
                yield chunks[0] if len(chunks) == 1 else b"".join(chunks)
                continue
            if self._state == _DONE:
                if self._error is not None:
                    raise self._error
                return
            await self._wait()

    def push(self, sink: Callable[[bytes], None], on_end: Callable[[], None],
             raw: Callable[[bytes, list[int]], bool] | None = None) -> None:  # fmt: skip
        """Push mode, for a relay that writes each chunk on at once: from now on every body
        chunk goes to ``sink`` in the connection's own callback, with no queue and no wake-up of
        a coroutine, and ``on_end()`` is called once the answer is whole or broken (``error``
        says which). Chunks already queued go to ``sink`` first. The caller owns flow control
        (``pause_reading``/``resume_reading``) and must not iterate the chunks any more.

        ``raw``, for a chunked answer: a read that is whole chunks of data (``whole_chunks``) is
        first offered to ``raw(framed, starts)`` as it came; when it returns True it has taken
        it, else its data goes to ``sink`` as any other."""
        chunks, self._chunks, self._size = self._chunks, [], 0
        self.resume_reading()
        for chunk in chunks:
            sink(chunk)
        if self._state == _DONE:
            on_end()
        else:
            self._sink, self._on_end = sink, on_end
            if self._chunked:
                self._raw = raw

    @property
    def error(self) -> AttemptError | None:
        """What broke the answer (None while it runs or once it is whole)."""
        return self._error

    def pause_reading(self) -> None:
        if not self._paused and self._conn is not None and self._conn.transport is not None:
            self._conn.transport.pause_reading()
            self._paused = True

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._last = self._loop.time()  # the upstream's silence is counted from now on
            if self._conn is not None and self._conn.transport is not None:
                self._conn.transport.resume_reading()

    async def read(self) -> bytes:
        self._whole = True  # the reader takes it all: holding back would only stall it
        if self._paused:
            self._paused = False
            if self._conn is not None and self._conn.transport is not None:
                self._conn.transport.resume_reading()
        while self._state != _DONE:
            await self._wait()
        if self._error is not None:
            raise self._error
        body = b"".join(self._chunks)
        self._chunks = []
        self._size = 0
        return body

    def close(self) -> None:
        """Abort an answer not yet whole (its connection is not reused); safe to call again."""
        self._sink = self._on_end = self._raw = None  # nobody listens any more
        if self._state != _DONE:
            self._fail(UpstreamConnectError("closed by the gateway"))
        self._chunks = []
        self._size = 0


class H1Pool:
    """Keep-alive connections per (tls, host, port), at most ``limit`` open in all (0: no cap)."""

    def __init__(
        self,
        limit: int,
        *,
        keepalive: float = KEEPALIVE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.limit = limit
        self.keepalive = keepalive
        self._ssl = ssl_context
        self._idle: dict[tuple[bool, str, int], dict[_Conn, None]] = {}  # oldest first
        self._conns: set[_Conn] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self._dns: dict[str, tuple[float, asyncio.Future[list[Any]]]] = {}

    @property
    def open_connections(self) -> int:
        return len(self._conns) + self._opening

    def idle_connections(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        stream: bool,
        timeouts: Timeouts,
    ) -> Coroutine[Any, Any, H1Reply]:
        """Send one request: the coroutine returned ends once status and headers are in. A URL
        or header this client will not send raises ValueError here, before any await (so a
        caller can translate it without a coroutine of its own around this one)."""
        target = target_of(url)
        head = request_head(
            method, target, headers, None if method in ("GET", "HEAD") and not body else len(body)
        )
        return self._exchange(target, head, body, method == "HEAD", stream, timeouts)

    async def _exchange(
        self,
        target: Target,
        head: bytes,
        body: bytes,
        head_only: bool,
        stream: bool,
        timeouts: Timeouts,
    ) -> H1Reply:
        loop = asyncio.get_running_loop()
        started = loop.time()
        conn = await self._acquire(loop, target, timeouts.connect)
        reply = H1Reply(
            conn,
            self,
            loop,
            head_only=head_only,
            stream=stream,
            timeouts=timeouts,
            started=started,
        )
        conn.reply = reply
        transport = conn.transport
        assert transport is not None
        if body:
            transport.writelines((head, body))
        else:
            transport.write(head)
        # Sent: this frame waits as long as the upstream takes, holding nothing it no longer
        # needs (the head, ~0.5 KB per request).
        del head
        try:
            # Wait for status and headers (inlined: one coroutine less per request waiting).
            while reply._state == _HEAD:
                waiter = reply._waiter = loop.create_future()
                await waiter
            if reply.status == 0 and reply._error is not None:
                raise reply._error
        except BaseException:
            reply.close()
            raise
        return reply

    # ------------------------------------------------------------------ connections
    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, target: Target, connect_timeout: float
    ) -> _Conn:
        if self._closed:
            raise UpstreamConnectError("connection failed: the gateway is stopping")
        if (conn := self._take_idle(target.key)) is not None:
            return conn
        try:
            async with asyncio.timeout(connect_timeout):
                while self.limit and len(self._conns) + self._opening >= self.limit:
                    if not self._make_room():
                        waiter = loop.create_future()
                        self._waiters.append(waiter)
                        try:
                            await waiter
                        finally:
                            if not waiter.done():
                                waiter.cancel()
                    if (conn := self._take_idle(target.key)) is not None:
                        return conn  # one came back for this host while waiting
                self._opening += 1
                try:
                    return await self._connect(loop, target)
                finally:
                    self._opening -= 1
        except TimeoutError as exc:
            self._wake_one()
            raise UpstreamTimeoutError(f"connect timed out after {connect_timeout:g}s") from exc

    async def _connect(self, loop: asyncio.AbstractEventLoop, target: Target) -> _Conn:
        ctx: ssl.SSLContext | None = None
        if target.tls:
            ctx = self._ssl = self._ssl or ssl.create_default_context()
        try:
            addresses = await self._resolve(loop, target)
            last: OSError | None = None
            for family, address in addresses:  # each address in turn, as asyncio does
                try:
                    _, conn = await loop.create_connection(
                        lambda: _Conn(self, target.key),
                        address,
                        target.port,
                        family=family,
                        ssl=ctx,
                        server_hostname=target.host if ctx is not None else None,
                    )
                    break
                except OSError as err:
                    last = err
            else:
                assert last is not None
                raise last
        except OSError as err:
            self._wake_one()
            raise UpstreamConnectError(
                f"cannot connect to {target.host}:{target.port}: {connect_failure(err)}"
            ) from err
        except BaseException:
            self._wake_one()
            raise
        self._conns.add(conn)
        if self._closed:
            conn.abort()
            raise UpstreamConnectError("connection failed: the gateway is stopping")
        return conn

    async def _resolve(
        self, loop: asyncio.AbstractEventLoop, target: Target
    ) -> list[tuple[int, str]]:
        """(family, address) for the host, kept ``DNS_TTL`` seconds (aiohttp's cache does the
        same); requests that need one name at once share one lookup."""
        host = target.host
        if target.family:
            return [(target.family, host)]
        hit = self._dns.get(host)
        now = loop.time()
        if hit is None or (hit[0] <= now and hit[1].done()):
            lookup = asyncio.ensure_future(
                loop.getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
            )
            # Its waiters may all be gone (cancelled) when it fails: the failure is still seen.
            lookup.add_done_callback(lambda f: f.cancelled() or f.exception())
            hit = self._dns[host] = (now + DNS_TTL, lookup)
        try:
            infos = await asyncio.shield(hit[1])
        except OSError:
            if self._dns.get(host) is hit:
                del self._dns[host]  # a failure is not kept
            raise
        seen: dict[tuple[int, str], None] = {}
        for family, _, _, _, sockaddr in infos:
            seen[(family, str(sockaddr[0]))] = None
        return list(seen)

    def release(self, conn: _Conn, keep: bool) -> None:
        """An answer is whole: keep its connection for the next request, or close it."""
        if not keep or conn.closed or self._closed:
            conn.abort()
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = {}
        idle[conn] = None
        if self._sweep is None:
            self._sweep = loop.call_later(self.keepalive / 3, self._expire_idle)
        self._wake_one()

    def _take_idle(self, key: tuple[bool, str, int]) -> _Conn | None:
        """The most recently used idle connection to ``key`` that is still open."""
        idle = self._idle.get(key)
        while idle:
            conn, _ = idle.popitem()
            conn.idle_since = 0.0
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def lost(self, conn: _Conn) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            if conn.idle_since:  # closed by the upstream while idle
                idle = self._idle.get(conn.key)
                if idle is not None:
                    idle.pop(conn, None)
            self._wake_one()

    def _make_room(self) -> bool:
        """At the cap: close the longest-idle connection of any host; False if none is idle."""
        oldest: _Conn | None = None
        for conns in self._idle.values():
            first = next(iter(conns), None)
            if first is not None and (oldest is None or first.idle_since < oldest.idle_since):
                oldest = first
        if oldest is None:
            return False
        del self._idle[oldest.key][oldest]
        oldest.idle_since = 0.0
        self._conns.discard(oldest)  # counted free now; its connection_lost comes later
        oldest.abort()
        return True

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _expire_idle(self) -> None:
        self._sweep = None
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self.keepalive
        for key, conns in list(self._idle.items()):
            stale = []
            for conn in conns:  # oldest first
                if conn.idle_since > cutoff:
                    break
                stale.append(conn)
            for conn in stale:
                del conns[conn]
                conn.idle_since = 0.0
                conn.abort()
            if not conns:
                del self._idle[key]
        if self._idle:
            self._sweep = loop.call_later(self.keepalive / 3, self._expire_idle)

    async def close(self) -> None:
        """Close every connection (the app's cleanup, after in-flight requests ended)."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conn in list(self._conns):
            if conn.reply is not None:
                conn.reply.close()
            conn.abort()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        await asyncio.sleep(0)  # let the transports' connection_lost run
