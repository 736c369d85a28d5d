"""Micro-benchmark of the anthropic channel's translations: µs each request pays for them.

Run: ``python benchmarks/translation_bench.py [--number N] [--repeat R]``

Two cases, the pure functions only (no HTTP, no gateway), each timed with ``timeit`` and reported
as the best of several runs of CPU time (the least disturbed by the rest of the machine):

- a typical chat: a system prompt, a 3-turn conversation with a tool call and its result, one
  tool; the OpenAI request -> Messages request (``ChatToMessages.request``, JSON encoding
  included) plus the Messages answer -> ``chat.completion`` (``ChatToMessages.answer``, JSON
  decoding and encoding included);
- a 64-chunk stream: the same request, then an Anthropic stream of 64 ``text_delta`` events (with
  message_start, a ping, the block start/stop, message_delta and message_stop around them) split
  into events and translated to OpenAI chunks (``EventSplitter`` + ``MessagesStreamToChat``),
  with ``include_usage``.

For comparison it also times what an ``openai`` channel's stream costs the relay for the same 64
chunks (``EventSplitter`` + ``inspect_event``), so the difference is what translation adds.
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
from smartproxy.providers.anthropic import ChatToMessages  # noqa: E402
from smartproxy.upstream.sse import EventSplitter  # noqa: E402

CHANNEL = ChannelConfig(name="claude", type="anthropic", endpoint="https://api.anthropic.com")
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}  # fmt: skip
CHAT = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "What's the weather in Paris? " * 8},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18°C, sunny, light wind"},
        {"role": "user", "content": "And should I take an umbrella tomorrow?"},
    ],
    "tools": [TOOL],
    "max_tokens": 512,
    "temperature": 0.3,
}  # fmt: skip
ANSWER = json.dumps({
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "No umbrella needed: tomorrow stays dry and sunny. " * 4}],
    "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 412, "output_tokens": 48},
}).encode()  # fmt: skip


def sse(event: dict[str, object]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def anthropic_stream(chunks: int) -> list[bytes]:
    start = {"type": "message_start", "message": {"id": "msg_01", "type": "message",
             "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
             "stop_reason": None, "usage": {"input_tokens": 412, "output_tokens": 1}}}  # fmt: skip
    events = [sse(start),
              sse({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
              sse({"type": "ping"})]  # fmt: skip
    for i in range(chunks):
        events.append(sse({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": f" word{i}"}}))  # fmt: skip
    events += [sse({"type": "content_block_stop", "index": 0}),
               sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": chunks}}),
               sse({"type": "message_stop"})]  # fmt: skip
    return events


def openai_stream(chunks: int) -> list[bytes]:
    out = []
    for i in range(chunks):
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": f" word{i}"},
                              "finish_reason": None}]}  # fmt: skip
        out.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    usage = {"id": "c", "choices": [], "usage": {"prompt_tokens": 412, "completion_tokens": 64}}
    return [*out, b"data: " + json.dumps(usage).encode() + b"\n\n", b"data: [DONE]\n\n"]


ADAPTER = ChatToMessages()
STREAM = anthropic_stream(64)
PLAIN = openai_stream(64)


def typical_chat() -> None:
    ADAPTER.request(CHAT, model="claude-sonnet-4-5", channel=CHANNEL)
    ADAPTER.answer(ANSWER)


def stream_64() -> None:
    ADAPTER.request({**CHAT, "stream": True}, model="claude-sonnet-4-5", channel=CHANNEL)
    splitter = EventSplitter()
    tr = ADAPTER.stream(include_usage=True)
    for chunk in STREAM:  # one network chunk per event, as Anthropic sends them
        for event in splitter.feed(chunk):
            tr.feed(event)
    assert tr.tally.done


def main() -> None:
    rows: list[tuple[str, Callable[[], object]]] = [
        ("typical chat: request + answer translation", typical_chat),
        ("64-chunk stream: request + 64 text deltas translated", stream_64),
        ("64-chunk openai stream relayed untranslated (for comparison)",
         partial(microbench.relay_untranslated, PLAIN)),
    ]
    microbench.run(__doc__.splitlines()[0], rows)


if __name__ == "__main__":
    main()
