"""The HTTP server side: client timeouts per connection, and quiet logging of malformed requests.

aiohttp closes a connection that stays idle after a response (``keepalive_timeout``), but not one
that sends half a request line and stops, nor one whose body stops mid-way: each such connection
holds its socket and the body bytes buffered so far, forever. ``GatewayRunner`` serves the app
with ``GuardedConnection``, which closes (like nginx):

- ``server.client_header_timeout``: a connection whose request headers have not all arrived this
  long after its first byte (or after connecting, for the first request);
- ``server.client_body_timeout``: a request whose body receives nothing for this long while the
  handler still waits for it (a handler working on a complete body, or streaming an answer, is
  never timed out here);
- ``server.keepalive_timeout``: an idle connection between requests (here too, in place of
  aiohttp's own keep-alive timer, which each connection would otherwise hold).

Closing the transport cancels the handler (``handler_cancellation``), which drops the partial
body it was reading. Bytes buffered for a request that is not yet authenticated are bounded by
aiohttp's flow control (the transport is paused past ~128 KiB until the handler reads): the proxy
authenticates before reading the body.

One watchdog per connection, re-armed lazily (never per chunk received), on the loop's coarse
``deadlines`` (no loop timer per connection). Malformed HTTP
(a bad request line, oversized headers, TLS sent to the plain port...) is logged as one WARNING
line without traceback, at most ``MALFORMED_LOG_BURST`` per minute (then a count of the rest),
and answered like every error the gateway makes (contract §3): JSON, OpenAI-shaped, or
Anthropic-shaped when the request line names ``/v1/messages``; 431 for header lines over
``max_field_size`` or more than ``max_headers`` headers, 414 for a request line over
``max_line_size``, 400 for the rest; never echoing the client's bytes, and closing the connection.
A handler's unforeseen exception (500) is answered the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import ERROR, RequestHandler
from aiohttp.web_request import BaseRequest

from .api.proxy import ANTHROPIC_PREFIX
from .config import ServerConfig
from .deadlines import Cancellable, for_loop
from .errors import BadRequest, GatewayError, HeadersTooLarge, RequestLineTooLong
from .lean import shrink

log = logging.getLogger("smartproxy.server")

MALFORMED_LOG_BURST = 10  # lines per minute about malformed requests; the rest are counted


@dataclass(frozen=True, slots=True)
class ClientTimeouts:
    header: float = 60.0
    body: float = 60.0
    keepalive: float = 75.0

    @classmethod
    def of(cls, server: ServerConfig) -> ClientTimeouts:
        return cls(
            header=server.client_header_timeout,
            body=server.client_body_timeout,
            keepalive=server.keepalive_timeout,
        )


class _LogBudget:
    """At most ``burst`` lines per window; says how many were left out when it logs again."""

    def __init__(self, burst: int, window: float = 60.0) -> None:
        self.burst, self.window = burst, window
        self._start = -window
        self._used = 0
        self.suppressed = 0

    def take(self, now: float) -> int | None:
        """None: stay quiet; else the number of lines suppressed since the last one logged."""
        if now - self._start >= self.window:
            self._start, self._used = now, 0
        if self._used >= self.burst:
            self.suppressed += 1
            return None
        self._used += 1
        left_out, self.suppressed = self.suppressed, 0
        return left_out


MALFORMED = _LogBudget(MALFORMED_LOG_BURST)


class _NoTimer:
    """Stands in for aiohttp's keep-alive timer handle, so that aiohttp arms none."""

    __slots__ = ()

    def cancel(self) -> None:
        pass


_NO_TIMER = _NoTimer()


class _Sent:
    """What aiohttp's connection loop keeps of an answered response until the next one is
    answered: whether to keep the connection open (the only attribute it reads). The response
    itself (headers, body, writer) is freed as soon as it is sent, instead of staying alive
    through the next request on the same connection."""

    __slots__ = ("keep_alive",)

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive


_KEEP, _CLOSE = _Sent(True), _Sent(False)


class GuardedConnection(RequestHandler):
    """aiohttp's connection handler with header and body timeouts (see the module docstring)."""

    __slots__ = ("_deadlines", "_head", "_head_start", "_idle_since", "_last_data", "_limits",
                 "_served", "_watch")  # no __dict__ per connection

    def __init__(self, manager: Any, *, timeouts: ClientTimeouts, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = timeouts
        self._served = 0  # requests handled on this connection
        self._idle_since = 0.0  # connected, or the last request ended
        self._head_start: float | None = None  # first byte of the next request's headers
        self._last_data = 0.0
        self._watch: Cancellable | None = None
        shrink(self, "_messages")  # aiohttp's queue of parsed requests (``lean``)
        self._deadlines = for_loop(self._loop)
        # The first bytes of the next request (a reference, no copy): should its head turn out
        # malformed, its request line says which shape the error takes.
        self._head: bytes | None = None

    # -- connection events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # aiohttp arms a keep-alive timer here and after each response unless one is set: the
        # watchdog closes idle connections itself, so aiohttp's is never armed (``_NO_TIMER``).
        timeout, self._keepalive_timeout = self._keepalive_timeout, 0.0
        try:
            super().connection_made(transport)
        finally:
            self._keepalive_timeout = timeout
        self._keepalive_handle = _NO_TIMER  # type: ignore[assignment]
        now = self._loop.time()
        self._idle_since = self._last_data = now
        self._arm(now + min(self._limits.header, self._limits.keepalive))

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        self._last_data = now
        if self._head_start is None and not self._request_in_progress:
            self._head_start = now
            self._head = data
        super().data_received(data)

    def request_started(self, message: Any) -> None:
        """aiohttp's connection loop is about to run a handler for ``message`` (``_started``)."""
        self._head_start = None
        if message is not ERROR:  # parsed: only a malformed head needs its bytes
            self._head = None

    async def finish_response(self, request: Any, resp: Any, start_time: Any) -> Any:
        # Called for every answer but a cancelled one (the connection closes then). aiohttp's
        # connection loop keeps what this returns until the next answer is sent: a ``_Sent``,
        # not the response, so that the response is freed once sent. Instead of wrapping
        # ``_handle_request`` (one coroutine more for every request in flight).
        try:
            resp, reset = await super().finish_response(request, resp, start_time)
        finally:
            self._head = None
            self._served += 1
            self._idle_since = self._loop.time()
        return (_KEEP if resp.keep_alive else _CLOSE), reset

    # -- the watchdog
    def _arm(self, when: float) -> None:
        self._watch = self._deadlines.at(when, self._check)

    def _check(self) -> None:
        self._watch = None
        if self._force_close or self.transport is None:
            return
        now = self._loop.time()
        limits = self._limits
        if self._request_in_progress:
            request = self._current_request
            waiting_for_body = request is not None and not request.content.is_eof()
            if waiting_for_body and now - self._last_data >= limits.body:
                return self._drop("request body stalled", limits.body)
            due = self._last_data + limits.body if waiting_for_body else now + limits.body
        elif self._head_start is not None:
            if now - self._head_start >= limits.header:
                return self._drop("request headers incomplete", limits.header)
            due = self._head_start + limits.header
        else:
            limit = limits.header if self._served == 0 else limits.keepalive
            if now - self._idle_since >= limit:
                return self._drop("idle connection", limit)
            due = self._idle_since + limit
        self._arm(max(due, now + 0.01))

    def _drop(self, why: str, after: float) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        log.info("closing client connection from %s: %s for %gs", _address(peer), why, after)
        self.force_close()
        if self.transport is not None:
            self.transport.abort()  # the handler (if any) is cancelled; its buffers go with it

    # -- malformed requests: one line, no traceback
    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            left_out = MALFORMED.take(time.monotonic())
            if left_out is not None:
                peer = self.transport.get_extra_info("peername") if self.transport else None
                more = f" ({left_out} more not logged)" if left_out else ""
                log.warning(
                    "malformed HTTP request from %s: %s%s",
                    _address(peer),
                    _first_line(str(exc.message or type(exc).__name__)),
                    more,
                )
            return
        super().log_exception(*args, **kw)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a malformed request or a handler's exception is plain text that
        quotes the offending bytes: the gateway's JSON error instead (the module docstring)."""
        super().handle_error(request, status, exc, message)  # logs; raises if already answering
        if isinstance(exc, HttpProcessingError):
            error = self._malformed(exc)
            line = _request_line(self._head)
            anthropic = line is not None and _target_path(line).startswith(_ANTHROPIC_PATH)
        else:
            error = GatewayError("internal error (logged by the gateway)", code="internal_error")
            error.status = status  # 500, or 504: a handler's own timeout
            anthropic = request.path.startswith(ANTHROPIC_PREFIX)
        resp = error.to_response(anthropic=anthropic)
        resp.force_close()
        return resp

    def _malformed(self, exc: HttpProcessingError) -> GatewayError:
        """The error a parse error is answered with (its message names no client bytes)."""
        if isinstance(exc, LineTooLong) or (exc.message or "").startswith("Too many headers"):
            line = _request_line(self._head)
            if (
                isinstance(exc, LineTooLong)
                and self._head is not None  # else unknown (pipelined): said to be a header
                and (line is None or len(line) > self.max_line_size)
            ):
                return RequestLineTooLong(
                    f"request line too long (at most {self.max_line_size} bytes)"
                )
            return HeadersTooLarge(
                f"request header fields too large (at most {self.max_headers} header lines "
                f"of {self.max_field_size} bytes each)"
            )
        return BadRequest("malformed HTTP request", code="malformed_request")


_ANTHROPIC_PATH = ANTHROPIC_PREFIX.encode()


def _request_line(head: bytes | None) -> bytes | None:
    """The complete request line at the start of ``head``, or None."""
    if head is None:
        return None
    line, crlf, _ = head.partition(b"\r\n")
    return line if crlf else None


def _target_path(line: bytes) -> bytes:
    """The path of a request line's target (b"" if the line is no ``METHOD TARGET VERSION``)."""
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return b""
    return parts[1].partition(b"?")[0]


def _first_line(text: str) -> str:
    """aiohttp's parser messages span lines (the offending bytes, a caret): keep the first."""
    lines = text.strip().splitlines()
    return ascii(lines[0] if lines else text)[1:-1][:200]


def _address(peer: Any) -> str:
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return "unknown"


class GuardedServer(web.Server):
    """``web.Server`` making ``GuardedConnection``s (``_timeouts`` set by ``GatewayRunner``)."""

    _timeouts: ClientTimeouts

    def __call__(self) -> RequestHandler:
        return GuardedConnection(self, loop=self._loop, timeouts=self._timeouts, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are ``GuardedConnection``s."""

    def __init__(self, app: web.Application, *, timeouts: ClientTimeouts, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", timeouts.keepalive)
        super().__init__(app, **kwargs)
        self._timeouts = timeouts

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The app builds its Server itself (handler, request factory, handler kwargs); only the
        # connection class differs, so the same object is made a GuardedServer (no new state
        # but the timeouts: web.Server has no __slots__).
        server.__class__ = GuardedServer
        assert isinstance(server, GuardedServer)
        server._timeouts = self._timeouts
        server.request_factory = partial(_started, server.request_factory)
        _drop_current_app_layers(self.app)
        return server


def _drop_current_app_layers(app: web.Application) -> None:
    """Take out of ``app``'s (frozen) middleware chains the layer aiohttp adds for each app of a
    request's chain (``_fix_request_current_app``): it only makes ``request.app`` the root while
    the root's middlewares run, which none of ours reads (handlers and the sub-apps' own
    middlewares see their sub-app either way: aiohttp resolves ``request.app`` to the innermost
    app). Those two coroutines were ~670 bytes held by every request in flight through ``/v1``
    (``tests/test_per_request.py``). A no-op should aiohttp's internals differ."""
    apps = [app]
    while apps:
        each = apps.pop()
        apps.extend(getattr(each, "_subapps", ()))
        layers = getattr(each, "_middlewares_handlers", None)
        if isinstance(layers, tuple):
            each._middlewares_handlers = tuple(
                (m, new) for m, new in layers
                if getattr(m, "__qualname__", "") != "_fix_request_current_app.<locals>.impl"
            )


def _started(factory: Any, message: Any, payload: Any, protocol: Any, *rest: Any) -> BaseRequest:
    """The request factory of ``GatewayRunner``'s connections: tells the connection."""
    protocol.request_started(message)
    return factory(message, payload, protocol, *rest)  # type: ignore[no-any-return]
