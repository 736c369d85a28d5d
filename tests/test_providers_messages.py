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
    "top_k": 5,
    "metadata": {"user_id": "u-1"},
    "stream": True,
}  # fmt: skip


def test_request_translation_field_by_field() -> None:
    out = messages_to_chat(MESSAGES_REQUEST)
    assert out["model"] == "claude-sonnet-4-5"
    assert out["max_tokens"] == 1024
    assert out["stop"] == ["END"]
    assert out["temperature"] == 0.2 and "top_k" not in out
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
        "content_block_stop",
        "content_block_start", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
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
    assert events[9][1]["index"] == 2 and events[9][1]["content_block"]["name"] == "now"
    assert events[11][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[11][1]["usage"]["output_tokens"] == 12
    assert events[11][1]["usage"]["input_tokens"] == 30
    assert stream.finish() == []


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
