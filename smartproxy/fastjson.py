"""JSON parsing on the hot path: orjson, with the standard library deciding what orjson refuses
(NaN, integers past 64 bits), so the gateway accepts exactly what ``json`` accepts."""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)
