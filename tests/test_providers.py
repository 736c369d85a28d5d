"""Provider modules: request building, and aiohttp failures translated into AttemptErrors.

The translation is tested twice: directly (``translate``) for failures that are hard to provoke,
and through ``OpenAIProvider`` against real sockets for the ones that matter most (refused,
dropped, slow headers, late first chunk, a body cut mid-stream).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from smartproxy.config import ChannelConfig
from smartproxy.providers.base import OutgoingRequest, Timeouts, channel_headers, join_url
from smartproxy.providers.h1 import H1Pool
from smartproxy.providers.openai import OpenAIProvider, translate
from smartproxy.upstream.errors import AttemptError, UpstreamConnectError, UpstreamTimeoutError

FAST = Timeouts(total=5, connect=2, first_byte=0.2)


def make_channel(endpoint: str, **kw: object) -> ChannelConfig:
    return ChannelConfig(name="c", type="openai", endpoint=endpoint, api_key="sk-chan", **kw)  # type: ignore[arg-type]


def outgoing(stream: bool = False, headers: dict[str, str] | None = None) -> OutgoingRequest:
    return OutgoingRequest(
        method="POST",
        path="/chat/completions",
        query_string="a=1",
        headers=CIMultiDict(headers or {}),
        body=b'{"model": "m"}',
        stream=stream,
    )


# -- request building -----------------------------------------------------------------------------


def test_channel_headers_put_the_channel_key_in_place_of_the_clients() -> None:
    ch = make_channel("http://x/v1", headers={"X-Org": "org-1"})
    headers = channel_headers(ch, outgoing(headers={"Authorization": "Bearer client", "X-A": "1"}))
    assert headers["Authorization"] == "Bearer sk-chan"
    assert headers["X-Org"] == "org-1" and headers["X-A"] == "1"


def test_join_url() -> None:
    assert join_url("http://h/v1/", "/chat/completions", "") == "http://h/v1/chat/completions"
    assert join_url("http://h/v1", "/embeddings", "q=1") == "http://h/v1/embeddings?q=1"


# -- translate() ---------------------------------------------------------------------------------


def test_translate_timeouts() -> None:
    err = translate(aiohttp.ConnectionTimeoutError("x"), connect_timeout=2)
    assert isinstance(err, UpstreamTimeoutError) and err.message == "connect timed out after 2s"
    err = translate(aiohttp.SocketTimeoutError("x"), read_timeout=30)
    assert isinstance(err, UpstreamTimeoutError) and err.message == "no data for 30s"
    err = translate(TimeoutError(), first_byte=0.5)
    assert isinstance(err, UpstreamTimeoutError) and err.message == "no answer within 0.5s"
    assert translate(TimeoutError()).message == "read timed out"
    assert translate(TimeoutError()).kind == "timeout"


def test_translate_connection_failures() -> None:
    err = translate(aiohttp.ServerDisconnectedError())
    assert isinstance(err, UpstreamConnectError)
    assert err.message == "server disconnected without an answer" and err.kind == "error"
    err = translate(aiohttp.ClientPayloadError("Response payload is not completed"))
    assert err.message == "connection broke mid-body (payload not completed)"
    assert translate(ConnectionResetError()).message == "connection failed: ConnectionResetError"
    err = translate(aiohttp.InvalidURL("nope://"))
    assert err.message.startswith("connection failed: InvalidURL: ")


# -- OpenAIProvider against real sockets ---------------------------------------------------------


@pytest.fixture(params=["aiohttp", "h1"])
async def provider(request: pytest.FixtureRequest) -> AsyncIterator[OpenAIProvider]:
    """The provider over either client: aiohttp's (outbound proxies, injected sessions) or the
    lean one (``h1.H1Pool``, every direct call of a running gateway). The same words must come
    out of both."""
    async with aiohttp.ClientSession() as s:
        pool = H1Pool(100) if request.param == "h1" else None
        yield OpenAIProvider(s, pool)
        if pool is not None:
            await pool.close()


async def serve(handler: object) -> TestServer:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)  # type: ignore[arg-type]
    server = TestServer(app)
    await server.start_server()
    return server


async def test_refused_connection(provider: OpenAIProvider) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UpstreamConnectError) as info:
        await provider.send(make_channel(f"http://127.0.0.1:{port}/v1"), outgoing(), FAST)
    refused = os.strerror(errno.ECONNREFUSED)
    assert info.value.message == f"cannot connect to 127.0.0.1:{port}: {refused}"


async def test_dropped_socket(provider: OpenAIProvider) -> None:
    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    server = await serve(drop)
    try:
        with pytest.raises(UpstreamConnectError, match="server disconnected"):
            await provider.send(
                make_channel(str(server.make_url("/v1"))), outgoing(), FAST
            )
    finally:
        await server.close()


async def test_slow_headers_time_out_at_first_byte(provider: OpenAIProvider) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(30)  # cancelled when the provider gives up
        return web.Response()

    server = await serve(slow)
    try:
        with pytest.raises(UpstreamTimeoutError, match=r"no answer within 0\.2s"):
            await provider.send(
                make_channel(str(server.make_url("/v1"))), outgoing(), FAST
            )
    finally:
        await server.close()


async def test_late_first_chunk_and_a_body_cut_mid_stream(provider: OpenAIProvider) -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if request.query.get("late"):
            await asyncio.sleep(30)
        await resp.write(b"data: 1\n\n")
        assert request.transport is not None
        request.transport.close()
        return resp

    server = await serve(stream)
    ch = make_channel(str(server.make_url("/v1")))
    try:
        late = OutgoingRequest("POST", "/chat/completions", "late=1", CIMultiDict(), b"{}", True)
        reply = await provider.send(ch, late, FAST)
        assert reply.status == 200
        with pytest.raises(UpstreamTimeoutError, match=r"no first chunk within 0\.2s"):
            async for _ in reply.iter_chunks():
                pass
        reply.close()

        reply = await provider.send(ch, outgoing(stream=True), FAST)
        got: list[bytes] = []
        with pytest.raises(UpstreamConnectError, match="mid-body") as info:
            async for chunk in reply.iter_chunks():
                got.append(chunk)
        assert b"".join(got) == b"data: 1\n\n"
        assert isinstance(info.value, AttemptError)
        reply.close()
    finally:
        await server.close()
