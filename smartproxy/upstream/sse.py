"""Server-sent events: split a byte stream into whole events and find the usage in them.

The relay works on whole events (``data: ...`` lines up to a blank line) so that it can drop the
one usage chunk the gateway asked for without touching a byte of the others.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .. import fastjson

_SEPARATOR = re.compile(rb"\r\n\r\n|\n\n|\r\r")  # the blank line that ends an event


class EventSplitter:
    """Feed raw chunks, get back complete events (each ending with its blank line)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """One pass over the bytes however many events they hold (looking for each of the three
        separators from every event's start cost the square of a chunk's events: 80,000 small
        events in one read held the event loop for 10 s)."""
        buf = self._buf + chunk if self._buf else chunk
        events: list[bytes] = []
        start = 0
        if b"\r" not in buf:  # the usual LF-only stream: the fast path
            while (end := buf.find(b"\n\n", start)) != -1:
                events.append(buf[start : end + 2])
                start = end + 2
        else:
            for m in _SEPARATOR.finditer(buf):
                events.append(buf[start : m.end()])
                start = m.end()
        self._buf = buf[start:] if start else buf
        return events

    def idle(self) -> bool:
        """No part of an event is held (the next bytes start one)."""
        return not self._buf

    def rest(self) -> bytes:
        """Bytes after the last complete event (a stream that ended mid-event)."""
        rest, self._buf = self._buf, b""
        return rest


@dataclass(slots=True)
class StreamTally:
    """What a relayed stream carried: upstream usage if any, else enough to estimate."""

    usage: dict[str, Any] | None = None
    content_events: int = 0
    done: bool = False
    response_id: str | None = None  # a Responses stream's id (from ``response.created``)
    error: str | None = None  # the stream ended with the upstream's own ``error`` event


def event_data(event: bytes) -> bytes:
    """The joined ``data:`` payload of one event."""
    parts = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            parts.append(line[5:].lstrip(b" ") if line[5:6] == b" " else line[5:])
    return b"\n".join(parts)


def inspect_event(event: bytes, tally: StreamTally) -> bool:
    """Update ``tally`` from one event; True when it is a usage-only chunk (no choices)."""
    data = event_data(event)
    if not data:
        return False
    if data.strip() == b"[DONE]":
        tally.done = True
        return False
    if b'"usage"' not in data:
        tally.content_events += 1
        return False
    try:
        obj = json.loads(data)
    except ValueError:
        tally.content_events += 1
        return False
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if isinstance(usage, dict):
        tally.usage = usage
        if not obj.get("choices"):
            return True
    tally.content_events += 1
    return False


def usage_of_body(body: bytes) -> dict[str, Any] | None:
    """``usage`` of a JSON response body, or None."""
    if b'"usage"' not in body:
        return None
    try:
        obj = fastjson.loads(body)
    except ValueError:
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    return usage if isinstance(usage, dict) else None


def stream_error_text(obj: dict[str, Any] | None) -> str:
    """``kind: message`` of an upstream stream ``error`` event: Anthropic's ``{"error": {"type",
    "message"}}`` or the Responses API's ``{"code", "message"}`` (at the top or in ``error``)."""
    err = obj.get("error") if obj is not None else None
    if not isinstance(err, dict):
        err = obj or {}
    kind = err.get("code") or err.get("type") or "error"
    return f"{kind}: {err.get('message') or ''}".rstrip(": ")


def error_event(message: str, code: str = "upstream_stream_error") -> bytes:
    payload = {"error": {"message": message, "type": "upstream_error", "code": code, "param": None}}
    return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
