"""Anthropic Messages answers -> OpenAI chat answers: whole messages, stream events, error bodies.

Pure: dicts and bytes in, dicts and bytes out (``created`` is passed in). The stream translator
keeps the little state a stream needs (the message id, which content block is which tool call)
and fills the relay's ``StreamTally``, so usage accounting sees the upstream's own numbers.

Stream mapping (Anthropic event -> OpenAI ``chat.completion.chunk``):
  message_start          first chunk, ``delta: {role: assistant, content: ""}``
  content_block_start    a tool_use block -> ``tool_calls[{index, id, type, function.name}]``;
                         ``index`` counts tool calls (0, 1, ...), not Anthropic's content blocks
  text_delta             ``delta.content``
  input_json_delta       ``tool_calls[{index, function.arguments}]``; an empty ``partial_json``
                         is skipped, and a tool call that got no arguments at all ends with
                         ``"{}"`` (so clients can always ``json.loads`` the arguments)
  message_delta          ``finish_reason`` (end_turn/stop_sequence -> stop, tool_use ->
                         tool_calls, max_tokens -> length)
  message_stop           the usage chunk (``choices: []``) when the client asked, then [DONE]
  ping                   dropped
  error                  raises ``UpstreamStreamError``: before any byte reached the client the
                         dispatcher fails over, after it the relay ends with its SSE error event
"""

from __future__ import annotations

from typing import Any

import orjson

from ..upstream.errors import UpstreamConnectError
from ..upstream.sse import StreamTally, event_data, stream_error_text

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}
_DONE = b"data: [DONE]\n\n"


class UpstreamStreamError(UpstreamConnectError):
    """The upstream reported an error inside its stream (an Anthropic ``error`` event)."""


def openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """Anthropic usage -> OpenAI usage. Anthropic's ``input_tokens`` leaves out cached input;
    OpenAI's ``prompt_tokens`` includes it, with the cached part in ``prompt_tokens_details``."""
    created = int(usage.get("cache_creation_input_tokens") or 0)
    read = int(usage.get("cache_read_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + created + read
    completion = int(usage.get("output_tokens") or 0)
    details: dict[str, int] = {"cached_tokens": read}
    if created:
        details["cache_creation_tokens"] = created
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": details,
    }


def message_to_chat(msg: dict[str, Any], created: int) -> dict[str, Any]:
    """A Messages API answer as a ``chat.completion``."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in msg.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    out: dict[str, Any] = {
        "id": msg.get("id"),
        "object": "chat.completion",
        "created": created,
        "model": msg.get("model"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": FINISH_REASONS.get(msg.get("stop_reason") or "", None),
                "logprobs": None,
            }
        ],
    }
    if isinstance(msg.get("usage"), dict):
        out["usage"] = openai_usage(msg["usage"])
    return out


def error_to_openai(status: int, body: bytes) -> bytes:
    """An upstream error body, OpenAI-shaped, Anthropic's message and error type kept."""
    try:
        obj = orjson.loads(body)
    except ValueError:
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and "message" in err:
        kind = err.get("type") or "upstream_error"
        if "code" in err and "param" in err:  # already OpenAI-shaped (a proxy in between)
            return body
        out = {"message": err.get("message"), "type": kind, "code": kind, "param": None}
    else:
        text = body.decode("utf-8", "replace").strip()[:2000]
        out = {
            "message": text or f"upstream answered HTTP {status}",
            "type": "upstream_error",
            "code": None,
            "param": None,
        }
    return orjson.dumps({"error": out})


class MessagesStreamToChat:
    """One stream's translator: ``feed`` an Anthropic SSE event, get OpenAI SSE events back."""

    __slots__ = ("tally", "_include_usage", "_created", "_id", "_model", "_tools", "_args", "_raw",
                 "_text_head", "_text_tail")  # fmt: skip

    def __init__(self, *, include_usage: bool, created: int) -> None:
        self.tally = StreamTally()
        self._include_usage = include_usage
        self._created = created
        self._id = ""
        self._model = ""
        self._tools: dict[int, int] = {}  # Anthropic content block index -> tool call index
        self._args: dict[int, int] = {}  # tool call index -> argument characters sent
        self._raw: dict[str, Any] = {}  # Anthropic usage so far (message_delta updates it)
        # A text chunk's bytes around its content, built once (most events of a stream are text).
        self._text_head = b""
        self._text_tail = b""

    def feed(self, event: bytes) -> list[bytes]:
        data = event_data(event)
        if not data:
            return []
        try:
            obj = orjson.loads(data)
        except ValueError:
            raise UpstreamConnectError("upstream sent an event that is not JSON") from None
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "content_block_delta":
            return self._delta(obj)
        if kind == "message_start":
            return self._start(obj.get("message") or {})
        if kind == "content_block_start":
            return self._block_start(obj)
        if kind == "content_block_stop":
            call = self._tools.get(obj.get("index", -1))
            if call is not None and not self._args.get(call):
                return [
                    self._chunk({"tool_calls": [{"index": call, "function": {"arguments": "{}"}}]})
                ]
            return []
        if kind == "message_delta":
            return self._message_delta(obj)
        if kind == "message_stop":
            self.tally.done = True
            if self._include_usage and self.tally.usage is not None:
                return [self._usage_chunk(), _DONE]
            return [_DONE]
        if kind == "error":
            raise UpstreamStreamError(stream_error_text(obj))
        return []  # ping, and event types this translation has no use for

    # -- events
    def _start(self, msg: dict[str, Any]) -> list[bytes]:
        self._id = str(msg.get("id") or "")
        self._model = str(msg.get("model") or "")
        self._update_usage(msg.get("usage"))
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, obj: dict[str, Any]) -> list[bytes]:
        block = obj.get("content_block") or {}
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            self._counted()
            return [self._chunk({"content": block["text"]})]
        if kind != "tool_use":
            return []
        call = self._tools[obj.get("index", -1)] = len(self._tools)
        self._counted()
        # Anthropic starts with ``input: {}`` and streams the arguments; a proxy in between may
        # send the whole input here instead.
        args = orjson.dumps(block["input"]).decode() if block.get("input") else ""
        self._args[call] = len(args)
        head = {"index": call, "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": args}}  # fmt: skip
        return [self._chunk({"tool_calls": [head]})]

    def _delta(self, obj: dict[str, Any]) -> list[bytes]:
        delta = obj.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if not text:
                return []
            self._counted()
            if not self._text_head:
                self._text_head, _, self._text_tail = self._chunk({"content": None}).partition(
                    b'"content":null'
                )
            return [self._text_head + b'"content":' + orjson.dumps(text) + self._text_tail]
        if kind == "input_json_delta":
            part = delta.get("partial_json")
            call = self._tools.get(obj.get("index", -1))
            if not part or call is None:
                return []  # "" says nothing; "{}" comes at the block's end if nothing else did
            self._args[call] = self._args.get(call, 0) + len(part)
            self._counted()
            return [self._chunk({"tool_calls": [{"index": call, "function": {"arguments": part}}]})]
        return []  # thinking/signature/citations deltas: not requested by a translated request

    def _message_delta(self, obj: dict[str, Any]) -> list[bytes]:
        self._update_usage(obj.get("usage"))
        reason = (obj.get("delta") or {}).get("stop_reason")
        if reason is None:
            return []
        return [self._chunk({}, FINISH_REASONS.get(reason, "stop"))]

    # -- helpers
    def _counted(self) -> None:
        """One more content event. Until message_delta brings the real output count, usage says
        at least one token per event sent, so a stream cut short is billed for what it sent
        (message_start's ``output_tokens`` is a placeholder)."""
        tally = self.tally
        tally.content_events += 1
        usage = tally.usage
        if usage is not None and usage["completion_tokens"] < tally.content_events:
            usage["completion_tokens"] = tally.content_events
            usage["total_tokens"] = usage["prompt_tokens"] + tally.content_events

    def _update_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            # message_delta counts are cumulative; keys it leaves out (or null) keep their value.
            self._raw.update((k, v) for k, v in usage.items() if v is not None)
            self.tally.usage = openai_usage(self._raw)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self._include_usage:
            obj["usage"] = None
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _usage_chunk(self) -> bytes:
        obj = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [],
            "usage": self.tally.usage,
        }
        return b"data: " + orjson.dumps(obj) + b"\n\n"
