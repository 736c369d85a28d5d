"""JSON on the hot path.

``loads``: orjson, with the standard library deciding what orjson refuses (NaN, Infinity), so the
gateway accepts what ``json`` accepts. Nesting deeper than orjson's limit (1024) is refused as
``ValueError`` without asking ``json``, whose recursive parser would raise ``RecursionError`` on a
100,000-level document. orjson reads an integer past 64 bits as a float: harmless for the fields
the gateway reads, and the bodies it forwards are never written back from what it parsed.

``with_members``: a request body with ``model`` or ``stream_options`` set, every other byte as the
client sent it (contract §3), by locating the top-level members in the raw bytes.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson


def loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "recursion" in str(exc).lower():
            raise ValueError("JSON nested too deeply (more than 1024 levels)") from None
        try:
            return json.loads(raw)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


# A string (escapes included) or one structural byte; everything between two tokens is
# whitespace, a number, true, false or null. UTF-8 continuation bytes are never '"' or '\\'.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\],:]', re.DOTALL)
_WS = b" \t\r\n"


def top_level_members(raw: bytes) -> dict[str, tuple[int, int]] | None:
    """Where each member's value lies in ``raw``, a JSON object already parsed successfully:
    ``{key: (start, end)}`` of the value's bytes, plus ``""`` -> the closing brace's position.
    None when that cannot be said exactly (not an object, a key twice, an escaped key)."""
    if 0 in raw[:4]:  # UTF-16 or UTF-32 (which json accepts): not bytes to splice UTF-8 into
        return None
    spans: dict[str, tuple[int, int]] = {}
    depth = 0
    key: bytes | None = None
    start = -1
    for m in _TOKEN.finditer(raw):
        t = raw[m.start()]
        if t == 0x22:  # a string
            if depth == 1 and key is None and start < 0:
                key = m.group()
            continue
        if t in b"{[":
            if depth == 0 and (t != 0x7B or raw[: m.start()].strip(_WS)):
                return None
            depth += 1
        elif t in b"}]":
            if depth == 1:
                if key is not None and start >= 0 and not _add(spans, raw, key, start, m.start()):
                    return None
                spans[""] = (m.start(), m.start())
                return spans if not raw[m.end() :].strip(_WS) else None
            depth -= 1
        elif depth == 1:
            if t == 0x3A:  # ':'
                start = m.end()
            else:  # ','
                if key is None or not _add(spans, raw, key, start, m.start()):
                    return None
                key, start = None, -1
    return None


def _add(spans: dict[str, tuple[int, int]], raw: bytes, key: bytes, start: int, end: int) -> bool:
    if b"\\" in key:
        return False
    name = key[1:-1].decode("utf-8", "replace")
    if name in spans or name == "":
        return False
    while raw[start] in _WS:
        start += 1
    while raw[end - 1] in _WS:
        end -= 1
    spans[name] = (start, end)
    return True


def with_members(raw: bytes, changes: dict[str, Any]) -> bytes | None:
    """``raw`` (a JSON object) with the values of ``changes`` set, every other byte as it was:
    a member present has its value replaced, one absent is added at the end. None when the
    members cannot be located exactly (the caller then writes the object anew)."""
    spans = top_level_members(raw)
    if spans is None:
        return None
    edits: list[tuple[int, int, bytes]] = []
    close = spans[""][0]
    added = b""
    for name, value in changes.items():
        encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        if name in spans:
            edits.append((*spans[name], encoded))
        else:
            added += b"," + json.dumps(name).encode() + b":" + encoded
    if added:
        if len(spans) == 1:  # an empty object
            added = added[1:]
        edits.append((close, close, added))
    out: list[bytes] = []
    pos = 0
    for start, end, encoded in sorted(edits):
        out += (raw[pos:start], encoded)
        pos = end
    out.append(raw[pos:])
    return b"".join(out)
