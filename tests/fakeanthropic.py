"""A fake Anthropic Messages API (POST /v1/messages): a real aiohttp app, built from the public
API reference (https://docs.anthropic.com/en/api/messages, .../messages-streaming, .../errors).

It checks requests the way Anthropic does where the gateway's translation could go wrong, and
answers 400 ``invalid_request_error`` like Anthropic: no key (401) or
``anthropic-version``, fields the Messages API does not have ("Extra inputs are not permitted"),
a missing ``max_tokens``, ``system`` inside ``messages``, empty text blocks, whitespace-only stop
sequences, and ``tool_use`` blocks without their ``tool_result`` blocks first in the next user
message.

Behaviour per request from ``script`` (consumed in order), else ``default``:
``text`` (answer ``text_parts``), ``tools`` (a text block, then a ``tool_use`` block per entry of
``tools``; a tool without input streams ``partial_json: ""`` as Anthropic does), ``fail-529`` /
``fail-429`` / ``fail-500`` (error body), ``error-after-N`` (stream: an ``error`` event after N
events), ``cut-after-N`` (stream: socket closed after N events), ``stop-after-N`` (stream: closed
cleanly after N events, no end event), ``error-first`` (stream: the first event is an ``error``
event). ``coding``: answers and streams compressed (``fakeupstream.Encoder``) although the gateway
asks for ``identity``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from fakeupstream import Encoder

_FIELDS = {
    "model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "top_p",
    "top_k", "metadata", "stream", "tools", "tool_choice", "thinking", "service_tier",
    "output_config",
}  # fmt: skip
_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class AnthropicSeen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeAnthropic:
    api_key: str = "sk-ant-test"
    seen: list[AnthropicSeen] = field(default_factory=list)
    script: list[str] = field(default_factory=list)
    default: str = "text"
    text_parts: list[str] = field(default_factory=lambda: ["Hello", " from", " Claude", "."])
    tools: list[tuple[str, str, dict[str, Any]]] = field(
        default_factory=lambda: [("toolu_01A", "get_weather", {"city": "Paris"})]
    )
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 21, "output_tokens": 9})
    stop_reason: str | None = None  # default: end_turn, or tool_use for "tools"
    rejected: list[str] = field(default_factory=list)  # the 400 messages it answered
    coding: str | None = None  # Content-Encoding of answers (``Encoder``); None: identity

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        self.seen.append(AnthropicSeen(request.path, dict(request.headers), body))
        # The API takes the key as x-api-key (what the gateway sends) or as a Bearer token (what
        # the anthropic SDK 2.x sends).
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.api_key not in (request.headers.get("x-api-key"), bearer):
            return _error(401, "invalid x-api-key")
        problem = self.check(request, body)
        if problem:
            self.rejected.append(problem)
            return _error(400, problem)
        what = self.script.pop(0) if self.script else self.default
        if what.startswith("plain-"):  # a proxy in front of the API answering in plain text
            return web.Response(status=int(what[6:]), text="upstream proxy error")
        if what.startswith("fail-"):
            status = int(what[5:])
            headers = {"retry-after": "1"} if status == 429 else {}
            return _error(status, f"fake anthropic says {status}", headers)
        blocks = self.blocks(what)
        if body.get("stream"):
            return await self.stream(request, body, blocks, what)
        headers = {"request-id": "req_fake"}
        if self.coding is None:
            return web.json_response(self.message(body, blocks), headers=headers)
        encoder = Encoder(self.coding)
        headers["Content-Encoding"] = encoder.header
        raw = encoder.whole(json.dumps(self.message(body, blocks)).encode())
        return web.Response(body=raw, headers=headers, content_type="application/json")

    # -- validation (what Anthropic refuses)
    def check(self, request: web.Request, body: dict[str, Any]) -> str | None:
        if not request.headers.get("anthropic-version"):
            return "anthropic-version: header is required"
        for key in body:
            if key not in _FIELDS:
                return f"{key}: Extra inputs are not permitted"
        if not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
        for s in body.get("stop_sequences") or []:
            if not s.strip():
                return "stop_sequences: each stop sequence must contain non-whitespace"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages: Field required"
        pending: set[str] = set()
        for i, msg in enumerate(messages):
            if msg.get("role") not in ("user", "assistant"):
                return f"messages.{i}.role: Input should be 'user' or 'assistant'"
            content = msg["content"]
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            if pending:
                ids = []
                for b in blocks:
                    if b["type"] != "tool_result":
                        break
                    ids.append(b["tool_use_id"])
                if msg["role"] != "user" or set(ids) != pending:
                    return (
                        f"messages.{i}: tool_use ids were found without tool_result blocks "
                        f"immediately after: {sorted(pending - set(ids))}"
                    )
                pending = set()
            for b in blocks:
                if b["type"] == "text" and not b["text"]:
                    return f"messages.{i}: text content blocks must be non-empty"
                if b["type"] == "tool_use":
                    pending.add(b["id"])
        return None

    # -- answers
    def blocks(self, what: str) -> list[dict[str, Any]]:
        if what == "tools":
            out: list[dict[str, Any]] = [{"type": "text", "text": "Let me check."}]
            for ident, name, args in self.tools:
                out.append({"type": "tool_use", "id": ident, "name": name, "input": args})
            return out
        return [{"type": "text", "text": "".join(self.text_parts)}]

    def _stop(self, blocks: list[dict[str, Any]]) -> str:
        if self.stop_reason:
            return self.stop_reason
        return "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"

    def message(self, body: dict[str, Any], blocks: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": "msg_fake01",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": blocks,
            "stop_reason": self._stop(blocks),
            "stop_sequence": None,
            "usage": dict(self.usage),
        }

    def events(self, body: dict[str, Any], blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        start_usage = {**self.usage, "output_tokens": 1}
        message = {**self.message(body, blocks), "content": [], "stop_reason": None,
                   "usage": start_usage}  # fmt: skip
        events: list[dict[str, Any]] = [{"type": "message_start", "message": message}]
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                events.append({"type": "content_block_start", "index": index,
                               "content_block": {"type": "text", "text": ""}})  # fmt: skip
                if index == 0:
                    events.append({"type": "ping"})
                parts = self.text_parts if len(blocks) == 1 else [block["text"]]
                for part in parts:
                    events.append({"type": "content_block_delta", "index": index,
                                   "delta": {"type": "text_delta", "text": part}})  # fmt: skip
            else:
                start = {**block, "input": {}}
                events.append({"type": "content_block_start", "index": index,
                               "content_block": start})  # fmt: skip
                text = json.dumps(block["input"]) if block["input"] else ""
                pieces = [text[: len(text) // 2], text[len(text) // 2 :]] if text else [""]
                for piece in pieces:
                    events.append({"type": "content_block_delta", "index": index,
                                   "delta": {"type": "input_json_delta",
                                             "partial_json": piece}})  # fmt: skip
            events.append({"type": "content_block_stop", "index": index})
        events.append({"type": "message_delta",
                       "delta": {"stop_reason": self._stop(blocks), "stop_sequence": None},
                       "usage": {"output_tokens": self.usage["output_tokens"]}})  # fmt: skip
        events.append({"type": "message_stop"})
        return events

    async def stream(
        self, request: web.Request, body: dict[str, Any], blocks: list[dict[str, Any]], what: str
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        encoder = Encoder(self.coding) if self.coding is not None else None
        if encoder is not None:
            resp.headers["Content-Encoding"] = encoder.header
        await resp.prepare(request)
        events = self.events(body, blocks)
        if what == "error-first":
            events = []
        for i, event in enumerate(events):
            if what.startswith("cut-after-") and i == int(what[10:]):
                assert request.transport is not None
                request.transport.close()
                return resp
            if what.startswith("error-after-") and i == int(what[12:]):
                break
            if what.startswith("stop-after-") and i == int(what[11:]):
                if encoder is not None:
                    await resp.write(encoder.end())
                await resp.write_eof()
                return resp
            data = sse(event)
            await resp.write(encoder.chunk(data) if encoder is not None else data)
            await asyncio.sleep(0)
        else:
            if what != "error-first":
                if encoder is not None:
                    await resp.write(encoder.end())
                await resp.write_eof()
                return resp
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        await resp.write(sse(error))
        await resp.write_eof()
        return resp


def sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"type": "error", "error": {"type": _STATUS_TYPES.get(status, "api_error"),
                                       "message": message}}  # fmt: skip
    return web.json_response(body, status=status, headers=headers)
