"""JSON parsing on the hot path: orjson, with the standard library deciding what orjson refuses
(NaN, integers past 64 bits), so the gateway accepts exactly what ``json`` accepts.

Nesting deeper than orjson's limit (1024) is refused as ``ValueError`` without asking ``json``,
whose recursive parser would raise ``RecursionError`` on a 100,000-level document.
"""

from __future__ import annotations

import json
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
