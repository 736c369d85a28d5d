"""Issue [9]: the openai SDK through an ``anthropic`` channel (fake Anthropic: tests/fakeanthropic.py).

Each test checks the Messages request the fake received field by field, and what the SDK saw.
The pitfalls of the issue each have a test here (named ``test_pitfall_*``).
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from conftest import DEV_KEY, base_config, channel
from prometheus_client.parser import text_string_to_metric_families

ANT_KEY = "sk-ant-test"
AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time"}}  # no parameters at all


def ant_channel(url: str, **kw: Any) -> dict[str, Any]:
    return {"name": "claude", "type": "anthropic", "endpoint": url, "api_key": ANT_KEY, **kw}


async def start(anthropic_factory, gateway_factory, *, fake_kw=None, extra=(), **cfg: Any):
    fake, url = await anthropic_factory(**(fake_kw or {}))
    channels = [ant_channel(url, model_mapping={"gpt-4o": "claude-sonnet-4-5"}), *extra]
    gw = await gateway_factory(base_config(channels=channels, **cfg))
    return fake, gw


async def usage_of(gw: Any, name: str = "claude") -> dict[str, Any]:
    await gw.gateway.drain_background()
    resp = await gw.client.get("/api/usage", headers=gw.admin_headers())
    rows = {row["channel"]: row for row in (await resp.json())["channels"]}
    return rows[name]


async def metric(gw: Any, name: str, **labels: str) -> float:
    text = await (await gw.client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


# ----------------------------------------------------------------------------- text
async def test_sdk_text_non_stream_request_translated_field_by_field(
    anthropic_factory, gateway_factory
):
    fake, gw = await start(anthropic_factory, gateway_factory)
    sdk = gw.openai()
    resp = await sdk.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "Hi"},
        ],
        max_tokens=100,
        stop=["END", "\n\nHuman:"],
        temperature=0.5,
        top_p=0.9,
        user="user-42",
    )
    assert resp.choices[0].message.content == "Hello from Claude."
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.object == "chat.completion" and resp.model == "claude-sonnet-4-5"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (21, 9)
    assert resp.usage.total_tokens == 30
    seen = fake.seen[-1]
    assert seen.path == "/v1/messages"
    assert seen.body == {
        "model": "claude-sonnet-4-5",
        "system": [
            {"type": "text", "text": "Be brief."},
            {"type": "text", "text": "Answer in English."},
        ],
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 100,
        "stop_sequences": ["END", "\n\nHuman:"],
        "temperature": 0.5,
        "top_p": 0.9,
        "metadata": {"user_id": "user-42"},
    }
    headers = {k.lower(): v for k, v in seen.headers.items()}
    assert headers["x-api-key"] == ANT_KEY and headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers
    assert not any(DEV_KEY in v for v in headers.values())  # the client's key never goes up
    row = await usage_of(gw)
    assert (row["prompt_tokens"], row["completion_tokens"], row["requests"]) == (21, 9, 1)
    assert await metric(gw, "smartproxy_tokens_total", channel="claude", kind="prompt") == 21
    assert await metric(gw, "smartproxy_tokens_total", channel="claude", kind="completion") == 9
    log = await gw.client.get("/api/usage", params={"group_by": "channel"},
                              headers=gw.admin_headers())  # fmt: skip
    (logged,) = (await log.json())["rows"]
    assert (logged["channel"], logged["prompt_tokens"], logged["completion_tokens"]) == (
        "claude", 21, 9)


async def test_default_max_tokens_and_the_v1_endpoint_form(anthropic_factory, gateway_factory):
    fake, url = await anthropic_factory()
    gw = await gateway_factory(
        base_config(channels=[ant_channel(url + "/v1", type="claude", default_max_tokens=256,
                                          anthropic_version="2024-01-01")])  # fmt: skip
    )
    await gw.openai().chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert fake.seen[-1].path == "/v1/messages"
    assert fake.seen[-1].body["max_tokens"] == 256
    assert fake.seen[-1].headers["anthropic-version"] == "2024-01-01"
    gw2 = await gateway_factory(base_config(channels=[ant_channel(url)]))
    await gw2.openai().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}]
    )
    assert fake.seen[-1].body["max_tokens"] == 4096


@pytest.mark.parametrize("include_usage", [True, False])
async def test_sdk_text_stream(anthropic_factory, gateway_factory, include_usage):
    fake, gw = await start(anthropic_factory, gateway_factory)
    sdk = gw.openai()
    kwargs: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await sdk.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=True, **kwargs
    )
    chunks = [c async for c in stream]
    assert fake.seen[-1].body == {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4096,
        "stream": True,
    }
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from Claude."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    if include_usage:  # pitfall: usage missing from streams (litellm #4905, #9657, #11915)
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (21, 9)
        assert all(c.usage is None for c in chunks[:-1])
    else:
        assert all(c.choices and c.usage is None for c in chunks)
    row = await usage_of(gw)  # quotas and cost use the upstream's numbers either way
    assert (row["prompt_tokens"], row["completion_tokens"]) == (21, 9)
    assert await metric(gw, "smartproxy_tokens_total", channel="claude", kind="completion") == 9


@pytest.mark.parametrize("stream", [False, True])
async def test_a_compressed_answer_is_translated_from_its_decoded_bytes(
    anthropic_factory, gateway_factory, stream
):
    """An upstream that ignores ``Accept-Encoding: identity``: the translation reads the
    decoded answer, and the client gets it uncompressed (JSON or SSE of its own)."""
    fake, gw = await start(anthropic_factory, gateway_factory, fake_kw={"coding": "gzip"})
    sdk = gw.openai()
    messages = [{"role": "user", "content": "Hi"}]
    if stream:
        chunks = [c async for c in await sdk.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True)]  # fmt: skip
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        raw = await sdk.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages)
        assert "content-encoding" not in raw.headers
        text = raw.parse().choices[0].message.content
    assert text == "Hello from Claude."
    row = await usage_of(gw)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (21, 9)


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_in_an_unreadable_coding_cannot_be_translated(
    anthropic_factory, gateway_factory, stream
):
    """``br``: nothing can be translated of it; the attempt fails (over) before the client
    gets a byte."""
    fake, gw = await start(anthropic_factory, gateway_factory, fake_kw={"coding": "br"},
                           retry={"max_attempts": 1})  # fmt: skip
    with pytest.raises(openai.APIStatusError) as info:
        await gw.openai().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=stream
        )
    assert info.value.status_code == 502
    assert "unreadable coding: br" in info.value.body["message"]


async def test_pitfall_first_chunk_says_role_assistant(anthropic_factory, gateway_factory):
    """Portkey #1399: the first chunk must carry ``role: assistant``."""
    _, gw = await start(anthropic_factory, gateway_factory)
    resp = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "Hi"}], "stream": True},
        headers=AUTH,
    )
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    events = (await resp.read()).split(b"\n\n")
    first = json.loads(events[0].removeprefix(b"data: "))
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert first["object"] == "chat.completion.chunk" and first["id"] == "msg_fake01"
    assert events[-2] == b"data: [DONE]" and events[-1] == b""
    assert b"ping" not in b"".join(events)


# ----------------------------------------------------------------------------- tools
async def test_sdk_tool_call_round_trip(anthropic_factory, gateway_factory):
    fake, gw = await start(anthropic_factory, gateway_factory)
    sdk = gw.openai()
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    fake.script = ["tools"]
    first = await sdk.chat.completions.create(
        model="gpt-4o", messages=messages, tools=[WEATHER_TOOL], tool_choice="required",
        parallel_tool_calls=False,
    )  # fmt: skip
    assert fake.seen[-1].body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather now",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert fake.seen[-1].body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert msg.content == "Let me check."
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls] == [
        ("toolu_01A", "get_weather", {"city": "Paris"})
    ]
    messages.append(msg)  # the SDK's own message object, as users pass it back
    messages.append({"role": "tool", "tool_call_id": "toolu_01A", "content": "18°C, sunny"})
    final = await sdk.chat.completions.create(
        model="gpt-4o", messages=messages, tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    assert final.choices[0].message.content == "Hello from Claude."
    body = fake.seen[-1].body
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
                 "input": {"city": "Paris"}},
            ],
        },
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18°C, sunny"}]},
    ]  # fmt: skip


TWO_TOOLS = [("toolu_W", "get_weather", {"city": "Oslo"}), ("toolu_T", "get_time", {})]


async def test_pitfall_parallel_tool_calls_stream_with_their_own_indexes(
    anthropic_factory, gateway_factory
):
    """Portkey #1275: tool call ``index`` counts tool calls (0, 1), not Anthropic's content
    blocks (1, 2 here, after a text block); litellm #5063: a tool without arguments streams
    ``partial_json: ""`` and must still end up with parseable arguments ``{}``."""
    fake, gw = await start(anthropic_factory, gateway_factory, fake_kw={"tools": TWO_TOOLS})
    fake.script = ["tools"]
    stream = await gw.openai().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Oslo weather and time"}],
        tools=[WEATHER_TOOL, TIME_TOOL], stream=True,
    )  # fmt: skip
    assert fake.seen[-1].body["tools"][1] == {
        "name": "get_time", "input_schema": {"type": "object", "properties": {}}}  # fmt: skip
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += d.id or ""
                entry["name"] += (d.function.name or "") if d.function else ""
                entry["arguments"] += (d.function.arguments or "") if d.function else ""
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert calls[0] == {"id": "toolu_W", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert calls[1] == {"id": "toolu_T", "name": "get_time", "arguments": "{}"}
    assert json.loads(calls[1]["arguments"]) == {}


async def test_pitfall_consecutive_tool_results_merge_into_one_user_message(
    anthropic_factory, gateway_factory
):
    """Portkey #980: two ``role: tool`` messages (and a user message after them) must become
    ONE user message, tool results first; the fake refuses anything else, like Anthropic."""
    fake, gw = await start(anthropic_factory, gateway_factory, fake_kw={"tools": TWO_TOOLS})
    fake.script = ["tools"]
    sdk = gw.openai()
    messages: list[Any] = [{"role": "user", "content": "Oslo weather and time"}]
    first = await sdk.chat.completions.create(
        model="m", messages=messages, tools=[WEATHER_TOOL, TIME_TOOL]
    )
    calls = first.choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", '{"city":"Oslo"}'), ("get_time", "{}")]  # fmt: skip
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": "toolu_W", "content": "-3°C"})
    messages.append({"role": "tool", "tool_call_id": "toolu_T", "content": [
        {"type": "text", "text": "14:05"}]})  # fmt: skip
    messages.append({"role": "user", "content": "Thanks, and tomorrow?"})
    final = await sdk.chat.completions.create(
        model="m", messages=messages, tools=[WEATHER_TOOL, TIME_TOOL]
    )
    assert final.choices[0].message.content == "Hello from Claude."
    assert not fake.rejected
    assert fake.seen[-1].body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_W", "content": "-3°C"},
            {"type": "tool_result", "tool_use_id": "toolu_T",
             "content": [{"type": "text", "text": "14:05"}]},
            {"type": "text", "text": "Thanks, and tomorrow?"},
        ],
    }  # fmt: skip
    assert len(fake.seen[-1].body["messages"]) == 3


# ----------------------------------------------------------------------------- content parts
async def test_sdk_image_parts(anthropic_factory, gateway_factory):
    fake, gw = await start(anthropic_factory, gateway_factory)
    await gw.openai().chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in these?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url",
             "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
        ]}],
    )  # fmt: skip
    assert fake.seen[-1].body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]}]  # fmt: skip


async def test_pitfall_empty_text_blocks_are_left_out(anthropic_factory, gateway_factory):
    """Anthropic refuses empty text blocks: an empty part, or the ``content: ""`` clients send
    next to tool calls, are left out."""
    fake, gw = await start(anthropic_factory, gateway_factory)
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    resp = await gw.openai().chat.completions.create(
        model="m",
        messages=[
            {"role": "system", "content": ""},
            {"role": "user", "content": [{"type": "text", "text": ""},
                                         {"type": "text", "text": "Weather?"}]},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    )  # fmt: skip
    assert resp.choices[0].message.content == "Hello from Claude."
    assert not fake.rejected
    body = fake.seen[-1].body
    assert "system" not in body
    assert body["messages"][0] == {"role": "user", "content": "Weather?"}
    assert body["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}]}  # fmt: skip


async def test_pitfall_whitespace_only_stop_sequences_are_refused_naming_stop(
    anthropic_factory, gateway_factory
):
    """litellm #3286: Anthropic refuses whitespace-only stop sequences. Leaving them out would
    let the answer run past where the client wanted it to stop: a 400 naming ``stop`` (another
    channel that can take it would serve the request instead)."""
    fake, gw = await start(anthropic_factory, gateway_factory)
    for stop in (["\n", " ", "\n\nHuman:"], "\n"):
        with pytest.raises(openai.BadRequestError) as info:
            await gw.openai().chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stop=stop
            )
        assert info.value.body["param"] == "stop" and "whitespace" in info.value.body["message"]
    assert fake.seen == []


# ----------------------------------------------------------------------------- refusals, errors
@pytest.mark.parametrize(
    ("field", "extra"),
    [
        ("n", {"n": 2}),
        ("logprobs", {"logprobs": True}),
        ("response_format", {"response_format": {"type": "json_object"}}),
        ("frequency_penalty", {"frequency_penalty": 0.5}),
        ("messages[0].content[0].type", {"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
        ("made_up_field", {"made_up_field": 1}),
        ("messages[0].content[0].image_url.detail", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/c.jpg", "detail": "low"}}]}]}),
        ("messages[0].content[0].image_url.crop", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/c.jpg", "crop": [0, 0]}}]}]}),
        ("tools[0].function.examples", {"tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object"}, "examples": [{}]}}]}),
        ("stream_options.chunk_size", {"stream": True, "stream_options": {"chunk_size": 9}}),
        ("tools[0].foo", {"tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object"}}, "foo": 2}]}),
        ("messages[1].tool_calls[0].foo", {"messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "foo": 1,
                                                  "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"}]}),
        ("response_format.json_schema.description", {"response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "description": "A place",
                                                   "schema": {"type": "object"}}}}),
    ],
)  # fmt: skip
async def test_untranslatable_field_is_a_400_naming_it(
    anthropic_factory, gateway_factory, field, extra
):
    fake, gw = await start(anthropic_factory, gateway_factory)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **extra}
    if field == "made_up_field":  # the SDK sends unknown fields through extra_body
        body = {"model": "m", "messages": body["messages"], "extra_body": extra}
    with pytest.raises(openai.BadRequestError) as info:
        await gw.openai().chat.completions.create(**body)
    err = info.value.body
    assert err["param"] == field and err["code"] == "unsupported_parameter"
    assert field in err["message"] and "Anthropic" in err["message"]
    assert fake.seen == []  # nothing was sent


async def test_untranslatable_request_goes_to_a_channel_that_can_take_it(
    anthropic_factory, gateway_factory, upstream_factory
):
    up, url = await upstream_factory("oa")
    fake, gw = await start(anthropic_factory, gateway_factory,
                           extra=[channel("oa", url, price_per_token=1.0)])  # fmt: skip
    resp = await gw.openai().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], n=2
    )
    assert resp.model_extra["served_by"] == "oa" and fake.seen == []
    assert up.seen[-1].json["n"] == 2


async def test_anthropic_error_becomes_openai_shaped_with_its_message(
    anthropic_factory, gateway_factory
):
    fake, gw = await start(anthropic_factory, gateway_factory)
    fake.api_key = "another-key"  # the channel's key is refused: 401 from Anthropic
    with pytest.raises(openai.AuthenticationError) as info:
        await gw.openai().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body == {"message": "invalid x-api-key", "type": "authentication_error",
                               "code": "authentication_error", "param": None}  # fmt: skip
    fake.api_key = ANT_KEY
    fake.script = ["fail-400"]
    resp = await gw.client.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        headers=AUTH,
    )  # fmt: skip
    assert resp.status == 400
    assert await resp.json() == {"error": {"message": "fake anthropic says 400",
                                           "type": "invalid_request_error",
                                           "code": "invalid_request_error", "param": None}}  # fmt: skip


@pytest.mark.parametrize("status", [400, 503])
async def test_a_plain_text_error_is_translated_to_json_and_says_so(
    anthropic_factory, gateway_factory, status
):
    """The translated error is JSON: its Content-Type says application/json, not upstream's
    text/plain (as the last answer of a failover, 503, as a client error, 400)."""
    fake, gw = await start(anthropic_factory, gateway_factory)
    fake.script = [f"plain-{status}"] * 3
    resp = await gw.client.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        headers=AUTH,
    )  # fmt: skip
    assert resp.status == status
    assert resp.content_type == "application/json"
    assert (await resp.json())["error"]["message"] == "upstream proxy error"


# ----------------------------------------------------------------------------- failover
async def test_529_fails_over_to_openai_and_counts_against_the_breaker(
    anthropic_factory, gateway_factory, upstream_factory
):
    up, url = await upstream_factory("oa")
    fake, gw = await start(
        anthropic_factory, gateway_factory, extra=[channel("oa", url, price_per_token=1.0)],
        circuit_breaker={"fail_max": 1, "reset_timeout": 60},
    )  # fmt: skip
    fake.script = ["fail-529"]
    resp = await gw.client.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        headers=AUTH,
    )  # fmt: skip
    assert resp.status == 200 and resp.headers["x-smartproxy-channel"] == "oa"
    assert (await resp.json())["served_by"] == "oa"
    route = await gw.client.post("/api/route", json={"model": "m", "messages": []},
                                 headers=gw.admin_headers())  # fmt: skip
    excluded = {e["channel"]: e["reason"] for e in (await route.json())["excluded"]}
    assert excluded == {"claude": "circuit open"}  # 529 is a breaker failure, like 503
    assert await metric(gw, "smartproxy_upstream_requests_total", channel="claude",
                        status="529") == 1  # fmt: skip


async def test_a_failover_builds_the_next_channels_request_from_the_whole_body(
    anthropic_factory, gateway_factory, upstream_factory
):
    """The parsed body is let go once the first attempt is sent (``Exchange.rereadable``): the
    next channel's request, translated or with its members changed, comes from the body as the
    client sent it, each way round."""
    up, url = await upstream_factory("oa")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}]
    # Anthropic first (free), then the openai channel: its model mapped, the stream's usage asked.
    fake, gw = await start(
        anthropic_factory, gateway_factory,
        extra=[channel("oa", url, price_per_token=1.0, model_mapping={"gpt-4o": "gpt-4o-2024"})],
    )  # fmt: skip
    fake.script = ["fail-529"]
    resp = await gw.client.post("/v1/chat/completions", headers=AUTH, json={
        "model": "gpt-4o", "messages": messages, "stream": True, "temperature": 0.5})  # fmt: skip
    assert resp.status == 200 and resp.headers["x-smartproxy-channel"] == "oa"
    await resp.read()
    assert fake.seen[-1].body["model"] == "claude-sonnet-4-5"
    assert up.seen[-1].json == {"model": "gpt-4o-2024", "messages": messages, "stream": True,
                                "temperature": 0.5, "stream_options": {"include_usage": True}}
    # The openai channel first (free), then Anthropic: the translation reads the body again.
    fake, url_ant = await anthropic_factory()
    up.script = ["fail-500"]
    gw = await gateway_factory(base_config(channels=[
        channel("oa", url),
        ant_channel(url_ant, price_per_token=1.0, model_mapping={"gpt-4o": "claude-sonnet-4-5"}),
    ]))  # fmt: skip
    resp = await gw.client.post("/v1/chat/completions", headers=AUTH, json={
        "model": "gpt-4o", "messages": messages, "max_tokens": 50})  # fmt: skip
    assert resp.status == 200 and resp.headers["x-smartproxy-channel"] == "claude"
    assert fake.seen[-1].body == {"model": "claude-sonnet-4-5", "system": "Be brief.",
                                  "messages": [{"role": "user", "content": "x"}], "max_tokens": 50}


async def test_429_fails_over_and_cools_the_channel_down(
    anthropic_factory, gateway_factory, upstream_factory
):
    _, url = await upstream_factory("oa")
    fake, gw = await start(anthropic_factory, gateway_factory,
                           extra=[channel("oa", url, price_per_token=1.0)])  # fmt: skip
    fake.script = ["fail-429"]
    resp = await gw.openai().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}]
    )
    assert resp.model_extra["served_by"] == "oa"
    route = await gw.client.post("/api/route", json={"model": "m", "messages": []},
                                 headers=gw.admin_headers())  # fmt: skip
    excluded = {e["channel"]: e["reason"] for e in (await route.json())["excluded"]}
    assert excluded == {"claude": "cooling down after 429"}


async def test_every_attempt_529_returns_the_translated_error(anthropic_factory, gateway_factory):
    fake, gw = await start(anthropic_factory, gateway_factory)
    fake.default = "fail-529"
    resp = await gw.client.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        headers=AUTH,
    )  # fmt: skip
    assert resp.status == 529
    assert resp.headers["x-smartproxy-attempts"] == "claude:529, claude:529, claude:529"
    assert (await resp.json())["error"]["type"] == "overloaded_error"


async def test_stream_error_event_before_any_output_fails_over(
    anthropic_factory, gateway_factory, upstream_factory
):
    _, url = await upstream_factory("oa")
    fake, gw = await start(anthropic_factory, gateway_factory,
                           extra=[channel("oa", url, price_per_token=1.0)])  # fmt: skip
    fake.script = ["error-first"]
    stream = await gw.openai().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello from the fake upstream."


@pytest.mark.parametrize("what", ["cut-after-3", "error-after-3"])
async def test_stream_broken_after_its_first_event_ends_with_the_sse_error_event(
    anthropic_factory, gateway_factory, what
):
    fake, gw = await start(anthropic_factory, gateway_factory)
    fake.script = [what]
    resp = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers=AUTH,
    )
    raw = await resp.read()
    assert resp.status == 200
    events = [e for e in raw.split(b"\n\n") if e]
    assert json.loads(events[0].removeprefix(b"data: "))["choices"][0]["delta"]["role"]
    assert events[-1].startswith(b"event: error\ndata: ")
    error = json.loads(events[-1].split(b"data: ", 1)[1])["error"]
    assert error["code"] == "upstream_stream_error"
    if what.startswith("error"):
        assert "overloaded_error: Overloaded" in error["message"]
    assert b"[DONE]" not in raw
    fake.script = [what]
    stream = await gw.openai().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_sdk_streamed_tool_call_round_trip_with_an_image(anthropic_factory, gateway_factory):
    """The same round trip as above, streamed both ways, the question carrying an image."""
    fake, gw = await start(anthropic_factory, gateway_factory)
    sdk = gw.openai()
    image = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}
    messages: list[Any] = [{"role": "user", "content": [
        {"type": "text", "text": "Weather where this photo was taken?"}, image]}]  # fmt: skip
    fake.script = ["tools"]
    stream = await sdk.chat.completions.create(
        model="gpt-4o", messages=messages, tools=[WEATHER_TOOL], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    text, calls, usage = "", {}, None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": d.id, "name": d.function.name, "args": ""})
                entry["args"] += d.function.arguments or ""
    assert fake.seen[-1].body["messages"][0]["content"][1] == {
        "type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                    "data": "/9j/4AAQ"}}  # fmt: skip
    assert fake.seen[-1].body["stream"] is True
    assert text == "Let me check." and usage.prompt_tokens == 21
    assert calls == {0: {"id": "toolu_01A", "name": "get_weather", "args": '{"city": "Paris"}'}}
    messages.append({"role": "assistant", "content": text, "tool_calls": [
        {"id": "toolu_01A", "type": "function",
         "function": {"name": "get_weather", "arguments": calls[0]["args"]}}]})  # fmt: skip
    messages.append({"role": "tool", "tool_call_id": "toolu_01A", "content": "18°C"})
    stream = await sdk.chat.completions.create(
        model="gpt-4o", messages=messages, tools=[WEATHER_TOOL], stream=True
    )
    final = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert final == "Hello from Claude." and not fake.rejected
    assert fake.seen[-1].body["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
             "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18°C"}]},
    ]  # fmt: skip
    row = await usage_of(gw)
    assert (row["prompt_tokens"], row["completion_tokens"], row["requests"]) == (42, 18, 2)


async def test_json_schema_response_format_becomes_structured_outputs(
    anthropic_factory, gateway_factory
):
    fake, gw = await start(anthropic_factory, gateway_factory)
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}  # fmt: skip
    await gw.openai().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "place", "schema": schema, "strict": True}},
    )  # fmt: skip
    assert fake.seen[-1].body["output_config"] == {"format": {"type": "json_schema",
                                                              "schema": schema}}  # fmt: skip


async def test_a_tools_cache_control_goes_on_the_anthropic_tool(anthropic_factory, gateway_factory):
    fake, gw = await start(anthropic_factory, gateway_factory)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}},
            "cache_control": {"type": "ephemeral"}}  # fmt: skip
    await gw.openai().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], tools=[tool]
    )
    assert fake.seen[-1].body["tools"] == [
        {"name": "f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}
    ]


async def test_stream_cut_short_is_billed_for_what_it_sent(anthropic_factory, gateway_factory):
    """Anthropic's real output count comes at the end (message_delta): a stream cut after three
    text deltas counts the exact input tokens and at least a token per delta sent."""
    fake, gw = await start(anthropic_factory, gateway_factory)
    fake.script = ["cut-after-6"]  # message_start, block start, ping, 3 text deltas
    resp = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers=AUTH,
    )
    raw = await resp.read()
    assert b"Hello" in raw and b" Claude" in raw and raw.endswith(b"\n\n")
    assert b"event: error" in raw
    row = await usage_of(gw)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (21, 3)


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_reservation_holds_the_channels_default_max_tokens(
    aiohttp_server, gateway_factory, backend
):
    """Without max_tokens the anthropic channel sends its own default_max_tokens (4096, not
    usage.default_max_tokens = 1024), so that is what the request must hold while in flight."""
    import asyncio

    from aiohttp import web
    from fakeanthropic import FakeAnthropic
    from redisutil import delete_prefix, require_redis, unique_prefix

    storage: dict[str, Any] = {"backend": "memory"}
    if backend == "redis":
        storage = {"backend": "redis", "url": require_redis(), "key_prefix": unique_prefix()}

    fake, arrived, gate = FakeAnthropic(), asyncio.Event(), asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await gate.wait()
        return await fake.handle(request)

    app = web.Application()
    app.router.add_post("/v1/messages", held)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    gw = await gateway_factory(
        base_config(channels=[ant_channel(url, default_max_tokens=3000)], storage=storage)
    )
    body = {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]}
    task = asyncio.create_task(gw.client.post("/v1/chat/completions", json=body, headers=AUTH))
    await asyncio.wait_for(arrived.wait(), 5)
    held_now = (await usage_of(gw))["reserved_tokens"]
    gate.set()
    assert (await task).status == 200
    assert fake.seen[-1].body["max_tokens"] == 3000
    prompt = held_now - 3000
    assert 0 < prompt < 100, held_now  # the prompt estimate plus what the channel will send
    if backend == "redis":
        delete_prefix(storage["url"], storage["key_prefix"])
