"""The lean HTTP/1.1 client (``providers/h1.py``) against real sockets.

Servers here are either aiohttp apps or scripted asyncio servers that write exact bytes, for the
framings and faults a real provider may send: chunks split anywhere, trailers, a body ended by
the connection's close, interim 1xx answers, a connection closed while idle in the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from tlsutil import self_signed

from smartproxy.providers.base import Timeouts
from smartproxy.providers.h1 import HIGH_WATER, H1Pool, Target, request_head, whole_chunks
from smartproxy.upstream.errors import UpstreamConnectError, UpstreamTimeoutError

T = Timeouts(total=5, connect=2, first_byte=5)
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def pool() -> AsyncIterator[H1Pool]:
    p = H1Pool(100)
    yield p
    await p.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    """Start a server that runs ``script`` for each connection; returns its base URL."""
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()

    async def start(script: Script) -> str:
        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await script(r, w)
            finally:
                w.close()

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
    for task in handlers:  # a script still waiting: its connection closes now, not at loop end
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)


async def read_request(r: asyncio.StreamReader) -> bytes:
    head = await r.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await r.readexactly(int(line.split(b":")[1]))
    return head


async def app_server(routes: list[web.RouteDef]) -> TestServer:
    app = web.Application()
    app.add_routes(routes)
    server = TestServer(app)
    await server.start_server()
    return server


async def big_server(size: int) -> TestServer:
    """POST /big answers ``size`` bytes as fast as the reader takes them."""

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(size // 8192):
            await resp.write(b"x" * 8192)
        await resp.write_eof()
        return resp

    return await app_server([web.post("/big", big)])


# -- requests -----------------------------------------------------------------------------------


def test_request_head_and_targets() -> None:
    t = Target("http://Example.com/v1/chat completions?q=é&x=1")
    assert t.key == (False, "example.com", 80) and t.host_header == "example.com"
    assert t.target == "/v1/chat%20completions?q=%C3%A9&x=1"
    assert Target("https://h:8443/a%20b").target == "/a%20b"  # escapes stay as they are
    assert Target("https://h:8443").host_header == "h:8443" and Target("https://h").port == 443
    v6 = Target("http://[::1]:9000/v1")
    assert (v6.host, v6.port, v6.host_header) == ("::1", 9000, "[::1]:9000")
    for bad in ("ftp://h/", "http:///x", "http://user:pw@h/", "http://h:99999/"):
        with pytest.raises(ValueError):
            Target(bad)
    head = request_head("POST", t, {"Authorization": "Bearer k", "Host": "evil"}, 2)
    assert head == (
        b"POST /v1/chat%20completions?q=%C3%A9&x=1 HTTP/1.1\r\nHost: example.com\r\n"
        b"Authorization: Bearer k\r\nContent-Length: 2\r\n\r\n"
    )
    for name, value in (("X", "a\r\nX-Injected: 1"), ("X", "a\nb"), ("X", "a\rb"), ("X\r\nY", "1")):
        with pytest.raises(ValueError, match="newline"):
            request_head("POST", t, {name: value}, 0)


async def test_a_header_the_client_refuses_is_a_value_error(pool: H1Pool, scripted) -> None:
    url = await scripted(read_request)
    with pytest.raises(ValueError):
        await pool.send("POST", url + "/x", {"K": "a\r\nb: 1"}, b"{}", stream=False, timeouts=T)
    assert pool.open_connections == 0


# -- keep-alive ---------------------------------------------------------------------------------


async def test_connections_are_kept_and_reused(pool: H1Pool) -> None:
    peers: list[object] = []

    async def answer(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response({"n": len(peers)})

    server = await app_server([web.post("/v1/x", answer)])
    url = str(server.make_url("/v1/x"))
    try:
        for n in (1, 2, 3):
            reply = await pool.send("POST", url, {}, b"{}", stream=False, timeouts=T)
            assert reply.status == 200 and await reply.read() == b'{"n": %d}' % n
        assert len(set(peers)) == 1  # one connection carried all three
        assert pool.open_connections == 1 and pool.idle_connections() == 1
    finally:
        await server.close()


async def test_connection_close_and_http_1_0_are_not_reused(pool: H1Pool, scripted) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        await r.read()  # until the client closes

    url = await scripted(script)
    reply = await pool.send("POST", url, {}, b"", stream=False, timeouts=T)
    assert await reply.read() == b"ok"
    await asyncio.sleep(0.05)
    assert pool.open_connections == 0


async def test_idle_connections_expire(scripted) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(r)
            except asyncio.IncompleteReadError:
                return
            w.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    url = await scripted(script)
    pool = H1Pool(10, keepalive=0.2)
    try:
        reply = await pool.send("GET", url, {}, b"", stream=False, timeouts=T)
        assert reply.status == 204 and await reply.read() == b""
        assert pool.idle_connections() == 1
        await asyncio.sleep(0.5)
        assert pool.open_connections == 0 and pool.idle_connections() == 0
    finally:
        await pool.close()


async def test_a_connection_the_upstream_closed_while_idle_is_not_used(
    pool: H1Pool, scripted
) -> None:
    conns = 0

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % conns)
        await w.drain()  # then close, as an upstream whose keep-alive ran out

    url = await scripted(script)
    for n in (b"1", b"2"):
        reply = await pool.send("POST", url, {}, b"{}", stream=False, timeouts=T)
        assert await reply.read() == n
        await asyncio.sleep(0.05)
    assert pool.open_connections == 0


async def test_the_limit_makes_a_request_wait_and_counts_toward_connect(scripted) -> None:
    release = asyncio.Event()

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(r)
            except asyncio.IncompleteReadError:
                return
            await release.wait()
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    url = await scripted(script)
    pool = H1Pool(1)
    try:
        first = asyncio.create_task(pool.send("POST", url, {}, b"", stream=False, timeouts=T))
        await asyncio.sleep(0.05)
        short = Timeouts(total=5, connect=0.1, first_byte=5)
        with pytest.raises(UpstreamTimeoutError, match=r"connect timed out after 0\.1s"):
            await pool.send("POST", url, {}, b"", stream=False, timeouts=short)
        second = asyncio.create_task(pool.send("POST", url, {}, b"", stream=False, timeouts=T))
        await asyncio.sleep(0.05)
        assert not second.done() and pool.open_connections == 1
        release.set()
        assert await (await first).read() == b"ok"
        assert await (await second).read() == b"ok"  # on the same connection, after the first
        assert pool.open_connections == 1
    finally:
        await pool.close()


async def test_at_the_limit_an_idle_connection_to_another_host_makes_room(scripted) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await r.read()

    a, b = await scripted(script), await scripted(script)
    pool = H1Pool(1)
    try:
        for url in (a, b):
            assert await (await pool.send("GET", url, {}, b"", stream=False, timeouts=T)).read()
        assert pool.open_connections == 1
    finally:
        await pool.close()


# -- framing ------------------------------------------------------------------------------------


async def test_chunks_split_anywhere_with_extensions_and_trailers(pool: H1Pool, scripted) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
        b"9;ext=1\r\ndata: 1\n\n\r\n"
        b"A\r\ndata: 22\n\n\r\n"
        b"0\r\nX-Trailer: t\r\n\r\n"
    )

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await read_request(r)
            for i in range(len(raw)):  # one byte per write: every boundary is crossed
                w.write(raw[i : i + 1])
                await w.drain()
                await asyncio.sleep(0)

    url = await scripted(script)
    for _ in range(2):  # the second on the same connection: the first ended cleanly
        reply = await pool.send("POST", url, {}, b"{}", stream=True, timeouts=T)
        assert reply.headers["Content-Type"] == "text/event-stream"
        body = b"".join([c async for c in reply.iter_chunks()])
        assert body == b"data: 1\n\ndata: 22\n\n"
    assert pool.open_connections == 1


async def test_one_chunk_per_read_and_the_odd_ones(pool: H1Pool, scripted) -> None:
    """Each chunk written (and so, mostly, read) on its own, as a stream's come: sizes in upper
    case and with leading zeros, an extension, two chunks and the last chunk in one read."""
    writes = [
        b"9\r\ndata: 1\n\n\r\n",
        b"A\r\ndata: 22\n\n\r\n",
        b"000b\r\ndata: 333\n\n\r\n",
        b"9;x=y\r\ndata: 4\n\n\r\n",
        b"9\r\ndata: 5\n\n\r\n9\r\ndata: 6\n\n\r\n",
        b"9\r\ndata: 7\n\n\r\n0\r\n\r\n",
    ]

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for chunk in writes:
                await asyncio.sleep(0.01)
                w.write(chunk)
                await w.drain()

    url = await scripted(script)
    for _ in range(2):
        reply = await pool.send("POST", url, {}, b"{}", stream=True, timeouts=T)
        got = [c async for c in reply.iter_chunks()]
        assert b"".join(got) == b"".join(b"data: %s\n\n" % n for n in (
            b"1", b"22", b"333", b"4", b"5", b"6", b"7"))  # fmt: skip
    assert pool.open_connections == 1


async def test_a_chunk_not_ended_by_crlf_breaks_the_answer(pool: H1Pool, scripted) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await w.drain()
        await asyncio.sleep(0.01)
        w.write(b"9\r\ndata: 1\n\nXY\r\n")  # 9 bytes of data, then not CRLF
        await w.drain()
        await r.read()

    url = await scripted(script)
    reply = await pool.send("POST", url, {}, b"{}", stream=True, timeouts=T)
    with pytest.raises(UpstreamConnectError):
        async for _ in reply.iter_chunks():
            pass


async def test_a_body_ended_by_the_close(pool: H1Pool, scripted) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"a":')
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(b"1}")

    url = await scripted(script)
    reply = await pool.send("POST", url, {}, b"{}", stream=False, timeouts=T)
    assert await reply.read() == b'{"a":1}'


async def test_interim_answers_are_skipped(pool: H1Pool, scripted) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        w.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")

    url = await scripted(script)
    reply = await pool.send("POST", url, {}, b"{}", stream=False, timeouts=T)
    assert reply.status == 201 and "Link" not in reply.headers and await reply.read() == b"ok"


@pytest.mark.parametrize(
    "answer, message",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "mid-body"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "mid-body"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "mid-body"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "bad HTTP answer"),
        (b"", "server disconnected without an answer"),
    ],
)
async def test_broken_answers(pool: H1Pool, scripted, answer: bytes, message: str) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(answer)
        await w.drain()

    url = await scripted(script)
    with pytest.raises(UpstreamConnectError, match=message):
        reply = await pool.send("POST", url, {}, b"{}", stream=False, timeouts=T)
        await reply.read()
    await asyncio.sleep(0.05)
    assert pool.open_connections == 0


# -- deadlines ----------------------------------------------------------------------------------


async def test_a_stream_silent_for_the_attempt_timeout(pool: H1Pool, scripted) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(4):  # data keeps coming for longer than the timeout, then stops
            w.write(b"9\r\ndata: 1\n\n\r\n")
            await asyncio.sleep(0.1)
        await asyncio.sleep(30)

    url = await scripted(script)
    t = Timeouts(total=0.25, connect=1, first_byte=0.25)
    reply = await pool.send("POST", url, {}, b"{}", stream=True, timeouts=t)
    got = []
    with pytest.raises(UpstreamTimeoutError, match=r"no data for 0\.25s"):
        async for chunk in reply.iter_chunks():
            got.append(chunk)
    assert len(got) == 4


async def test_a_body_slower_than_the_attempt_timeout(pool: H1Pool, scripted) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await asyncio.sleep(30)

    url = await scripted(script)
    t = Timeouts(total=0.2, connect=1, first_byte=0.2)
    reply = await pool.send("POST", url, {}, b"{}", stream=False, timeouts=t)
    with pytest.raises(UpstreamTimeoutError, match="read timed out"):
        await reply.read()
    assert pool.open_connections == 0


async def test_headers_by_first_byte_then_the_body_until_the_end(pool: H1Pool, scripted) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        await asyncio.sleep(0.3)  # past the first-byte deadline, before the attempt's end
        w.write(b"cd")

    url = await scripted(script)
    t = Timeouts(total=2, connect=1, first_byte=0.1)
    reply = await pool.send("POST", url, {}, b"{}", stream=False, timeouts=t)
    assert await reply.read() == b"abcd"


# -- flow and lifetime --------------------------------------------------------------------------


async def test_a_slow_reader_pauses_the_upstream(pool: H1Pool) -> None:
    size = 4 * HIGH_WATER

    server = await big_server(size)
    try:
        reply = await pool.send(
            "POST", str(server.make_url("/big")), {}, b"", stream=True, timeouts=T
        )
        await asyncio.sleep(0.2)  # nothing read: the client holds a bounded amount
        # at most one read (uvloop reads up to 256 KiB) beyond the mark
        assert reply._size <= HIGH_WATER + 262144 and reply._paused
        total = 0
        async for chunk in reply.iter_chunks():
            total += len(chunk)
        assert total == size
    finally:
        await server.close()


async def test_close_mid_body_drops_the_connection(pool: H1Pool, scripted) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        await r.read()

    url = await scripted(script)
    reply = await pool.send("POST", url, {}, b"{}", stream=True, timeouts=T)
    reply.close()
    reply.close()
    await asyncio.sleep(0.05)
    assert pool.open_connections == 0


async def test_tls_with_the_given_trust(tmp_path: Path) -> None:
    server_ctx, client_ctx = self_signed(tmp_path, "localhost")

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"secure": request.secure})

    app = web.Application()
    app.router.add_post("/v1/x", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
    url = f"https://localhost:{port}/v1/x"
    trusting = H1Pool(10, ssl_context=client_ctx)
    default = H1Pool(10)  # the system's trust: this certificate is nobody's
    try:
        reply = await trusting.send("POST", url, {}, b"{}", stream=False, timeouts=T)
        assert reply.status == 200 and await reply.read() == b'{"secure": true}'
        with pytest.raises(UpstreamConnectError, match="TLS: certificate verify failed"):
            await default.send("POST", url, {}, b"{}", stream=False, timeouts=T)
    finally:
        await trusting.close()
        await default.close()
        await runner.cleanup()


async def test_unasked_bytes_on_an_idle_connection_close_it(pool: H1Pool, scripted) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await asyncio.sleep(0.05)
        w.write(b"HTTP/1.1 200 OK\r\n")  # nobody asked
        await r.read()

    url = await scripted(script)
    assert await (await pool.send("POST", url, {}, b"", stream=False, timeouts=T)).read() == b"ok"
    await asyncio.sleep(0.15)
    assert pool.open_connections == 0


async def test_close_ends_everything(scripted) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        await asyncio.sleep(30)

    url = await scripted(script)
    pool = H1Pool(10)
    task = asyncio.create_task(pool.send("POST", url, {}, b"", stream=False, timeouts=T))
    await asyncio.sleep(0.05)
    await pool.close()
    with pytest.raises(UpstreamConnectError):
        await task
    with pytest.raises(UpstreamConnectError, match="stopping"):
        await pool.send("POST", url, {}, b"", stream=False, timeouts=T)
    assert pool.open_connections == 0


async def test_names_are_resolved_once_and_a_failure_is_not_kept(
    scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")

    port = (await scripted(script)).rsplit(":", 1)[1]
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    asked: list[str] = []

    async def counting(host: str, *args: object, **kw: object) -> object:
        asked.append(host)
        return await real(host, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "getaddrinfo", counting)
    pool = H1Pool(10)
    try:
        for _ in range(3):  # three connections (each answer closes its own), one lookup
            url = f"http://localhost:{port}/x"
            reply = await pool.send("POST", url, {}, b"", stream=False, timeouts=T)
            assert await reply.read() == b"ok"
        assert asked == ["localhost"]
        for _ in range(2):
            with pytest.raises(
                UpstreamConnectError, match=r"cannot connect to nothing\.invalid:80: "
            ):
                await pool.send("GET", "http://nothing.invalid/", {}, b"", stream=False, timeouts=T)
        assert asked == ["localhost", "nothing.invalid", "nothing.invalid"]
    finally:
        await pool.close()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_large_body_read_whole(pool: H1Pool, stream: bool) -> None:
    """``read()`` takes everything: the back-pressure of ``iter_chunks`` must not stall it
    (an embeddings answer for many inputs is megabytes)."""
    size = 8 * HIGH_WATER + 5

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"e" * size, content_type="application/json")

    server = await app_server([web.post("/big", big)])
    try:
        t = Timeouts(total=5, connect=2, first_byte=5)
        reply = await pool.send(
            "POST", str(server.make_url("/big")), {}, b"", stream=stream, timeouts=t
        )
        await asyncio.sleep(0.1)  # the body arrives before anyone reads
        assert len(await reply.read()) == size
    finally:
        await server.close()


async def test_push_mode_hands_each_chunk_over_as_it_comes(pool: H1Pool, scripted) -> None:
    """``push``: queued chunks first, then every chunk in the connection's callback (no
    coroutine woken per chunk), ``on_end`` once whole, and the connection reused."""
    events = [b"data: %d\n\n" % i for i in range(5)]
    go = asyncio.Event()

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i, event in enumerate(events):
                w.write(b"%x\r\n%s\r\n" % (len(event), event))
                await w.drain()
                if i == 1:
                    await go.wait()  # two chunks wait in the queue before push() is called
                await asyncio.sleep(0.01)
            w.write(b"0\r\n\r\n")

    url = await scripted(script)
    reply = await pool.send("POST", url, {}, b"{}", stream=True, timeouts=T)
    await asyncio.sleep(0.05)
    got: list[bytes] = []
    ended = asyncio.Event()
    reply.push(got.append, ended.set)
    assert b"".join(got) == b"".join(events[:2])  # what was queued, at once
    go.set()
    await asyncio.wait_for(ended.wait(), 5)
    assert b"".join(got) == b"".join(events) and reply.error is None
    assert pool.open_connections == 1  # whole: back in the pool
    # A break mid-stream: on_end, with the error said.
    reply = await pool.send("POST", url, {}, b"{}", stream=True, timeouts=T)
    reply.close()  # detached: neither sink nor on_end is called any more
    assert reply.error is not None


def test_whole_chunks_says_where_each_chunks_data_starts() -> None:
    assert whole_chunks(b"3\r\nabc\r\n") == [3]
    assert whole_chunks(b"3\r\nabc\r\nA\r\n0123456789\r\n") == [3, 11]
    for read in (b"", b"3\r\nabc", b"3\r\nabcd\r\n", b"3\r\nabc\r\n0\r\n\r\n", b"0\r\n\r\n",
                 b"3;x=1\r\nabc\r\n", b"\r\nabc\r\n", b"zz\r\nabc\r\n", b"3\r\nabc\r\n2\r\na"):  # fmt: skip
        assert whole_chunks(read) == [], read


async def test_push_mode_offers_whole_chunks_as_read(pool: H1Pool, scripted) -> None:
    """``push(..., raw)``: a read that is whole chunks goes to ``raw`` framing and all; one it
    refuses, or a read that is not whole chunks, goes to ``sink`` as data."""
    events = [b"data: %d\n\n" % i for i in range(6)]

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        w.write(b"%x\r\n%s\r\n" % (len(events[0]), events[0]))
        await w.drain()
        await asyncio.sleep(0.05)
        for event in events[1:5]:
            w.write(b"%x\r\n%s\r\n" % (len(event), event))
            await w.drain()
            await asyncio.sleep(0.02)
        split = b"%x\r\n%s\r\n0\r\n\r\n" % (len(events[5]), events[5])
        w.write(split[:4])  # the last chunk in two reads, the end with it
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(split[4:])
        await asyncio.sleep(0.3)  # open while the answer is checked

    url = await scripted(script)
    reply = await pool.send("POST", url, {}, b"{}", stream=True, timeouts=T)
    first = await reply.iter_chunks().__anext__()
    got: list[bytes] = [first]
    taken: list[bytes] = []

    def raw(framed: bytes, starts: list[int]) -> bool:
        assert len(starts) == 1 and framed.endswith(b"\r\n")
        start = starts[0]
        assert framed[start:-2] in events
        if framed[start:-2] == events[2]:
            return False  # refused: to sink
        taken.append(framed)
        got.append(framed[start:-2])
        return True

    ended = asyncio.Event()
    reply.push(got.append, ended.set, raw)
    await asyncio.wait_for(ended.wait(), 5)
    assert b"".join(got) == b"".join(events) and reply.error is None
    assert taken == [b"%x\r\n%s\r\n" % (len(e), e) for e in (events[1], events[3], events[4])]
    assert pool.open_connections == 1  # whole: back in the pool


async def test_push_mode_reports_a_broken_stream(pool: H1Pool, scripted) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        await w.drain()
        await asyncio.sleep(0.05)
        w.transport.abort()

    url = await scripted(script)
    reply = await pool.send("POST", url, {}, b"{}", stream=True, timeouts=T)
    got: list[bytes] = []
    ended = asyncio.Event()
    reply.push(got.append, ended.set)
    await asyncio.wait_for(ended.wait(), 5)
    assert got == [b"abc"] and isinstance(reply.error, UpstreamConnectError)


async def test_a_pause_for_a_slow_reader_is_not_the_upstreams_silence(pool: H1Pool) -> None:
    """Reading paused because the reader is behind is the gateway's doing: the stream's idle
    deadline does not run out on the upstream meanwhile (a client that stopped reading for
    longer than the timeout got 'no data for 3s' and the channel a failure, audit finding)."""
    size = 4 * HIGH_WATER

    server = await big_server(size)
    short = Timeouts(total=0.3, connect=2, first_byte=2)
    try:
        reply = await pool.send(
            "POST", str(server.make_url("/big")), {}, b"", stream=True, timeouts=short
        )
        await asyncio.sleep(1.0)  # more than three idle timeouts while paused
        assert reply._paused
        total = 0
        async for chunk in reply.iter_chunks():
            total += len(chunk)
        assert total == size
    finally:
        await server.close()
