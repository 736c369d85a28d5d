"""Messages <-> chat translation, with recorded examples (shapes from the two API references)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from smartproxy.providers.messages_answer import (
    ChatToMessagesStream,
    chat_error_to_anthropic,
    chat_to_message,
)
from smartproxy.providers.messages_request import TranslationError, messages_to_chat

TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather of a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]

# A Claude Code-like turn: system blocks, an image, an earlier tool call and its two results.
MESSAGES_REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Paris and Rome? See:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                             "data": "QUJD"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "two calls", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather",
                 "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_2",
                 "content": [{"type": "text", "text": "no data"}], "is_error": True},
                {"type": "text", "text": "Thanks"},
            ],
        },
    ],
    "tools": TOOLS,
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "stop_sequences": ["END"],
    "temperature": 0.2,
    "metadata": {"user_id": "u-1"},
    "stream": True,
    # What Claude Code also sends, ignored for a documented reason (``_IGNORED``):
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
    "cache_control": {"type": "ephemeral"},
    "service_tier": "auto",
    "output_config": {"effort": "high"},
    "top_k": None,  # null: not set
}  # fmt: skip


def test_request_translation_field_by_field() -> None:
    out = messages_to_chat(MESSAGES_REQUEST)
    assert out["model"] == "claude-sonnet-4-5"
    assert out["max_tokens"] == 1024
    assert out["stop"] == ["END"]
    assert out["temperature"] == 0.2 and "top_k" not in out and "response_format" not in out
    assert set(out) == {"model", "max_tokens", "stop", "temperature", "user", "stream",
                        "stream_options", "tool_choice", "parallel_tool_calls", "tools",
                        "messages"}  # fmt: skip
    assert out["user"] == "u-1"
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert out["tool_choice"] == "required" and out["parallel_tool_calls"] is False
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": TOOLS[0]["input_schema"],
                "description": "Weather of a city",
            },
        }
    ]
    assert out["messages"] == [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Paris and Rome? See:"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "toolu_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "toolu_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no data"},
        {"role": "user", "content": "Thanks"},
    ]  # fmt: skip


def test_named_tool_choice_and_plain_strings() -> None:
    out = messages_to_chat(
        {
            "model": "m",
            "system": "sys",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": TOOLS,
            "tool_choice": {"type": "tool", "name": "get_weather"},
        }
    )
    assert out["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
    ]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert "stream" not in out and "max_tokens" not in out


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": "x"}, "messages"),
        ({"model": "m", "messages": [], "mcp_servers": []}, "mcp_servers"),
        ({"model": "m", "messages": [], "tools": [{"type": "web_search_20250305",
                                                 "name": "web_search"}]}, "tools[0]"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "document"}]}]},
         "messages[0].content[0]"),
    ],
)  # fmt: skip
def test_untranslatable_fields_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as info:
        messages_to_chat(body)
    assert info.value.param == param


def _user(*blocks: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": list(blocks)}]}


def _text(**extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": "hi", **extra}


SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}}

# Nothing is dropped silently: every field chat cannot say is refused by its path.
REFUSED = [
    ({**_user(_text()), "top_k": 5}, "top_k"),
    ({**_user(_text()), "inference_geo": "us"}, "inference_geo"),
    ({**_user(_text()), "mystery_option": True}, "mystery_option"),
    ({**_user(_text()), "container": "c-1"}, "container"),
    ({**_user(_text()), "metadata": {"user_id": "u", "tier": "x"}}, "metadata.tier"),
    ({**_user(_text()), "output_config": {"format": {"type": "xml"}}}, "output_config.format"),
    ({**_user(_text()), "output_config": {"verbosity": "low"}}, "output_config.verbosity"),
    ({**_user(_text()), "thinking": {"type": "telepathic"}}, "thinking.type"),
    ({**_user(_text()), "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
    ({**_user(_text()), "tools": [{**TOOLS[0], "defer_loading": True}]}, "tools[0].defer_loading"),
    ({**_user(_text()), "system": [_text(), {"type": "image", "source": {}}]}, "system[1]"),
    (_user(_text(citations=[{"type": "char_location"}])), "messages[0].content[0].citations"),
    (_user({"type": "search_result", "source": "s", "title": "t", "content": []}),
     "messages[0].content[0]"),
    (_user({"type": "thinking", "thinking": "x"}), "messages[0].content[0]"),
    (_user(_text(), {"type": "image", "source": {"type": "url", "url": "u"},
                     "transformations": {"crop": 1}}), "messages[0].content[1].transformations"),
    (_user({"type": "tool_result", "tool_use_id": "t",
            "content": [{"type": "document", "source": {}}]}),
     "messages[0].content[0].content[0]"),
    (_user({"type": "tool_result", "tool_use_id": "t", "content": "x", "toolset_name": "mcp"}),
     "messages[0].content[0].toolset_name"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi", "name": "bob"}]},
     "messages[0].name"),
    ({"model": "m", "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {},
         "caller": {"type": "code_execution_20250825", "tool_id": "s"}}]}]},
     "messages[0].content[0].caller"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "param"), REFUSED, ids=[p for _, p in REFUSED])
def test_fields_chat_cannot_say_are_refused_by_path(body: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as info:
        messages_to_chat(body)
    assert info.value.param == param and param in str(info.value)


def test_structured_output_and_strict_tools_are_translated() -> None:
    new = messages_to_chat(
        {**_user(_text()), "output_config": {"format": {"type": "json_schema", "schema": SCHEMA},
                                              "effort": "low"},
         "tools": [{**TOOLS[0], "strict": True, "cache_control": {"type": "ephemeral"}}]}
    )  # fmt: skip
    old = messages_to_chat({**_user(_text()), "output_format": {"type": "json_schema",
                                                                "schema": SCHEMA}})  # fmt: skip
    wanted = {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA,
                                                     "strict": True}}  # fmt: skip
    assert new["response_format"] == wanted == old["response_format"]
    assert new["tools"][0]["function"]["strict"] is True
    assert "effort" not in json.dumps(new)  # a budget hint: the channel answers at its default
    # Blocks a client echoes back from an earlier answer, and caching hints, are accepted.
    echoed = messages_to_chat({"model": "m", "messages": [{"role": "assistant", "content": [
        {"type": "text", "text": "ok", "citations": None},
        {"type": "tool_use", "id": "t", "name": "f", "input": {}, "caller": {"type": "direct"},
         "cache_control": {"type": "ephemeral"}}]}]})  # fmt: skip
    assert echoed["messages"][0]["tool_calls"][0]["function"]["name"] == "f"


# Recorded OpenAI answer (chat.completion with a tool call and cached prompt tokens).
CHAT_ANSWER = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "created": 1764500000,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 120, "completion_tokens": 17, "total_tokens": 137,
              "prompt_tokens_details": {"cached_tokens": 100}},
}  # fmt: skip


def test_answer_translation() -> None:
    msg = chat_to_message(CHAT_ANSWER, "claude-sonnet-4-5")
    assert msg == {
        "id": "msg_chatcmpl-abc",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather",
             "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 20, "output_tokens": 17, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 100},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("finish", "stop"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")],
)
def test_finish_reasons(finish: str, stop: str) -> None:
    answer = {"id": "x", "choices": [{"message": {"content": "a"}, "finish_reason": finish}]}
    assert chat_to_message(answer, "m")["stop_reason"] == stop


def test_error_translation_keeps_the_message() -> None:
    body = b'{"error": {"message": "Rate limit reached", "type": "tokens", "code": "rl"}}'
    assert json.loads(chat_error_to_anthropic(429, body)) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Rate limit reached"},
    }
    assert json.loads(chat_error_to_anthropic(502, b"bad gateway"))["error"] == {
        "type": "api_error",
        "message": "bad gateway",
    }


# Recorded OpenAI stream: text, then two parallel tool calls (the second without arguments),
# a finish chunk and the usage chunk.
CHUNKS = [
    {"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Let me"}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"content": " check."}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": ""}}]}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": "{\"city\":"}}]}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": "\"Paris\"}"}}]}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 1, "id": "call_b", "type": "function",
         "function": {"name": "now", "arguments": ""}}]}}]},
    {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"id": "c1", "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 12,
                                          "total_tokens": 42}},
]  # fmt: skip


def _events(raw: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for event in raw:
        name, data = event.decode().strip().split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        payload = json.loads(data[6:])
        assert payload["type"] == name[7:]
        out.append((name[7:], payload))
    return out


def test_stream_translation_event_by_event() -> None:
    stream = ChatToMessagesStream("claude-x")
    raw: list[bytes] = []
    for chunk in CHUNKS:
        raw += stream.feed(chunk)
    raw += stream.finish()
    events = _events(raw)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_start", "content_block_stop", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip  (tool blocks stay open to the end: parallel calls' deltas may interleave)
    start = events[0][1]["message"]
    assert start["role"] == "assistant" and start["model"] == "claude-x"
    assert start["content"] == [] and start["id"] == "msg_c1"
    assert events[1][1] == {"type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}}  # fmt: skip
    assert events[2][1]["delta"] == {"type": "text_delta", "text": "Let me"}
    assert events[5][1]["content_block"] == {
        "type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}  # fmt: skip
    assert events[6][1] == {"type": "content_block_delta", "index": 1,
                            "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}  # fmt: skip
    # The call without arguments streams no empty partial_json.
    assert events[8][1]["index"] == 2 and events[8][1]["content_block"]["name"] == "now"
    assert [e[1]["index"] for e in events[9:11]] == [1, 2]
    assert events[11][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[11][1]["usage"]["output_tokens"] == 12
    assert events[11][1]["usage"]["input_tokens"] == 30
    assert stream.finish() == []


def _tool_blocks(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What an SDK assembles from the translated events: each tool_use block by its index."""
    stream = ChatToMessagesStream("m")
    raw = [b for chunk in chunks for b in stream.feed(chunk)] + stream.finish()
    blocks: dict[int, dict[str, Any]] = {}
    for name, event in _events(raw):
        if name == "content_block_start":
            blocks[event["index"]] = {**event["content_block"], "json": ""}
        elif name == "content_block_delta" and event["delta"]["type"] == "input_json_delta":
            blocks[event["index"]]["json"] += event["delta"]["partial_json"]
    return [{"id": b["id"], "name": b["name"], "input": json.loads(b["json"] or "{}")}
            for _, b in sorted(blocks.items()) if b["type"] == "tool_use"]


def test_parallel_calls_without_index_in_one_chunk_stay_apart() -> None:
    """Gemini's OpenAI endpoint sends whole calls with no ``index``: two calls in one chunk
    were merged into one block with both argument strings (audit finding)."""
    calls = [{"id": "g1", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
             {"id": "g2", "type": "function",
              "function": {"name": "get_time", "arguments": '{"city":"Rome"}'}}]  # fmt: skip
    chunks = [{"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": calls}}]},
              {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]
    assert _tool_blocks(chunks) == [
        {"id": "g1", "name": "get_weather", "input": {"city": "Paris"}},
        {"id": "g2", "name": "get_time", "input": {"city": "Rome"}},
    ]
    # ... and one call per chunk, each without index: told apart by its id
    one_each = [{"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [c]}}]}
                for c in calls]
    assert [b["id"] for b in _tool_blocks(one_each)] == ["g1", "g2"]


def test_interleaved_deltas_of_parallel_calls_reach_their_own_block() -> None:
    """index 0 started, index 1 whole, then index 0's arguments: they made a third, nameless
    block (audit finding)."""
    def chunk(**call: Any) -> dict[str, Any]:
        return {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}

    chunks = [
        chunk(index=0, id="c1", type="function", function={"name": "get_weather", "arguments": ""}),
        chunk(index=1, id="c2", type="function", function={"name": "get_time", "arguments": "{}"}),
        chunk(index=0, function={"arguments": '{"city":"P"}'}),
    ]
    assert _tool_blocks(chunks) == [
        {"id": "c1", "name": "get_weather", "input": {"city": "P"}},
        {"id": "c2", "name": "get_time", "input": {}},
    ]


def test_claude_code_hints_are_left_out() -> None:
    body = {
        "model": "claude-x",
        "max_tokens": 32000,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}],
    }  # fmt: skip
    out = messages_to_chat(body)
    assert out == {"model": "claude-x", "max_tokens": 32000,
                   "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
