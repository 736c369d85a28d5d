"""The ``/v1/messages`` front on OpenAI chat channels: answers, streams and errors back (pure).

Answer: ``chat.completion`` -> ``message`` (text, ``tool_use`` with parsed input, stop reason
stop -> end_turn, length -> max_tokens, tool_calls -> tool_use, content_filter -> refusal; usage:
``input_tokens`` excludes the cached part, which goes to ``cache_read_input_tokens``).
Stream: ``ChatToMessagesStream`` turns chat chunks into ``message_start``,
``content_block_start/delta/stop`` (text, ``tool_use`` with ``input_json_delta``),
``message_delta`` (stop reason, usage) and ``message_stop``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from .. import fastjson
from ..errors import anthropic_error

Json = dict[str, Any]

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# ----------------------------------------------------------------------------- answer
def usage_to_anthropic(usage: Json | None) -> Json:
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    details = usage.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    return {
        "input_tokens": max(0, prompt - cached),
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def message_id(chat_id: Any) -> str:
    return f"msg_{chat_id}" if chat_id else "msg_smartproxy"


def chat_to_message(answer: Json, model: str) -> Json:
    """A ``chat.completion`` -> an Anthropic ``message`` (named ``model``, the client's)."""
    choices = answer.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[Json] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": _arguments(function.get("arguments")),
            }
        )
    return {
        "id": message_id(answer.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": usage_to_anthropic(answer.get("usage")),
    }


def _arguments(arguments: Any) -> Any:
    if not arguments:
        return {}
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {"_raw_arguments": arguments}  # invalid JSON from the model: keep it visible
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def chat_error_to_anthropic(status: int, body: bytes) -> bytes:
    """An upstream error answer (OpenAI-shaped or not) -> Anthropic-shaped, message kept."""
    message = body.decode("utf-8", "replace")[:2000] or f"upstream answered HTTP {status}"
    try:
        obj = fastjson.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        error = obj.get("error")
        if isinstance(error, dict) and error.get("message"):
            message = str(error["message"])
        elif isinstance(error, str):
            message = error
    return json.dumps(anthropic_error(status, message)).encode()


# ----------------------------------------------------------------------------- stream
def sse(event: str, payload: Json) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class ChatToMessagesStream:
    """OpenAI chat chunks in, Anthropic stream events out (``feed`` each chunk's JSON, then
    ``finish`` once ``[DONE]`` or the end is seen). Blocks are numbered in the order they open;
    a new text or tool call closes the one before."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self.finished = False
        self._index = -1  # the open block's index, -1 when none is open
        self._open: str | None = None  # "text" | "tool:<openai index>"
        self._finish_reason: str | None = None
        self._usage: Json | None = None

    def feed(self, chunk: Json) -> list[bytes]:
        out: list[bytes] = []
        if not self.started:
            out.append(self._start(chunk))
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self._open != "text":
                    out += self._open_block("text", {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": text}))
            for call in delta.get("tool_calls") or []:
                out += self._tool_delta(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return out

    def finish(self) -> list[bytes]:
        if self.finished:
            return []
        self.finished = True
        out = [] if self.started else [self._start({})]
        out += self._close_block()
        usage = usage_to_anthropic(self._usage)
        stop = STOP_REASONS.get(self._finish_reason or "stop", "end_turn")
        out.append(
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": usage,
                },
            )
        )
        out.append(sse("message_stop", {"type": "message_stop"}))
        return out

    def _start(self, chunk: Json) -> bytes:
        self.started = True
        message: Json = {
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return sse("message_start", {"type": "message_start", "message": message})

    def _tool_delta(self, call: Json) -> list[bytes]:
        out: list[bytes] = []
        key = f"tool:{call.get('index', 0)}"
        function = call.get("function") or {}
        if self._open != key:
            block: Json = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{self._index + 1}",
                "name": function.get("name") or "",
                "input": {},
            }
            out += self._open_block(key, block)
        arguments = function.get("arguments")
        if arguments:
            out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return out

    def _open_block(self, kind: str, block: Json) -> list[bytes]:
        out = self._close_block()
        self._index += 1
        self._open = kind
        payload = {"type": "content_block_start", "index": self._index, "content_block": block}
        out.append(sse("content_block_start", payload))
        return out

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [sse("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _delta(self, delta: Json) -> bytes:
        payload = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return sse("content_block_delta", payload)
