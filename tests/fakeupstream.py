"""A fake OpenAI-compatible provider: a real aiohttp app with one behaviour per model name.

Behaviour is chosen by the request's ``model`` (``ok``, ``sse``, ``fail-500``, ``fail-429``,
``fail-400``, ``slow``, ``drop``, ``hold``, ``late``, ``cut-N``, ``gate-<behaviour>``, ...) or
scripted per channel with ``script``: a list of behaviours consumed one per request (then
``default``).

``slow``: no answer for 30 s. ``late``: stream headers at once, the first chunk after 30 s.
``drop``: socket closed without an answer. ``hold``: stream waits on ``release`` after chunk 1.
``cut-N``: socket closed after N stream chunks. ``gate-X``: waits on ``gate``, then behaves as X.
``coding``: answers (JSON and streams) compressed although the gateway asks for ``identity``
(``Encoder``).
(The test server cancels a handler whose client went away, so the 30 s are never waited out.)
"""

from __future__ import annotations

import asyncio
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WORDS = ["Hello", " from", " the", " fake", " upstream", "."]


class Encoder:
    """Compresses what a fake sends, as a server that ignores ``Accept-Encoding: identity``:
    ``gzip``, ``deflate`` (zlib-wrapped), ``raw-deflate`` (raw, sent as ``deflate``, as some
    servers do) or any other name (gzip bytes under that name: a coding the gateway cannot read).
    Each stream chunk is flushed, so that it can be decoded on arrival."""

    def __init__(self, coding: str) -> None:
        self.header = "deflate" if coding == "raw-deflate" else coding
        wbits = {"deflate": zlib.MAX_WBITS, "raw-deflate": -zlib.MAX_WBITS}.get(coding, 31)
        self._z = zlib.compressobj(wbits=wbits)

    def chunk(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def end(self) -> bytes:
        return self._z.flush()

    def whole(self, data: bytes) -> bytes:
        return self.chunk(data) + self.end()


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeUpstream:
    """State of one fake provider; ``app()`` builds its aiohttp application."""

    name: str = "up"
    seen: list[Seen] = field(default_factory=list)
    script: list[str] = field(default_factory=list)  # behaviours for the next requests
    default: str | None = None  # behaviour when the script is empty (None: from the model name)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # "hold" streams wait on it
    first_sent: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # "gate-X" requests wait on it
    usage: dict[str, int] | None = field(  # None: answers carry no ``usage`` at all
        default_factory=lambda: {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}
    )
    chunks: list[str] = field(default_factory=lambda: list(WORDS))
    retry_after: str = "2"
    sent_stream: list[bytes] = field(default_factory=list)  # exact bytes of the last stream
    stream_usage: bool = True  # False: ignore stream_options.include_usage (as some providers do)
    stream_type: str = "text/event-stream"  # the Content-Type streams are sent with
    coding: str | None = None  # Content-Encoding of every answer (``Encoder``); None: identity
    chunk_gap: float = 0.0  # seconds between stream events (each then comes as a read of its own)
    compact: bool = False  # stream events' JSON without spaces (as OpenAI sends it)
    sent_body: bytes = b""  # exact bytes of the last JSON answer

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/v1/{tail:.*}", self.handle)
        return app

    def behaviour(self, body: dict[str, Any]) -> str:
        if self.script:
            return self.script.pop(0)
        if self.default:
            return self.default
        model = str(body.get("model", "ok"))
        prefixes = ("fail-", "slow", "drop", "hold", "cut-", "late", "gate-")
        return model if model.startswith(prefixes) else "ok"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append(
            Seen(
                request.method,
                request.path,
                request.rel_url.raw_query_string,
                dict(request.headers),
                raw,
            )
        )
        if request.method == "GET":
            return web.json_response(
                {
                    "object": "list",
                    "data": [
                        {
                            "id": "gpt-4o-mini",
                            "object": "model",
                            "created": 0,
                            "owned_by": self.name,
                        }
                    ],
                }
            )
        body = json.loads(raw) if raw else {}
        what = self.behaviour(body)
        if what.startswith("gate-"):
            await self.gate.wait()
            what = what[5:]
        if what.startswith("fail-"):
            status = int(what[5:8])
            headers = {"Retry-After": self.retry_after} if status == 429 else {}
            return self._json(
                {
                    "error": {
                        "message": f"{self.name} says {status}",
                        "type": "upstream_test",
                        "code": f"e{status}",
                        "param": None,
                    }
                },
                status=status,
                headers=headers,
            )
        if what == "slow":
            await asyncio.sleep(30)
        if what == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if body.get("stream"):
            return await self._stream(request, body, what)
        if request.path.endswith("/embeddings"):
            return self._json(
                {
                    "object": "list",
                    "model": body["model"],
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                    "usage": {"prompt_tokens": 3, "total_tokens": 3},
                }
            )
        answer: dict[str, Any] = {
            "id": "chatcmpl-fake1",
            "object": "chat.completion",
            "created": 1,
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(self.chunks)},
                    "finish_reason": "stop",
                }
            ],
            "served_by": self.name,
        }
        if self.usage is not None:
            answer["usage"] = self.usage
        return self._json(answer)

    def _json(
        self, obj: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        body = json.dumps(obj).encode()
        headers = dict(headers or {})
        if self.coding is not None:
            encoder = Encoder(self.coding)
            body = encoder.whole(body)
            headers["Content-Encoding"] = encoder.header
        self.sent_body = body
        return web.Response(
            body=body, status=status, headers=headers, content_type="application/json"
        )

    async def _stream(
        self, request: web.Request, body: dict[str, Any], what: str
    ) -> web.StreamResponse:
        include_usage = self.stream_usage and bool(
            (body.get("stream_options") or {}).get("include_usage")
        )
        resp = web.StreamResponse(headers={"Content-Type": self.stream_type})
        encoder = Encoder(self.coding) if self.coding is not None else None
        if encoder is not None:
            resp.headers["Content-Encoding"] = encoder.header
        await resp.prepare(request)

        async def write(data: bytes) -> None:
            await resp.write(encoder.chunk(data) if encoder is not None else data)

        self.sent_stream = []
        cut_after = int(what[4:]) if what.startswith("cut-") else None
        if what == "late":
            await asyncio.sleep(30)
        for i, word in enumerate(self.chunks):
            chunk: dict[str, Any] = {
                "id": "chatcmpl-fake1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": body.get("model"),
                "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
            }
            if include_usage:
                chunk["usage"] = None
            separators = (",", ":") if self.compact else None
            data = b"data: " + json.dumps(chunk, separators=separators).encode() + b"\n\n"
            if i and self.chunk_gap:
                await asyncio.sleep(self.chunk_gap)
            await write(data)
            self.sent_stream.append(data)
            if i == 0:
                self.first_sent.set()
                if what == "hold":
                    await self.release.wait()
            if cut_after is not None and i + 1 >= cut_after:
                assert request.transport is not None
                request.transport.close()  # broken mid-stream, no [DONE]
                return resp
        if include_usage:
            data = (
                b"data: "
                + json.dumps(
                    {
                        "id": "chatcmpl-fake1",
                        "object": "chat.completion.chunk",
                        "created": 1,
                        "model": body.get("model"),
                        "choices": [],
                        "usage": self.usage,
                    }
                ).encode()
                + b"\n\n"
            )
            await write(data)
            self.sent_stream.append(data)
        await write(b"data: [DONE]\n\n")
        self.sent_stream.append(b"data: [DONE]\n\n")
        if encoder is not None:
            await resp.write(encoder.end())
        await resp.write_eof()
        return resp
