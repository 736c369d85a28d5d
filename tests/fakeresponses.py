"""A fake OpenAI Responses server (a real aiohttp app): ``POST /v1/responses`` (JSON or SSE, the
event sequence of the API reference), ``GET``/``DELETE /v1/responses/{id}``. It remembers what it
made, so a ``previous_response_id`` it never made is answered 404 as OpenAI does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_IDS = itertools.count(1)


@dataclass
class FakeResponses:
    name: str = "resp-up"
    seen: list[dict[str, Any]] = field(default_factory=list)  # {method, path, headers, body}
    made: dict[str, dict[str, Any]] = field(default_factory=dict)
    text: str = "Hello there!"
    usage: dict[str, Any] = field(
        default_factory=lambda: {
            "input_tokens": 21,
            "input_tokens_details": {"cached_tokens": 5},
            "output_tokens": 7,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 28,
        }
    )
    cut_after: int | None = None  # stream: drop the connection after N events
    error_after: int | None = None  # stream: an ``error`` event after N events, then a clean close
    sent_stream: bytes = b""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/responses", self.create)
        app.router.add_get("/v1/responses/{id}", self.get)
        app.router.add_delete("/v1/responses/{id}", self.delete)
        return app

    def response(self, body: dict[str, Any], status: str = "completed") -> dict[str, Any]:
        rid = f"resp_{self.name}_{next(_IDS):04d}"
        return {
            "id": rid,
            "object": "response",
            "created_at": 1764500000,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": body["model"],
            "output": [
                {
                    "type": "message",
                    "id": f"msg_{rid}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": self.text, "annotations": []}],
                }
            ],
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "store": True,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": self.usage,
            "metadata": {},
        }

    async def create(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw)
        self.seen.append(
            {"method": "POST", "path": request.path, "headers": dict(request.headers), "raw": raw}
        )
        previous = body.get("previous_response_id")
        if previous and previous not in self.made:
            error = {"message": f"Previous response with id '{previous}' not found.",
                     "type": "invalid_request_error", "param": "previous_response_id",
                     "code": "previous_response_not_found"}  # fmt: skip
            return web.json_response({"error": error}, status=404)
        done = self.response(body)
        self.made[done["id"]] = done
        if not body.get("stream"):
            return web.json_response(done)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        events = self.events(done)
        sent = b""
        for i, (name, payload) in enumerate(events):
            if self.cut_after is not None and i == self.cut_after:
                self.sent_stream = sent
                assert request.transport is not None
                request.transport.close()
                return resp
            if self.error_after is not None and i == self.error_after:
                error = {"type": "error", "code": "server_error", "param": None,
                         "message": "The server had an error.", "sequence_number": i}  # fmt: skip
                chunk = f"event: error\ndata: {json.dumps(error)}\n\n".encode()
                self.sent_stream = sent + chunk
                await resp.write(chunk)
                await resp.write_eof()
                return resp
            chunk = f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()
            sent += chunk
            await resp.write(chunk)
            await asyncio.sleep(0)
        self.sent_stream = sent
        await resp.write_eof()
        return resp

    def events(self, done: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        start = {**done, "status": "in_progress", "output": [], "usage": None}
        item = done["output"][0]
        empty_item = {**item, "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        seq = itertools.count()
        out: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"type": "response.created", "response": start}),
            ("response.in_progress", {"type": "response.in_progress", "response": start}),
            ("response.output_item.added", {"type": "response.output_item.added",
                                            "output_index": 0, "item": empty_item}),
            ("response.content_part.added", {"type": "response.content_part.added",
                                             "item_id": item["id"], "output_index": 0,
                                             "content_index": 0, "part": part}),
        ]  # fmt: skip
        for word in self.text.split(" "):
            delta = word if not out[-1][0].endswith("delta") else " " + word
            out.append(("response.output_text.delta", {
                "type": "response.output_text.delta", "item_id": item["id"],
                "output_index": 0, "content_index": 0, "delta": delta, "logprobs": []}))  # fmt: skip
        out += [
            ("response.output_text.done", {"type": "response.output_text.done",
                                           "item_id": item["id"], "output_index": 0,
                                           "content_index": 0, "text": self.text, "logprobs": []}),
            ("response.content_part.done", {"type": "response.content_part.done",
                                            "item_id": item["id"], "output_index": 0,
                                            "content_index": 0, "part": item["content"][0]}),
            ("response.output_item.done", {"type": "response.output_item.done",
                                           "output_index": 0, "item": item}),
            ("response.completed", {"type": "response.completed", "response": done}),
        ]  # fmt: skip
        for _, payload in out:
            payload["sequence_number"] = next(seq)
        return out

    async def get(self, request: web.Request) -> web.Response:
        self.seen.append({"method": "GET", "path": request.path, "headers": dict(request.headers)})
        found = self.made.get(request.match_info["id"])
        if found is None:
            return web.json_response({"error": {"message": "not found"}}, status=404)
        return web.json_response(found)

    async def delete(self, request: web.Request) -> web.Response:
        self.seen.append(
            {"method": "DELETE", "path": request.path, "headers": dict(request.headers)}
        )
        rid = request.match_info["id"]
        if self.made.pop(rid, None) is None:
            return web.json_response({"error": {"message": "not found"}}, status=404)
        return web.json_response({"id": rid, "object": "response", "deleted": True})
