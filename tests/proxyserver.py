"""A small HTTP proxy for tests: ``CONNECT`` tunnels and absolute-form requests, optional basic auth.

It resolves host names through its own table (``hosts``), so an upstream named
``upstream.test`` — which no resolver knows — is reachable through this proxy and nowhere else.
Every request it sees is recorded as ``(method, target, Proxy-Authorization or None)``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from urllib.parse import urlsplit


class TestProxy:
    __test__ = False  # not a test class

    def __init__(self, hosts: dict[str, str] | None = None, *, user: str | None = None,
                 password: str | None = None) -> None:
        self.hosts = hosts or {}
        self.seen: list[tuple[str, str, str | None]] = []
        self._expected = None
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self._expected = f"Basic {token}"
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _resolve(self, host: str) -> str:
        return self.hosts.get(host, host)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers = [line.split(":", 1) for line in lines[1:] if line]
        auth = next((v.strip() for k, v in headers if k.lower() == "proxy-authorization"), None)
        self.seen.append((method, target, auth))
        if self._expected is not None and auth != self._expected:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b"Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(self._resolve(host), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await self._pipe(reader, writer, up_reader, up_writer)
            return
        # Absolute form (an http:// upstream): forward as origin form, one request per connection.
        url = urlsplit(target)
        path = url.path + (f"?{url.query}" if url.query else "")
        kept = [f"{k}:{v}" for k, v in headers
                if k.lower() not in ("proxy-authorization", "proxy-connection", "connection")]
        new_head = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
        up_reader, up_writer = await asyncio.open_connection(
            self._resolve(url.hostname or ""), url.port or 80
        )
        up_writer.write(new_head.encode("latin-1"))
        await self._pipe(reader, writer, up_reader, up_writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        try:
            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        finally:
            up_writer.close()
