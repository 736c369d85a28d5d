"""The prompt-token estimate used for reservations, rules (``prompt_tokens``) and, when upstream
reports no usage, billing; and for such an answer, the completion estimate of its text.

It counts the characters of the request's text — every string value of the JSON body, so neither
the JSON syntax nor ``\\uXXXX`` escapes nor UTF-8 byte lengths inflate or deflate it — at
``chars_per_token`` characters a token, except CJK characters (Chinese, Japanese kana, Korean
Hangul, full-width forms), which count one token each: tokenizers give them about one token or
more each, so bytes/4 undercounted Chinese about threefold. The chat template's own tokens are
added (``PER_MESSAGE``, ``PER_REQUEST``), and the sum is rounded up: a reservation must not be
smaller than what the provider will count, or concurrent requests overrun a quota.
"""

from __future__ import annotations

import json
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


def answer_tokens(answer: Any, chars_per_token: float) -> int:
    """The completion estimate for a whole answer that reported no usage: its generated text,
    counted as the prompt's is. Chat ``choices[].message`` (content, refusal, tool calls' names
    and arguments), completions ``choices[].text``, Responses ``output[]`` (message text, function
    call arguments, reasoning summaries) and Anthropic ``content[]`` (text, thinking, tool input).
    0 when there is none (embeddings)."""
    if not isinstance(answer, dict):
        return 0
    texts: list[Any] = []
    for choice in _dicts(answer.get("choices")):
        texts.append(choice.get("text"))
        message = choice.get("message")
        if isinstance(message, dict):
            _parts(texts, message.get("content"))
            texts.append(message.get("refusal"))
            for call in _dicts(message.get("tool_calls")):
                function = call.get("function")
                if isinstance(function, dict):
                    texts += (function.get("name"), function.get("arguments"))
    for item in _dicts(answer.get("output")):
        _parts(texts, item.get("content"))
        _parts(texts, item.get("summary"))
        texts += (item.get("name"), item.get("arguments"))
    _parts(texts, answer.get("content"))
    total = sum(text_tokens(t, chars_per_token) for t in texts if isinstance(t, str))
    return math.ceil(total - 1e-9)


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _parts(texts: list[Any], content: Any) -> None:
    """A content string, or its parts' text (Responses ``output_text``/``refusal``, Anthropic
    ``text``/``thinking``; a ``tool_use`` input as the JSON the model wrote)."""
    if isinstance(content, str):
        texts.append(content)
        return
    for part in _dicts(content):
        texts += (part.get("text"), part.get("refusal"), part.get("thinking"))
        if isinstance(part.get("input"), dict):
            texts += (part.get("name"), json.dumps(part["input"], ensure_ascii=False))
