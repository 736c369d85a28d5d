"""Micro-benchmark of the /v1/messages front on OpenAI chat channels: µs a request pays for the
Messages <-> chat translation (pure functions, no HTTP), best of several runs of CPU time.

Run: ``python benchmarks/messages_front_bench.py [--number N] [--repeat R]``

- a typical Claude Code-like turn: system prompt, a tool call and its result, one tool; the
  Messages request -> chat request (``MessagesToChat.request``, JSON encoding included) plus the
  ``chat.completion`` -> Anthropic message (``MessagesToChat.answer``, JSON in and out);
- a 64-chunk stream: the same request, then 64 OpenAI content chunks (plus the usage chunk and
  ``[DONE]``) split into events and turned into Anthropic events (``ChatStreamToMessages``);
- for comparison, the relay's own cost for the same 64 chunks untranslated (``inspect_event``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import microbench  # noqa: E402

from smartproxy.config import ChannelConfig  # noqa: E402
from smartproxy.providers.messages_chat import MessagesToChat  # noqa: E402
from smartproxy.upstream.sse import EventSplitter  # noqa: E402

CHANNEL = ChannelConfig(name="gpt", type="openai", endpoint="https://api.openai.com/v1")
TOOL = {"name": "get_weather", "description": "Weather now",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip
REQUEST = {
    "model": "claude-sonnet-4-5", "max_tokens": 1024, "tools": [TOOL],
    "system": [{"type": "text", "text": "You are a careful coding agent. " * 20}],
    "messages": [
        {"role": "user", "content": "What is the weather in Paris? " * 5},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C, cloudy"},
            {"type": "text", "text": "And tomorrow?"}]},
    ],
}  # fmt: skip
ANSWER = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Tomorrow: sunny, 21C. " * 10}}],
    "usage": {"prompt_tokens": 412, "completion_tokens": 64, "total_tokens": 476},
}).encode()  # fmt: skip


def openai_stream(chunks: int) -> list[bytes]:
    out = []
    for i in range(chunks):
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": f" word{i}"},
                              "finish_reason": None if i < chunks - 1 else "stop"}]}  # fmt: skip
        out.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    usage = {"id": "c", "choices": [], "usage": {"prompt_tokens": 412, "completion_tokens": 64}}
    return [*out, b"data: " + json.dumps(usage).encode() + b"\n\n", b"data: [DONE]\n\n"]


ADAPTER = MessagesToChat()
STREAM = openai_stream(64)


def typical_turn() -> None:
    ADAPTER.request(REQUEST, model="gpt-4.1", channel=CHANNEL)
    ADAPTER.answer(ANSWER)


def stream_64() -> None:
    ADAPTER.request({**REQUEST, "stream": True}, model="gpt-4.1", channel=CHANNEL)
    splitter = EventSplitter()
    tr = ADAPTER.stream(include_usage=False)
    for chunk in STREAM:
        for event in splitter.feed(chunk):
            tr.feed(event)
    assert tr.tally.done


def main() -> None:
    rows: list[tuple[str, Callable[[], object]]] = [
        ("typical turn: Messages request + chat answer translated", typical_turn),
        ("64-chunk stream: request + 64 chat chunks -> Anthropic events", stream_64),
        ("64-chunk chat stream relayed untranslated (for comparison)",
         partial(microbench.relay_untranslated, STREAM)),
    ]
    microbench.run(__doc__.splitlines()[0], rows)


if __name__ == "__main__":
    main()
