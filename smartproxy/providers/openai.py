"""OpenAI-compatible channels (OpenAI, Groq, DeepSeek, vLLM, Ollama, ...): same path, bearer key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from multidict import CIMultiDictProxy

from ..config import ChannelConfig
from ..upstream.errors import UpstreamConnectError, UpstreamTimeoutError
from .base import OutgoingRequest, Timeouts, channel_headers, join_url


class HttpReply:
    """An upstream answer over HTTP; the body is streamed from the pooled connection."""

    __slots__ = ("_resp", "status", "headers", "_first_byte", "_got_first")

    def __init__(self, resp: aiohttp.ClientResponse, first_byte: float) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: CIMultiDictProxy[str] = resp.headers
        self._first_byte = first_byte

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        first = True
        try:
            while True:
                if first:
                    # A stream that answers headers but never a byte is as dead as one that never answers.
                    async with asyncio.timeout(self._first_byte):
                        chunk = await content.readany()
                    first = False
                else:
                    chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except TimeoutError as exc:
            raise UpstreamTimeoutError("no first byte within %.1fs" % self._first_byte) from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamConnectError(f"upstream connection broke: {exc.__class__.__name__}") from exc

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except TimeoutError as exc:
            raise UpstreamTimeoutError("upstream read timed out") from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamConnectError(f"upstream connection broke: {exc.__class__.__name__}") from exc

    def close(self) -> None:
        self._resp.close()


class OpenAIProvider:
    name = "openai"

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def send(
        self, channel: ChannelConfig, request: OutgoingRequest, timeouts: Timeouts
    ) -> HttpReply:
        url = join_url(channel.endpoint, request.path, request.query_string)
        timeout = aiohttp.ClientTimeout(
            total=None if request.stream else timeouts.total,
            connect=timeouts.connect,
            sock_read=timeouts.total,
        )
        try:
            async with asyncio.timeout(timeouts.first_byte):
                resp = await self._session.request(
                    request.method,
                    url,
                    data=request.body if request.method != "GET" else None,
                    headers=channel_headers(channel, request),
                    timeout=timeout,
                    allow_redirects=False,
                    auto_decompress=False,
                )
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"no answer within {timeouts.first_byte:.1f}s") from exc
        except aiohttp.ServerTimeoutError as exc:
            raise UpstreamTimeoutError(str(exc) or "timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamConnectError(_describe(exc)) from exc
        return HttpReply(resp, timeouts.first_byte)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
