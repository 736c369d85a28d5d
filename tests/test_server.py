"""Client timeouts and malformed-request logging of the gateway's HTTP server (issue [6]),
over real sockets: idle, half-sent and stalled connections are closed and their memory freed."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from conftest import DEV_KEY, Clock, base_config

from smartproxy.app import create_app
from smartproxy.config import parse_config
from smartproxy.server import MALFORMED, ClientTimeouts, GatewayRunner

FAST = ClientTimeouts(header=0.3, body=0.3, keepalive=0.4)
Serve = Callable[..., Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[GatewayRunner] = []

    async def start(app: web.Application, timeouts: ClientTimeouts = FAST) -> int:
        runner = GatewayRunner(app, timeouts=timeouts, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (reads until EOF)."""
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        try:
            while await reader.read(65536):
                pass
        except ConnectionResetError:
            pass  # closed by abort (RST): closed all the same
    return time.monotonic() - started


def hello_app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        await request.read()
        if request.query.get("work"):
            await asyncio.sleep(float(request.query["work"]))
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_route("*", "/", hello)
    return app


async def test_a_connection_that_sends_nothing_is_closed(serve: Serve) -> None:
    port = await serve(hello_app())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    took = await closed_within(reader, 3)
    assert 0.2 < took < 1.5
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(
    serve: Serve,
) -> None:
    port = await serve(hello_app())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"hi")
    assert b"200 OK" in head
    took = await closed_within(reader, 3)
    assert 0.3 < took < 1.5
    writer.close()


async def test_half_sent_headers_are_dropped_after_the_header_timeout(serve: Serve) -> None:
    port = await serve(hello_app())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le")
    took = await closed_within(reader, 3)
    assert took < 1.5
    writer.close()


async def test_work_longer_than_the_body_timeout_is_not_cut(serve: Serve) -> None:
    """Only a body the handler waits for is timed out; a handler's own work never is."""
    port = await serve(hello_app())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /?work=1.0 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
    async with asyncio.timeout(3):
        head = await reader.readuntil(b"hi")
    assert b"200 OK" in head
    writer.close()


async def test_a_stalled_body_is_dropped_and_its_memory_freed(serve: Serve) -> None:
    """A chat request whose 8 MB body stops after 4 MB: the gateway holds the 4 MB until the body
    timeout, then closes the connection and frees them (it used to hold them forever)."""
    config = parse_config(base_config(channels=[{"name": "m", "type": "mock"}]))
    port = await serve(create_app(config, clock=Clock()), ClientTimeouts(1.0, 1.0, 1.0))
    sent = 4 << 20
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {DEV_KEY}\r\nContent-Length: {8 << 20}\r\n\r\n".encode()
            + b"x" * sent
        )
        await writer.drain()  # the client holds at most its 64 KiB write buffer from here on
        held = tracemalloc.get_traced_memory()[0]
        for _ in range(40):  # until the gateway has read what was sent (a loaded machine...)
            await asyncio.sleep(0.02)
            held = max(held, tracemalloc.get_traced_memory()[0])
            if held - base > sent * 0.9:
                break
        took = await closed_within(reader, 4)
        writer.close()
        await asyncio.sleep(0.05)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert took < 2.5
    assert held - after > sent * 0.75, (held, after)


async def test_malformed_requests_log_one_line_each_without_traceback(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    MALFORMED.__init__(burst=3)  # type: ignore[misc]
    port = await serve(hello_app())
    caplog.set_level(logging.INFO)
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
        await closed_within(reader, 3)
        writer.close()
    lines = [r for r in caplog.records if "malformed HTTP request" in r.getMessage()]
    assert len(lines) == 3  # the budget; the rest are counted
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in lines)
    assert all("\n" not in r.getMessage() for r in lines)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    MALFORMED.__init__(burst=10)  # type: ignore[misc]


async def raw_exchange(port: int, data: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Send ``data`` on a new connection; the answer's status line, headers and body, read
    until the server closes the connection (5 s: the test fails)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    async with asyncio.timeout(5):
        answer = await reader.read()  # to EOF: the connection is closed after the answer
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status.encode(), headers, body


LONG = b"a" * 9000  # over aiohttp's 8190-byte line limit


@pytest.mark.parametrize(
    ("path", "head", "status", "code"),
    [
        ("/v1/chat/completions", b"X-Big: " + LONG + b"\r\n", 431,
         "request_header_fields_too_large"),
        ("/v1/messages", b"X-Big: " + LONG + b"\r\n", 431, "request_header_fields_too_large"),
        ("/v1/models", b"".join(b"X-%d: 1\r\n" % i for i in range(200)), 431,
         "request_header_fields_too_large"),
        ("/v1/chat/completions?q=" + LONG.decode(), b"", 414, "uri_too_long"),
        ("/v1/chat/completions", b"Content-Length: aaaa\r\n", 400, "malformed_request"),
        ("/v1/messages", b"Bad Header aaaa\r\n", 400, "malformed_request"),
    ],
    ids=["big-header", "big-header-messages", "many-headers", "long-line",
         "bad-length", "bad-header-messages"],
)  # fmt: skip
async def test_malformed_requests_get_the_gateways_json_error_and_a_closed_connection(
    serve: Serve, path: str, head: bytes, status: int, code: str
) -> None:
    """aiohttp answered these ``HTTP/1.0 400`` in plain text quoting 100 bytes of the offending
    line (audit finding); the gateway's own errors are JSON (contract §3), Anthropic-shaped on
    /v1/messages when the request line could be read."""
    port = await serve(hello_app())
    request = f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode() + head + b"\r\n"
    line, headers, body = await raw_exchange(port, request)  # read to EOF: closed
    assert line.split(b" ")[1] == str(status).encode()
    assert headers["content-type"].startswith("application/json")
    assert b"aaaa" not in body
    doc = json.loads(body)
    if path.startswith("/v1/messages"):
        assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
    else:
        assert set(doc["error"]) == {"message", "type", "code", "param"}
        assert doc["error"]["code"] == code and doc["error"]["type"] == "invalid_request_error"
    assert doc["error"]["message"]


async def test_tls_sent_to_the_plain_port_and_garbage_get_a_json_400(serve: Serve) -> None:
    port = await serve(hello_app())
    for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + LONG, b"\x00\x01\r\n\r\n"):
        line, headers, body = await raw_exchange(port, garbage)
        assert line.split(b" ")[1] == b"400"
        assert json.loads(body)["error"]["code"] == "malformed_request"


async def test_a_handlers_unforeseen_exception_is_a_json_500(serve: Serve) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise ValueError("nobody foresaw this")

    app = web.Application()
    app.router.add_get("/v1/messages", broken)
    app.router.add_get("/v1/models", broken)
    port = await serve(app)
    _, _, body = await raw_exchange(port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert "nobody" not in error["message"]
    line, _, body = await raw_exchange(port, b"GET /v1/messages HTTP/1.1\r\nHost: x\r\n\r\n")
    assert line.split(b" ")[1] == b"500"
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": "api_error", "message": "internal error (logged by the gateway)"},
    }


async def test_middlewares_run_without_aiohttps_current_app_layers(serve: Serve) -> None:
    """``GatewayRunner`` takes out the coroutine aiohttp wraps around each app's middlewares to
    switch ``request.app`` (two per request through ``/v1``, ~670 bytes held in flight): the
    middlewares of the root and of the sub-app still run in order, and the handler and the
    sub-app's middleware still see their sub-app."""
    seen: list[str] = []
    name = web.AppKey("name", str)

    @web.middleware
    async def outer(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.append("root")
        return await handler(request)

    @web.middleware
    async def inner(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.append(f"sub:{request.app[name]}")
        return await handler(request)

    async def frames(request: web.Request) -> web.Response:
        names, frame = [], sys._getframe()
        while frame is not None and frame.f_code.co_name != "_handle_request":
            names.insert(0, frame.f_code.co_name)
            frame = frame.f_back
        return web.json_response({"app": request.app[name], "frames": names})

    root = web.Application(middlewares=[outer])
    sub = web.Application(middlewares=[inner])
    sub[name] = "sub"
    sub.router.add_get("/frames", frames)
    root.add_subapp("/v1", sub)
    port = await serve(root)
    line, _, body = await raw_exchange(port, b"GET /v1/frames HTTP/1.1\r\nHost: x\r\n\r\n")
    assert line.split(b" ")[1] == b"200"
    answer = json.loads(body)
    assert answer["app"] == "sub" and seen == ["root", "sub:sub"]
    assert answer["frames"] == ["_handle", "outer", "inner", "frames"]


def test_timeouts_come_from_the_server_section() -> None:
    config = parse_config(
        {"server": {"client_header_timeout": 5, "client_body_timeout": 7, "keepalive_timeout": 9,
                    "max_body_mb": 1.5}}
    )  # fmt: skip
    assert ClientTimeouts.of(config.server) == ClientTimeouts(header=5, body=7, keepalive=9)
    assert config.server.max_body_bytes == 1572864
    defaults = parse_config({}).server
    assert (defaults.client_header_timeout, defaults.client_body_timeout,
            defaults.keepalive_timeout, defaults.max_body_mb) == (60, 60, 75, 32)  # fmt: skip
    assert json.dumps(ClientTimeouts.of(defaults).__class__.__name__)
