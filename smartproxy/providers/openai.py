"""OpenAI-compatible channels (OpenAI, Groq, DeepSeek, vLLM, Ollama, ...): same path, bearer key.

aiohttp's exceptions are translated here, once, into the upstream layer's ``AttemptError`` tree:
every way an attempt can end without a usable answer becomes an ``UpstreamConnectError`` or an
``UpstreamTimeoutError`` whose message names what happened (the failover loop lists these
messages in the 502/504 a client gets when every attempt failed).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator, Awaitable

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from ..config import ChannelConfig
from ..upstream.errors import AttemptError, UpstreamConnectError, UpstreamTimeoutError
from .base import (
    OutgoingRequest,
    Timeouts,
    UpstreamReply,
    channel_headers,
    join_url,
    proxy_args,
)
from .bodies import upload
from .h1 import H1Pool


class HttpReply:
    """An upstream answer over HTTP; the body is streamed from the pooled connection."""

    __slots__ = ("_resp", "status", "headers", "_first_byte", "_deadline", "_read_timeout")

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        first_byte: float,
        deadline: float,
        read_timeout: float,
    ) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: CIMultiDictProxy[str] = resp.headers
        self._first_byte = first_byte
        self._deadline = deadline  # loop time by which the first body chunk must be here
        self._read_timeout = read_timeout

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            # Headers without a first chunk are as dead as no answer: the first chunk has the
            # first-byte deadline too, so a stuck stream still fails over before the client
            # sees a byte.
            try:
                async with asyncio.timeout_at(self._deadline):
                    chunk = await content.readany()
            except TimeoutError as exc:
                raise UpstreamTimeoutError(f"no first chunk within {self._first_byte:g}s") from exc
            while chunk:
                yield chunk
                chunk = await content.readany()
        except AttemptError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            # ValueError: aiohttp refusing what the channel's config would send (a control
            # character in a header value). The loader refuses such values; should one get
            # through, the attempt fails over like any broken channel instead of a bare 500.
            raise translate(exc, read_timeout=self._read_timeout) from exc

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            # ValueError: aiohttp refusing what the channel's config would send (a control
            # character in a header value). The loader refuses such values; should one get
            # through, the attempt fails over like any broken channel instead of a bare 500.
            raise translate(exc, read_timeout=self._read_timeout) from exc

    def close(self) -> None:
        self._resp.close()


@functools.lru_cache(maxsize=256)
def _client_timeout(total: float, connect: float, stream: bool) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None if stream else total,  # a stream may run long
        connect=connect,
        sock_read=total if stream else None,  # a stream silent for a whole attempt is dead
    )


class OpenAIProvider:
    """Sends over HTTP; other HTTP providers (azure, anthropic) change only ``url``/``headers``.

    A direct call goes through ``pool`` (``h1.H1Pool``, the lean client) when there is one; a
    call through an outbound proxy, or any call without a pool, through the aiohttp ``session``.
    """

    name = "openai"

    def __init__(self, session: aiohttp.ClientSession, pool: H1Pool | None = None) -> None:
        self._session = session
        self._pool = pool

    def url(self, channel: ChannelConfig, request: OutgoingRequest) -> str:
        return join_url(channel.endpoint, request.path, request.query_string)

    def headers(self, channel: ChannelConfig, request: OutgoingRequest) -> CIMultiDict[str]:
        return channel_headers(channel, request)

    def send(
        self, channel: ChannelConfig, request: OutgoingRequest, timeouts: Timeouts
    ) -> Awaitable[UpstreamReply]:
        """The attempt's awaitable reply. Through the lean client it is the pool's own: no
        coroutine of this method's waits beside it (~330 bytes per request in flight)."""
        url = self.url(channel, request)
        if self._pool is not None and request.proxy is None:
            try:
                return self._pool.send(
                    request.method,
                    url,
                    self.headers(channel, request),
                    request.body,
                    stream=request.stream,
                    timeouts=timeouts,
                )
            except ValueError as exc:  # a URL or header the lean client will not send
                raise translate(exc) from exc
        return self._send_with_session(url, channel, request, timeouts)

    async def _send_with_session(
        self, url: str, channel: ChannelConfig, request: OutgoingRequest, timeouts: Timeouts
    ) -> UpstreamReply:
        timeout = _client_timeout(timeouts.total, timeouts.connect, request.stream)
        # One deadline, from sending to the first chunk of the body: headers then silence
        # cannot stretch the first-byte wait to twice the configured time.
        deadline = asyncio.get_running_loop().time() + timeouts.first_byte
        headers = self.headers(channel, request)
        call = self._session.request(
            request.method,
            url,
            data=upload(request.body) if request.method != "GET" else None,
            headers=headers,
            timeout=timeout,
            allow_redirects=False,
            auto_decompress=False,
            **proxy_args(request, url, headers),
        )
        try:
            if request.stream or timeouts.first_byte < timeouts.total:
                async with asyncio.timeout_at(deadline):
                    resp = await call
            else:  # aiohttp's total timeout already ends the attempt at the same instant
                resp = await call
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            # ValueError: aiohttp refusing what the channel's config would send (a control
            # character in a header value). The loader refuses such values; should one get
            # through, the attempt fails over like any broken channel instead of a bare 500.
            raise translate(
                exc, first_byte=timeouts.first_byte, connect_timeout=timeouts.connect
            ) from exc
        return HttpReply(resp, timeouts.first_byte, deadline, timeouts.total)


def translate(
    exc: BaseException,
    *,
    first_byte: float | None = None,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
) -> AttemptError:
    """aiohttp / OS failure -> our AttemptError, with a message a user can act on."""
    # aiohttp's timeout errors are TimeoutError subclasses: test the specific ones first.
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeoutError(f"connect timed out after {connect_timeout or 0:g}s")
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return UpstreamTimeoutError(f"no data for {read_timeout or 0:g}s")
    if isinstance(exc, TimeoutError):
        if first_byte is not None:
            return UpstreamTimeoutError(f"no answer within {first_byte:g}s")
        return UpstreamTimeoutError("read timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error
        # asyncio words a refusal "Connect call failed (...)"; the errno says what happened.
        why = os.strerror(err.errno) if err.errno else (err.strerror or str(err) or "failed")
        return UpstreamConnectError(f"cannot connect to {exc.host}:{exc.port}: {why}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamConnectError("server disconnected without an answer")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamConnectError("connection broke mid-body (payload not completed)")
    text = str(exc)
    name = exc.__class__.__name__
    return UpstreamConnectError(
        f"connection failed: {name}: {text}" if text else f"connection failed: {name}"
    )
