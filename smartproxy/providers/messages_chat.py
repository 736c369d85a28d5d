"""Anthropic Messages (the ``/v1/messages`` front) over OpenAI chat channels: pure translation.

The inverse of the ``anthropic`` provider's mappings. Request: ``system`` -> a system message;
text and image blocks -> content parts (base64 sources as ``data:`` URLs); assistant ``tool_use``
blocks -> ``tool_calls``; ``tool_result`` blocks -> ``role: tool`` messages (placed before the
rest of their user turn, as OpenAI wants them right after the assistant's calls); ``tools`` ->
functions; ``tool_choice`` any -> required, tool -> a named function;
``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``; ``stop_sequences`` -> ``stop``;
``metadata.user_id`` -> ``user``; streams ask for usage (``stream_options.include_usage``).
Left out on purpose: ``thinking`` blocks and settings, ``top_k``, ``cache_control`` (hints a chat
server has no use for). What has no chat equivalent (server tools, ``mcp_servers``,
``container``, documents) is a ``TranslationError`` naming the field (a 400).

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
from ..config import ChannelConfig
from ..errors import Untranslatable, anthropic_error
from ..upstream.errors import UpstreamConnectError
from ..upstream.sse import StreamTally, event_data

Json = dict[str, Any]
CHAT_PATH = "/chat/completions"

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_IGNORED = frozenset({"thinking", "top_k", "service_tier", "anthropic_version", "betas"})
_UNTRANSLATABLE = frozenset({"mcp_servers", "container", "context_management"})


class TranslationError(ValueError):
    """A request field that has no OpenAI chat equivalent; ``param`` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


# ----------------------------------------------------------------------------- request
def messages_to_chat(body: Json) -> Json:
    """An Anthropic Messages request body -> an OpenAI chat completions request body."""
    for key in body:
        if key in _UNTRANSLATABLE:
            raise TranslationError(f"'{key}' cannot be sent to an OpenAI-compatible channel", key)
    out: Json = {"model": body.get("model")}
    messages: list[Json] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _system_text(system)})
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list):
        raise TranslationError("'messages' must be a list", "messages")
    for i, message in enumerate(raw_messages):
        messages.extend(_message(message, f"messages[{i}]"))
    out["messages"] = messages
    if body.get("max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id"):
        out["user"] = str(metadata["user_id"])
    if body.get("tools"):
        out["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(body["tools"])]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        _tool_choice(choice, out)
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n\n".join(
            b.get("text", "") for b in system if isinstance(b, dict) and b.get("type") == "text"
        )
    raise TranslationError("'system' must be a string or a list of text blocks", "system")


def _message(message: Any, where: str) -> list[Json]:
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise TranslationError(f"{where} must have role 'user' or 'assistant'", where)
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise TranslationError(f"{where}.content must be a string or a list of blocks", where)
    if role == "assistant":
        return [_assistant(content, where)]
    tool_messages: list[Json] = []
    parts: list[Json] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            text, images = _tool_result(block, at)
            tool_messages.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}
            )
            parts.extend(images)
        elif kind in ("text", "image"):
            part = _part(block, at)
            if part is not None:
                parts.append(part)
        else:
            raise TranslationError(f"{at}: block type {kind!r} cannot be translated", at)
    out = tool_messages
    if parts:
        if all(p["type"] == "text" for p in parts) and len(parts) == 1:
            out.append({"role": "user", "content": parts[0]["text"]})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _part(block: Json, at: str) -> Json | None:
    if block["type"] == "text":
        text = block.get("text", "")
        return {"type": "text", "text": text} if text else None
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = str(source.get("url", ""))
    else:
        raise TranslationError(f"{at}: image source {source.get('type')!r} not supported", at)
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: Json, at: str) -> tuple[str, list[Json]]:
    content = block.get("content", "")
    texts: list[str] = []
    images: list[Json] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, item in enumerate(content):
            part = _part(item, f"{at}.content[{k}]") if isinstance(item, dict) else None
            if part is None:
                continue
            if part["type"] == "text":
                texts.append(part["text"])
            else:  # a tool message carries text only: the image follows in the user turn
                images.append(part)
    text = "\n".join(texts)
    if block.get("is_error"):
        text = f"Error: {text}" if text else "Error"
    return text, images


def _assistant(content: list[Any], where: str) -> Json:
    texts: list[str] = []
    calls: list[Json] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's earlier reasoning: a chat server cannot take it back
        else:
            at = f"{where}.content[{j}]"
            raise TranslationError(f"{at}: block type {kind!r} cannot be translated", at)
    out: Json = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        out["tool_calls"] = calls
    return out


def _tool(tool: Any, where: str) -> Json:
    if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise TranslationError(f"{where}: server tool {kind!r} has no chat equivalent", where)
    function: Json = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Json, out: Json) -> None:
    kind = choice.get("type")
    if kind == "any":
        out["tool_choice"] = "required"
    elif kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif kind in ("auto", "none"):
        out["tool_choice"] = kind
    if choice.get("disable_parallel_tool_use") and out.get("tools"):
        out["parallel_tool_calls"] = False


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
    return b"event: " + event.encode() + b"\ndata: " + json.dumps(payload).encode() + b"\n\n"


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


# ----------------------------------------------------------------------------- the adapter
class MessagesToChat:
    """The ``/v1/messages`` front (the client) on an OpenAI-compatible channel (``base.Adapter``)."""

    def request(
        self, body: dict[str, Any], *, model: str, channel: ChannelConfig
    ) -> tuple[str, bytes]:
        try:
            out = messages_to_chat(body)
        except TranslationError as exc:
            raise Untranslatable(str(exc), param=exc.param) from None
        out["model"] = model
        return CHAT_PATH, orjson.dumps(out)

    def answer(self, body: bytes) -> tuple[bytes, dict[str, Any] | None]:
        try:
            answer = orjson.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise UpstreamConnectError("upstream answer is not a chat completion")
        usage = answer.get("usage")
        message = chat_to_message(answer, str(answer.get("model") or ""))
        return orjson.dumps(message), usage if isinstance(usage, dict) else None

    def error(self, status: int, body: bytes) -> bytes:
        return chat_error_to_anthropic(status, body)

    def stream(self, *, include_usage: bool) -> ChatStreamToMessages:
        return ChatStreamToMessages()


class ChatStreamToMessages:
    """One attempt's chat SSE events -> Anthropic SSE events (``base.StreamAdapter``)."""

    def __init__(self) -> None:
        self.tally = StreamTally()
        self._events: ChatToMessagesStream | None = None

    def feed(self, event: bytes) -> list[bytes]:
        data = event_data(event)
        if not data:
            return []
        if data.strip() == b"[DONE]":
            self.tally.done = True
            return self._stream({}).finish()
        try:
            chunk = orjson.loads(data)
        except ValueError:
            raise UpstreamConnectError("upstream sent an unreadable stream event") from None
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk and "choices" not in chunk:
            error = chunk["error"]
            text = error.get("message") if isinstance(error, dict) else error
            raise UpstreamConnectError(f"upstream stream error: {text}")
        if isinstance(chunk.get("usage"), dict):
            self.tally.usage = chunk["usage"]
        if chunk.get("choices"):
            self.tally.content_events += 1
        return self._stream(chunk).feed(chunk)

    def _stream(self, chunk: Json) -> ChatToMessagesStream:
        if self._events is None:
            self._events = ChatToMessagesStream(str(chunk.get("model") or ""))
        return self._events
