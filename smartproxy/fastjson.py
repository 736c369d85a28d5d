"""JSON on the hot path.

``loads``: orjson, with the standard library deciding what orjson refuses (a lone surrogate
escape such as ``"\ud800"``, which JSON's grammar allows), except ``NaN`` and ``Infinity``: not
JSON (RFC 8259), refused as ``ValueError`` like any other syntax error. Nesting deeper than orjson's limit (1024) is refused as
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
            return json.loads(raw, parse_constant=_no_constant)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


_WS = re.compile(r"[ \t\n\r]*")
# C, from the standard library: one JSON value from an index -> (value, end); a string's rest
_scan_value: Any = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_scanstring: Any = json.decoder.scanstring  # type: ignore[attr-defined]


def _skip(text: str, i: int) -> int:
    """The index past the whitespace at ``i``."""
    m = _WS.match(text, i)
    return m.end() if m else i


def top_level_members(raw: bytes) -> dict[str, tuple[int, int]] | None:
    """Where each member's value lies in ``raw``, a JSON object already parsed successfully:
    ``{key: (start, end)}`` of the value, as character offsets in ``raw.decode()``, plus ``""``
    -> the closing brace's offset. None when that cannot be said exactly (not UTF-8, not an
    object, a key twice, an escaped or empty key). Each value is skipped by the standard
    library's C scanner, so a 30 MB string costs what parsing it costs."""
    located = _located(raw)
    return None if located is None else located[1]


def _located(raw: bytes) -> tuple[str, dict[str, tuple[int, int]]] | None:
    """``raw`` decoded, and its members' spans (see ``top_level_members``)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    spans = _members(text)
    return None if spans is None else (text, spans)


def _members(text: str) -> dict[str, tuple[int, int]] | None:
    spans: dict[str, tuple[int, int]] = {}
    i = _skip(text, 0)
    if text[i : i + 1] != "{":
        return None
    i = _skip(text, i + 1)
    if text[i : i + 1] != "}":
        while True:
            if text[i : i + 1] != '"':
                return None
            try:
                key, end = _scanstring(text, i + 1)
            except ValueError:
                return None
            if not key or key in spans or "\\" in text[i:end]:
                return None
            i = _skip(text, end)
            if text[i : i + 1] != ":":
                return None
            start = _skip(text, i + 1)
            try:
                _, i = _scan_value(text, start)
            except (StopIteration, ValueError, RecursionError):
                return None
            spans[key] = (start, i)
            i = _skip(text, i)
            if text[i : i + 1] == ",":
                i = _skip(text, i + 1)
                continue
            if text[i : i + 1] != "}":
                return None
            break
    spans[""] = (i, i)
    return spans if not text[i + 1 :].strip(" \t\n\r") else None


def with_members(raw: bytes, changes: dict[str, Any]) -> bytes | None:
    """``raw`` (a JSON object) with the values of ``changes`` set, every other byte as it was:
    a member present has its value replaced, one absent is added at the end. None when the
    members cannot be located exactly (the caller then writes the object anew)."""
    located = _located(raw)
    if located is None:
        return None
    text, spans = located
    edits: list[tuple[int, int, str]] = []
    close = spans[""][0]
    added = ""
    for name, value in changes.items():
        encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if name in spans:
            edits.append((*spans[name], encoded))
        else:
            added += "," + json.dumps(name, ensure_ascii=False) + ":" + encoded
    if added:
        if len(spans) == 1:  # an empty object
            added = added[1:]
        edits.append((close, close, added))
    out: list[str] = []
    pos = 0
    for start, end, encoded in sorted(edits):
        out += (text[pos:start], encoded)
        pos = end
    out.append(text[pos:])
    return "".join(out).encode("utf-8")
