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
    ``finish`` once ``[DONE]`` or the end is seen). Blocks are numbered in the order they open.
    A tool call's block stays open until text follows or the stream ends, so that the deltas
    of parallel calls may interleave (each delta names its block's index, which is how the
    SDKs assemble them); a call is told by its ``index``, or, from providers that send none
    (Gemini), by its place in the chunk and its ``id``."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self.finished = False
        self._index = -1  # the last block opened, -1 when none
        self._text_open = False
        self._tools: dict[object, tuple[int, object]] = {}  # call key -> (block index, its id)
        self._open_tools: list[int] = []
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
                if not self._text_open:
                    out += self._close_blocks()
                    out.append(self._start_block({"type": "text", "text": ""}))
                    self._text_open = True
                out.append(self._delta(self._index, {"type": "text_delta", "text": text}))
            for position, call in enumerate(delta.get("tool_calls") or []):
                if isinstance(call, dict):
                    out += self._tool_delta(call, position)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return out

    def finish(self) -> list[bytes]:
        if self.finished:
            return []
        self.finished = True
        out = [] if self.started else [self._start({})]
        out += self._close_blocks()
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

    def _tool_delta(self, call: Json, position: int) -> list[bytes]:
        out: list[bytes] = []
        key = call.get("index")
        key = ("i", key) if isinstance(key, int) else ("p", position)
        ident = call.get("id")
        function = call.get("function") or {}
        known = self._tools.get(key)
        if known is not None and ident and known[1] and ident != known[1]:
            known = None  # another call at the same place (a provider that sends no index)
        if known is None:
            if self._text_open:
                out += self._close_blocks()
            block: Json = {
                "type": "tool_use",
                "id": ident or f"toolu_{self._index + 1}",
                "name": function.get("name") or "",
                "input": {},
            }
            out.append(self._start_block(block))
            self._tools[key] = known = (self._index, ident)
            self._open_tools.append(self._index)
        arguments = function.get("arguments")
        if arguments:
            out.append(self._delta(known[0], {"type": "input_json_delta", "partial_json": arguments}))
        return out

    def _start_block(self, block: Json) -> bytes:
        self._index += 1
        payload = {"type": "content_block_start", "index": self._index, "content_block": block}
        return sse("content_block_start", payload)

    def _close_blocks(self) -> list[bytes]:
        """Close the open text block, or the open tool blocks (in the order they opened)."""
        if self._text_open:
            self._text_open = False
            closing = [self._index]
        else:
            closing, self._open_tools, self._tools = self._open_tools, [], {}
        return [sse("content_block_stop", {"type": "content_block_stop", "index": i})
                for i in closing]

    def _delta(self, index: int, delta: Json) -> bytes:
        payload = {"type": "content_block_delta", "index": index, "delta": delta}
        return sse("content_block_delta", payload)
