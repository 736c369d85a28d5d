"""The ``mock`` channel type: answers in-process like an OpenAI server, free, for first runs and demos.

It goes through the same relay, accounting and metrics as a real channel, so a new user's first
``curl`` exercises the whole gateway. Answers are deterministic; usage is counted like a tokenizer
would roughly do (characters / 4 for the prompt, one token per word of the answer).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from multidict import CIMultiDict

from ..config import ChannelConfig
from .base import OutgoingRequest, Timeouts

_ANSWER = "Hello from SmartProxy's local mock channel. Configure a real channel to talk to a model.".split()


class MockReply:
    __slots__ = ("status", "headers", "_chunks")

    def __init__(self, status: int, content_type: str, chunks: list[bytes]) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = CIMultiDict({"Content-Type": content_type})
        self._chunks = chunks

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk

    async def read(self) -> bytes:
        return b"".join(self._chunks)

    def close(self) -> None:
        self._chunks = []


class MockProvider:
    name = "mock"

    async def send(
        self, channel: ChannelConfig, request: OutgoingRequest, timeouts: Timeouts
    ) -> MockReply:
        if request.method != "POST" or request.path.startswith("/responses/"):
            if request.method == "GET" and request.path == "/models":
                return _json(200, models_body(channel))
            # Stored responses (GET/DELETE /responses/{id}, ...): a mock keeps none.
            return _json(404, _error(f"the mock channel stores nothing: {request.method} "
                                     f"{request.path}", "invalid_request_error"))
        try:
            body: dict[str, Any] = json.loads(request.body or b"{}")
        except ValueError:
            return _json(400, _error("could not parse the JSON body", "invalid_request_error"))
        model = str(body.get("model") or "mock")
        if request.path == "/embeddings":
            return _json(200, _embeddings(body, model))
        if request.path == "/responses":
            return _responses(body, model)
        prompt_tokens = max(
            1, len(json.dumps(body.get("messages") or body.get("prompt") or "")) // 4
        )
        words = _ANSWER[: max(1, min(len(_ANSWER), int(body.get("max_tokens") or len(_ANSWER))))]
        chat = request.path == "/chat/completions"
        if not body.get("stream"):
            return _json(200, _completion(chat, model, words, prompt_tokens))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return MockReply(
            200, "text/event-stream", _stream(chat, model, words, prompt_tokens, include_usage)
        )


def models_body(channel: ChannelConfig) -> dict[str, Any]:
    names = list(channel.models) or ["mock-1"]
    return {"object": "list", "data": [_model(n) for n in names]}


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "smartproxy-mock"}


def _json(status: int, obj: dict[str, Any]) -> MockReply:
    return MockReply(status, "application/json", [json.dumps(obj).encode()])


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": None, "param": None}}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(chat: bool, model: str, words: list[str], prompt: int) -> dict[str, Any]:
    text = " ".join(words)
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text, "refusal": None}
    else:
        choice["text"] = text
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-mock{uuid.uuid4().hex[:20]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _usage(prompt, len(words)),
    }


def _stream(
    chat: bool, model: str, words: list[str], prompt: int, include_usage: bool
) -> list[bytes]:
    ident = f"{'chatcmpl' if chat else 'cmpl'}-mock{uuid.uuid4().hex[:20]}"
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"
    events = []
    for i, word in enumerate(words):
        text = word if i == 0 else " " + word
        last = i == len(words) - 1
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop" if last else None}
        if chat:
            choice["delta"] = {"content": text} if i else {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        chunk: dict[str, Any] = {
            "id": ident,
            "object": obj,
            "created": created,
            "model": model,
            "choices": [choice],
        }
        if include_usage:
            chunk["usage"] = None
        events.append(chunk)
    if include_usage:
        events.append(
            {
                "id": ident,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(prompt, len(words)),
            }
        )
    out = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
    out.append(b"data: [DONE]\n\n")
    return out


def _responses(body: dict[str, Any], model: str) -> MockReply:
    """``POST /responses`` (the OpenAI Responses API Codex speaks): one output message, streamed
    as the API streams it (``response.created`` ... ``response.completed`` with usage)."""
    prompt = max(1, len(json.dumps([body.get("instructions"), body.get("input")])) // 4)
    limit = body.get("max_output_tokens")
    words = _ANSWER[: max(1, min(len(_ANSWER), int(limit or len(_ANSWER))))]
    text = " ".join(words)
    rid, mid = f"resp_mock{uuid.uuid4().hex}", f"msg_mock{uuid.uuid4().hex}"
    part = {"type": "output_text", "text": text, "annotations": []}
    item = {"type": "message", "id": mid, "status": "completed", "role": "assistant",
            "content": [part]}
    usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": len(words), "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": prompt + len(words)}
    done = {
        "id": rid, "object": "response", "created_at": int(time.time()), "status": "completed",
        "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
        "max_output_tokens": limit, "model": model, "output": [item],
        "parallel_tool_calls": True, "previous_response_id": body.get("previous_response_id"),
        "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_p": 1.0, "usage": usage,
    }
    if not body.get("stream"):
        return _json(200, done)
    started = {**done, "status": "in_progress", "output": [], "usage": None}
    at = {"item_id": mid, "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**item, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **at, "part": {**part, "text": ""}},
        *({"type": "response.output_text.delta", **at, "delta": w if i == 0 else " " + w}
          for i, w in enumerate(words)),
        {"type": "response.output_text.done", **at, "text": text},
        {"type": "response.content_part.done", **at, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": done},
    ]
    return MockReply(200, "text/event-stream", [
        b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(
            {**e, "sequence_number": n}).encode())
        for n, e in enumerate(events)
    ])


def _embeddings(body: dict[str, Any], model: str) -> dict[str, Any]:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs or ""]
    dims = int(body.get("dimensions") or 8)
    data = []
    for i, item in enumerate(items):
        seed = sum(str(item).encode()) or 1
        data.append(
            {
                "object": "embedding",
                "index": i,
                "embedding": [((seed * (k + 1)) % 1000) / 1000 for k in range(dims)],
            }
        )
    tokens = max(1, sum(len(str(x)) for x in items) // 4)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
