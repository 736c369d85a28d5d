"""The prompt-token estimate used for reservations, rules (``prompt_tokens``) and, when upstream
reports no usage, billing.

It counts the characters of the request's text — every string value of the JSON body, so neither
the JSON syntax nor ``\\uXXXX`` escapes nor UTF-8 byte lengths inflate or deflate it — at
``chars_per_token`` characters a token, except CJK characters (Chinese, Japanese kana, Korean
Hangul, full-width forms), which count one token each: tokenizers give them about one token or
more each, so bytes/4 undercounted Chinese about threefold. The chat template's own tokens are
added (``PER_MESSAGE``, ``PER_REQUEST``), and the sum is rounded up: a reservation must not be
smaller than what the provider will count, or concurrent requests overrun a quota.
"""

from __future__ import annotations

import math
import re
from typing import Any

_CJK = re.compile(
    "[\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0003134f]"
)


def text_tokens(text: str, chars_per_token: float) -> float:
    """Tokens of one string (a fraction: the caller sums, then rounds once)."""
    if text.isascii():
        return len(text) / chars_per_token
    other = len(_CJK.sub("", text))  # one C-level pass; no list of matches
    return (len(text) - other) + other / chars_per_token


# What a chat template adds around the text (OpenAI's counting guide: 3 tokens a message, 1 more
# for a name, 3 to prime the reply): a short message is mostly this, and leaving it out made the
# estimate of "hello" 3 tokens where providers count 8, so concurrent requests reserving that
# little overran a quota by many requests.
PER_MESSAGE = 4
PER_REQUEST = 3


def prompt_tokens(body: Any, chars_per_token: float) -> int:
    """The estimate for a parsed request body: at least 1."""
    total = 0.0
    if isinstance(body, dict):
        turns = body.get("messages")
        if not isinstance(turns, list):
            turns = body.get("input")  # the Responses API
        if isinstance(turns, list):
            total += PER_REQUEST + PER_MESSAGE * len(turns)
    stack = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            total += text_tokens(value, chars_per_token)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return max(1, math.ceil(total - 1e-9))
