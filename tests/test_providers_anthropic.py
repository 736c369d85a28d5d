"""Pure translations of the anthropic provider, on recorded examples (tests/data/anthropic/: a
stream and a message as the Messages API reference shows them) and hand-made requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from smartproxy.errors import Untranslatable
from smartproxy.providers.anthropic_answer import (
    MessagesStreamToChat,
    UpstreamStreamError,
    error_to_openai,
    message_to_chat,
    openai_usage,
)
from smartproxy.providers.anthropic_request import chat_to_messages
from smartproxy.upstream.sse import EventSplitter

DATA = Path(__file__).parent / "data" / "anthropic"


def translate_stream(raw: bytes, include_usage: bool = True) -> tuple[list[Any], Any]:
    tr = MessagesStreamToChat(include_usage=include_usage, created=1700000000)
    out: list[bytes] = []
    for event in EventSplitter().feed(raw):
        out.extend(tr.feed(event))
    chunks = [json.loads(e.removeprefix(b"data: ")) if b"[DONE]" not in e else "[DONE]"
              for e in out]  # fmt: skip
    assert all(e.endswith(b"\n\n") for e in out)
    return chunks, tr.tally


# ----------------------------------------------------------------------------- stream
def test_recorded_tool_use_stream():
    chunks, tally = translate_stream((DATA / "stream_tool_use.sse").read_bytes())
    assert chunks[-1] == "[DONE]" and tally.done
    first = chunks[0]
    assert first["id"] == "msg_014p7gG3wDgGV9EUtLvnow3U" and first["model"] == "claude-opus-4-1-20250805"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    body = [c for c in chunks[:-1] if c["choices"]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in body)
    assert text == "Okay, let's check the weather for San Francisco, CA:"
    calls = [d for c in body for d in c["choices"][0]["delta"].get("tool_calls") or []]
    assert calls[0] == {"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    assert all(d["index"] == 0 for d in calls)  # block 1 is tool call 0
    args = "".join(d["function"]["arguments"] for d in calls)
    assert json.loads(args) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert "" not in [d["function"]["arguments"] for d in calls[1:]]  # empty deltas skipped
    assert body[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["usage"] is None for c in body)
    usage_chunk = chunks[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == {
        "prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561,
        "prompt_tokens_details": {"cached_tokens": 0}}  # fmt: skip
    assert tally.usage == usage_chunk["usage"]


def test_stream_without_include_usage_still_tallies():
    chunks, tally = translate_stream((DATA / "stream_tool_use.sse").read_bytes(), False)
    assert all(c == "[DONE]" or (c["choices"] and "usage" not in c) for c in chunks)
    assert tally.usage["completion_tokens"] == 89 and tally.content_events > 0


def test_stream_error_event_raises_and_usage_updates_from_message_delta():
    tr = MessagesStreamToChat(include_usage=False, created=1)
    start = {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {
        "input_tokens": 5, "cache_read_input_tokens": 7, "output_tokens": 1}}}  # fmt: skip
    tr.feed(b"event: message_start\ndata: " + json.dumps(start).encode() + b"\n\n")
    delta = {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
             "usage": {"output_tokens": 40, "input_tokens": None}}  # fmt: skip
    out = tr.feed(b"data: " + json.dumps(delta).encode() + b"\n\n")
    assert json.loads(out[0][6:])["choices"][0]["finish_reason"] == "length"
    assert tr.tally.usage == {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52,
                              "prompt_tokens_details": {"cached_tokens": 7}}  # fmt: skip
    assert tr.feed(b"event: ping\ndata: {\"type\": \"ping\"}\n\n") == []
    err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(UpstreamStreamError, match="overloaded_error: Overloaded"):
        tr.feed(b"event: error\ndata: " + json.dumps(err).encode() + b"\n\n")


# ----------------------------------------------------------------------------- answers, errors
def test_recorded_message_to_chat_keeps_cache_tokens():
    msg = json.loads((DATA / "message_tool_use.json").read_text())
    chat = message_to_chat(msg, 1700000000)
    assert chat["choices"][0] == {
        "index": 0,
        "message": {
            "role": "assistant", "content": "I'll check the weather.", "refusal": None,
            "tool_calls": [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
                            "function": {"name": "get_weather", "arguments":
                                         '{"location":"San Francisco, CA","unit":"celsius"}'}}],
        },
        "finish_reason": "tool_calls",
        "logprobs": None,
    }  # fmt: skip
    assert chat["usage"] == {
        "prompt_tokens": 3195, "completion_tokens": 503, "total_tokens": 3698,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_creation_tokens": 100}}  # fmt: skip
    assert (chat["object"], chat["created"], chat["model"]) == (
        "chat.completion", 1700000000, "claude-sonnet-4-5")


@pytest.mark.parametrize(("reason", "finish"), [("end_turn", "stop"), ("stop_sequence", "stop"),
                         ("max_tokens", "length"), ("tool_use", "tool_calls")])  # fmt: skip
def test_finish_reasons(reason, finish):
    msg = {"content": [{"type": "text", "text": "x"}], "stop_reason": reason}
    assert message_to_chat(msg, 0)["choices"][0]["finish_reason"] == finish


def test_error_bodies():
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    assert json.loads(error_to_openai(529, body)) == {"error": {
        "message": "Overloaded", "type": "overloaded_error", "code": "overloaded_error",
        "param": None}}  # fmt: skip
    assert json.loads(error_to_openai(502, b"<html>bad gateway</html>"))["error"]["message"] == (
        "<html>bad gateway</html>")
    assert json.loads(error_to_openai(503, b""))["error"]["message"] == "upstream answered HTTP 503"
    openai_shaped = b'{"error":{"message":"m","type":"t","code":null,"param":null}}'
    assert error_to_openai(400, openai_shaped) == openai_shaped


def test_openai_usage_without_cache():
    assert openai_usage({"input_tokens": 3, "output_tokens": 4}) == {
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 0}}  # fmt: skip


# ----------------------------------------------------------------------------- requests
def test_request_translation_everything_at_once():
    body = {
        "model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True},
        "max_completion_tokens": 50, "max_tokens": 999, "stop": "###", "top_k": 5,
        "n": 1, "logprobs": False, "presence_penalty": 0, "response_format": {"type": "text"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "integer"}}}, "strict": True}}],
        "tool_choice": "auto", "parallel_tool_calls": False,
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "U1"},
            {"role": "user", "content": [{"type": "file", "file": {
                "file_data": "data:application/pdf;base64,JVBERi0="}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A"}],
             "tool_calls": [{"id": "c1", "type": "function",
                             "function": {"name": "f", "arguments": '{"a": 1}'}}],
             "refusal": None, "audio": None},
            {"role": "tool", "tool_call_id": "c1", "content": "42", "name": "f"},
        ],
    }  # fmt: skip
    out = chat_to_messages(body, model="claude-x", default_max_tokens=7)
    assert out == {
        "model": "claude-x", "system": "S", "max_tokens": 50, "stop_sequences": ["###"],
        "top_k": 5, "stream": True,
        "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {
            "a": {"type": "integer"}}}, "strict": True}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "U1"},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                "data": "JVBERi0="}}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "A"},
                {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "42"}]},
        ],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"seed": 1}, "seed"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/bmp;base64,AA=="}}]}]}, "messages[0].content[0].image_url.url"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {
            "name": "f", "arguments": "{oops"}}]}]}, "messages[0].tool_calls[0].function.arguments"),
        ({"messages": []}, "messages"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x",
                                                      "annotations": [1]}]}]},
         "messages[0].content[0].annotations"),
        ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {
            "url": "https://x/y.png"}}]}]}, "messages[0].content[0].type"),
        ({"tools": [{"type": "function", "function": {"name": "f"}, "foo": 2}]}, "tools[0].foo"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"},
             "foo": 1}]}]}, "messages[1].tool_calls[0].foo"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {
            "name": "f", "arguments": "{}", "foo": 1}}]}]},
         "messages[0].tool_calls[0].function.foo"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "custom",
            "function": {"name": "f"}}]}]}, "messages[0].tool_calls[0].type"),
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "description": "A place", "schema": {"type": "object"}}}},
         "response_format.json_schema.description"),
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object"}, "foo": 1}}},
         "response_format.json_schema.foo"),
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object"}}, "foo": 1}}, "response_format.foo"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)  # fmt: skip
def test_untranslatable_requests_name_the_field(change, param):
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **change}
    with pytest.raises(Untranslatable) as info:
        chat_to_messages(body, model="m")
    assert info.value.param == param and info.value.status == 400


def test_cache_control_and_document_title_go_through():
    cached = {"type": "ephemeral"}
    body = {"model": "m", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Long rules", "cache_control": cached}]},
        {"role": "user", "content": [
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JV"}},
            {"type": "text", "text": "Summarise", "cache_control": cached}]},
    ]}  # fmt: skip
    out = chat_to_messages(body, model="m")
    assert out["system"] == [{"type": "text", "text": "Long rules", "cache_control": cached}]
    assert out["messages"] == [{"role": "user", "content": [
        {"type": "document", "title": "a.pdf",
         "source": {"type": "base64", "media_type": "application/pdf", "data": "JV"}},
        {"type": "text", "text": "Summarise", "cache_control": cached}]}]  # fmt: skip


def test_tool_cache_control_and_json_schema_name_and_strict_go_through():
    cached = {"type": "ephemeral"}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f"}, "cache_control": cached}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "place", "schema": schema, "strict": True}}}  # fmt: skip
    out = chat_to_messages(body, model="m")
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}},
                             "cache_control": cached}]  # fmt: skip
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_tool_input_given_whole_at_block_start():
    tr = MessagesStreamToChat(include_usage=False, created=1)
    start = {"type": "content_block_start", "index": 0, "content_block": {
        "type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}}  # fmt: skip
    out = tr.feed(b"data: " + json.dumps(start).encode() + b"\n\n")
    out += tr.feed(b'data: {"type": "content_block_stop", "index": 0}\n\n')
    deltas = [json.loads(e[6:])["choices"][0]["delta"]["tool_calls"][0] for e in out]
    assert [d["function"]["arguments"] for d in deltas] == ['{"a":1}']


def test_tool_choice_without_tools_and_null_max_completion_tokens():
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "auto",
            "parallel_tool_calls": False, "max_completion_tokens": None, "max_tokens": 9}
    out = chat_to_messages(body, model="m")
    assert "tool_choice" not in out and out["max_tokens"] == 9
