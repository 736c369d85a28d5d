"""The API shapes the relay understands: where an answer's usage is, how a stream ends, how a
stream error is worded.

    CHAT        OpenAI chat/completions/embeddings: ``usage`` at the top level (for streams in a
                usage-only chunk the gateway may have asked for), ``data: [DONE]`` ends a stream
    RESPONSES   OpenAI Responses: ``usage`` (``input_tokens``, ``output_tokens``) in the response
                object, for streams in the ``response.completed`` (or ``.incomplete`` /
                ``.failed``) event, which also ends the stream; the response id is remembered
    ANTHROPIC   Anthropic Messages: usage from ``message_start`` merged with the cumulative
                ``message_delta`` usage; ``message_stop`` ends the stream
    UNMETERED   answers that carry no new tokens (``GET /v1/responses/{id}``): nothing is charged

An ``error`` event also ends a Responses or Anthropic stream (both APIs' last word on a failure):
the relay adds no error event of its own after it, and counts the attempt as failed. A chat
stream has no such event (a ``data: {"error": ...}`` chunk is not its end).

``tokens_of`` reads either family of usage names (``prompt_tokens``/``completion_tokens`` or
``input_tokens``/``output_tokens`` plus Anthropic's cache tokens, which its ``input_tokens`` leave
out). Each function is pure over bytes and dicts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import fastjson
from .sse import (
    StreamTally,
    error_event,
    event_data,
    inspect_event,
    stream_error_text,
    usage_of_body,
)

Inspect = Callable[[bytes, StreamTally], bool]


@dataclass(frozen=True, slots=True)
class Wire:
    name: str
    usage_of_body: Callable[[bytes], dict[str, Any] | None]
    inspect: (
        Inspect  # one event -> tally; True = drop it (a usage chunk the client did not ask for)
    )
    error_event: Callable[[str], bytes]
    ends_with_marker: bool  # a clean end without the end marker is a stream cut short
    ask_stream_usage: bool  # add ``stream_options.include_usage`` to streaming requests
    id_of_body: Callable[[bytes], str | None] | None = None  # an answer id to remember


def tokens_of(usage: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens of a ``usage`` object of any of the three shapes.

    A ``total_tokens`` above prompt + completion counts in full (contract §4: cost is total
    tokens x price): the rest is generated tokens the provider left out of its completion count
    (Gemini's OpenAI-compatible API reports thinking tokens only in the total), counted as
    completion. A smaller total is not believed over the two counts."""
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        prompt = _int(usage.get("prompt_tokens"))
        completion = _int(usage.get("completion_tokens"))
    else:
        prompt = (
            _int(usage.get("input_tokens"))
            + _int(usage.get("cache_creation_input_tokens"))
            + _int(usage.get("cache_read_input_tokens"))
        )
        completion = _int(usage.get("output_tokens"))
    return prompt, max(completion, _int(usage.get("total_tokens")) - prompt)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def event_name(event: bytes) -> bytes | None:
    """The ``event:`` field of one SSE event, or None."""
    for line in event.splitlines():
        if line.startswith(b"event:"):
            return line[6:].strip()
    return None


# ----------------------------------------------------------------------------- Responses
_RESPONSE_END = frozenset({b"response.completed", b"response.incomplete", b"response.failed"})


def _loads(data: bytes) -> dict[str, Any] | None:
    try:
        obj = fastjson.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def inspect_responses_event(event: bytes, tally: StreamTally) -> bool:
    """Responses stream: the id from ``response.created``, usage and the end from the last
    event; every ``*.delta`` counts as one content event (for an estimate without usage)."""
    data = event_data(event)
    if not data:
        return False
    name = event_name(event)
    if name is None:  # no ``event:`` line: the type is in the payload
        obj = _loads(data) if b'"response.' in data or b'"error"' in data else None
        name = str(obj.get("type", "")).encode() if obj else b""
    if name.endswith(b".delta"):
        tally.content_events += 1
    elif name == b"response.created" and tally.response_id is None:
        obj = _loads(data)
        response = obj.get("response") if obj else None
        if isinstance(response, dict) and isinstance(response.get("id"), str):
            tally.response_id = response["id"]
    elif name in _RESPONSE_END:
        tally.done = True
        obj = _loads(data)
        response = obj.get("response") if obj else None
        usage = response.get("usage") if isinstance(response, dict) else None
        if isinstance(usage, dict):
            tally.usage = usage
    elif name == b"error":
        tally.done = True
        tally.error = stream_error_text(_loads(data))
    return False


def responses_id_of_body(body: bytes) -> str | None:
    obj = _loads(body)
    if obj is None or obj.get("object") != "response":
        return None
    ident = obj.get("id")
    return ident if isinstance(ident, str) else None


def responses_error_event(message: str) -> bytes:
    """The Responses API's stream ``error`` event."""
    payload = {"type": "error", "code": "upstream_stream_error", "message": message, "param": None}
    return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"


# ----------------------------------------------------------------------------- Anthropic
def inspect_anthropic_event(event: bytes, tally: StreamTally) -> bool:
    """Anthropic stream: usage of ``message_start`` updated by each ``message_delta`` (whose
    counts are cumulative); ``message_stop`` or ``error`` ends it; each ``content_block_delta``
    is content."""
    name = event_name(event)
    if name == b"content_block_delta":
        tally.content_events += 1
    elif name in (b"message_start", b"message_delta"):
        obj = _loads(event_data(event))
        if obj is None:
            return False
        holder = obj.get("message") if name == b"message_start" else obj
        usage = holder.get("usage") if isinstance(holder, dict) else None
        if isinstance(usage, dict):
            merged = dict(tally.usage or {})
            merged.update((k, v) for k, v in usage.items() if v is not None)
            tally.usage = merged
    elif name == b"message_stop":
        tally.done = True
    elif name == b"error":
        tally.done = True
        tally.error = stream_error_text(_loads(event_data(event)))
    return False


def anthropic_error_event(message: str, kind: str = "api_error") -> bytes:
    """An Anthropic stream ``error`` event."""
    payload = {"type": "error", "error": {"type": kind, "message": message}}
    return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"


def _no_usage(body: bytes) -> dict[str, Any]:
    return {}


def _ignore(event: bytes, tally: StreamTally) -> bool:
    tally.usage = {}
    return False


CHAT = Wire("chat", usage_of_body, inspect_event, error_event, True, True)
EMBEDDINGS = Wire("embeddings", usage_of_body, inspect_event, error_event, False, False)
RESPONSES = Wire(
    "responses",
    usage_of_body,
    inspect_responses_event,
    responses_error_event,
    True,
    False,
    responses_id_of_body,
)
ANTHROPIC = Wire(
    "anthropic", usage_of_body, inspect_anthropic_event, anthropic_error_event, True, False
)
UNMETERED = Wire("unmetered", _no_usage, _ignore, error_event, False, False)
