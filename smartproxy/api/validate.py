"""Checks on the request fields that leave the request: into labels, logs, SQLite and upstream.

Text that becomes a metric label, a log field or a request-log column (``model``, request ids)
must be valid UTF-8: JSON allows a lone surrogate (``"gpt\\ud800"``), which Python keeps as a
string that cannot be encoded, and which would break whatever writes it later (a SQLite batch, a
Prometheus scrape). Such a request is a 400 naming the field, before anything is reserved.
Fields the gateway reads to size a reservation (``n``, ``stream_options``) are checked here too,
so that a request it cannot size is refused rather than mis-reserved.
"""

from __future__ import annotations

from typing import Any

from ..errors import BadRequest

MAX_CHOICES = 128  # OpenAI's own bound for ``n``


def is_utf8(text: str) -> bool:
    """True if ``text`` encodes as UTF-8 (no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def require_utf8(text: str, field: str) -> None:
    if not is_utf8(text):
        raise BadRequest(
            f"'{field}' is not valid UTF-8 text (it holds a lone surrogate escape)",
            code="invalid_value",
            param=field,
        )


def check_fields(body: dict[str, Any]) -> int:
    """Validate ``n`` and ``stream_options``; the number of choices the answer may hold."""
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    n = body.get("n")
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES:
        raise BadRequest(
            f"'n' must be a whole number from 1 to {MAX_CHOICES}, got {n!r}"[:200],
            code="invalid_value",
            param="n",
        )
    return n
