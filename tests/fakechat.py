"""A fake OpenAI chat server (a real aiohttp app) that calls a tool: when the request offers
tools and its last message is not a tool result, the answer is a text plus a ``get_weather``
call; otherwise a text. JSON or SSE (the chunk sequence OpenAI sends: role, content deltas,
tool-call deltas with ``index``/``id``/``name`` then argument pieces, the finish chunk, the usage
chunk when ``stream_options.include_usage``, ``[DONE]``). It also serves ``/v1/responses``
through a ``FakeResponses`` when given one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from fakeresponses import FakeResponses

ARGS = '{"city": "Paris"}'


@dataclass
class FakeChat:
    seen: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    usage: dict[str, Any] = field(
        default_factory=lambda: {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50}
    )
    responses: FakeResponses | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        if self.responses is not None:
            app.router.add_post("/v1/responses", self.responses.create)
        return app

    def message(self, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        if body.get("tools") and body["messages"][-1]["role"] != "tool":
            call = {"id": "call_w1", "type": "function",
                    "function": {"name": "get_weather", "arguments": ARGS}}  # fmt: skip
            return {"role": "assistant", "content": "Let me check.", "tool_calls": [call]}, (
                "tool_calls"
            )
        return {"role": "assistant", "content": "It is 18C in Paris."}, "stop"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        self.seen.append(body)
        self.headers.append(dict(request.headers))
        self.queries.append(request.query_string)
        message, finish = self.message(body)
        base = {"id": "chatcmpl-f1", "created": 1764500000, "model": body["model"]}
        if not body.get("stream"):
            choice = {"index": 0, "message": message, "finish_reason": finish}
            return web.json_response(
                {**base, "object": "chat.completion", "choices": [choice], "usage": self.usage}
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for chunk in self.chunks(message, finish, body):
            await resp.write(b"data: " + json.dumps({**base, **chunk}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def chunks(
        self, message: dict[str, Any], finish: str, body: dict[str, Any]
    ) -> list[dict[str, Any]]:
        def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            return {"object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}  # fmt: skip

        out = [chunk({"role": "assistant", "content": ""})]
        words = message["content"].split(" ")
        out += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
        for call in message.get("tool_calls", []):
            first = {"index": 0, "id": call["id"], "type": "function",
                     "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
            out.append(chunk({"tool_calls": [first]}))
            for piece in (ARGS[:7], ARGS[7:]):
                out.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        out.append(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            out.append({"object": "chat.completion.chunk", "choices": [], "usage": self.usage})
        return out
