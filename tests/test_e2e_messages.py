"""``POST /v1/messages`` end to end with the anthropic SDK (``messages.create`` / ``.stream``):
unchanged to anthropic channels (byte-identical streams), translated to OpenAI chat channels
(text and a tool_use round trip), usage charged; quotas shared by every front; each front's
error shape."""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import openai
import pytest
from aiohttp.web import Application
from conftest import DEV_KEY, base_config, channel
from fakeanthropic import sse
from fakechat import ARGS, FakeChat
from fakeresponses import FakeResponses

ANT_KEY = "sk-ant-test"
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "Weather of a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


@pytest.fixture
async def serve(fake_servers: Any) -> Callable[[Application], Awaitable[str]]:
    async def start(app: Application) -> str:
        return str((await fake_servers(app)).make_url("/v1"))

    return start


def ant(gw: Any, key: str = DEV_KEY, **kw: Any) -> anthropic.AsyncAnthropic:
    sdk = anthropic.AsyncAnthropic(base_url=gw.root, api_key=key, max_retries=0, **kw)
    gw.sdk_clients.append(sdk)
    return sdk


async def usage_of(gw: Any, name: str) -> dict[str, Any]:
    async with gw.client.get("/api/usage", headers=gw.admin_headers()) as r:
        data = await r.json()
    return next(c for c in data["channels"] if c["channel"] == name)


def ant_channel(url: str, **kw: Any) -> dict[str, Any]:
    return {"name": "claude", "type": "anthropic", "endpoint": url, "api_key": ANT_KEY, **kw}


# ----------------------------------------------------------------------------- anthropic channel
async def test_messages_to_an_anthropic_channel_unchanged_with_headers(
    anthropic_factory: Any, gateway_factory: Any
) -> None:
    fake, url = await anthropic_factory()
    gw = await gateway_factory(base_config(channels=[ant_channel(url, price_per_token=1e-6)]))
    sdk = ant(gw, default_headers={"anthropic-beta": "prompt-caching-2024-07-31",
                                   "anthropic-version": "2023-01-01"})  # fmt: skip
    msg = await sdk.messages.create(
        model="claude-x",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello from Claude."
    assert msg.usage.input_tokens == 21 and msg.usage.output_tokens == 9
    seen = fake.seen[0]
    assert seen.body == {"model": "claude-x", "max_tokens": 100, "system": "Be brief.",
                         "messages": [{"role": "user", "content": "Hello"}]}  # fmt: skip
    assert seen.headers["x-api-key"] == ANT_KEY  # the gateway key never goes up
    assert seen.headers["anthropic-version"] == "2023-01-01"  # the client's, not the channel's
    assert seen.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert "Authorization" not in seen.headers
    usage = await usage_of(gw, "claude")
    assert usage["total_tokens"] == 30 and usage["cost_usd"] == pytest.approx(30e-6)


async def test_messages_stream_to_an_anthropic_channel_is_byte_identical(
    anthropic_factory: Any, gateway_factory: Any
) -> None:
    fake, url = await anthropic_factory(default="tools")
    gw = await gateway_factory(base_config(channels=[ant_channel(url)]))
    body = {"model": "claude-x", "max_tokens": 64, "stream": True, "tools": TOOLS,
            "messages": [{"role": "user", "content": "Weather in Paris?"}]}  # fmt: skip
    async with gw.client.post("/v1/messages", json=body, headers={"x-api-key": DEV_KEY}) as r:
        assert r.status == 200 and r.headers["x-smartproxy-channel"] == "claude"
        relayed = await r.read()
    expected = b"".join(sse(e) for e in fake.events(fake.seen[0].body, fake.blocks("tools")))
    assert relayed == expected
    # The SDK's stream helper over the same relay.
    async with ant(gw).messages.stream(
        model="claude-x",
        max_tokens=64,
        tools=TOOLS,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    tool = final.content[1]
    assert tool.type == "tool_use" and tool.input == {"city": "Paris"}
    usage = await usage_of(gw, "claude")
    assert usage["requests"] == 2
    assert usage["prompt_tokens"] == 2 * 21 and usage["completion_tokens"] == 2 * 9


@pytest.mark.parametrize("what", ["error-after-3", "stop-after-3"])
async def test_messages_stream_ended_by_the_upstreams_error_event_gets_no_second_one(
    anthropic_factory: Any, gateway_factory: Any, what: str
) -> None:
    """An ``error`` event is the stream's last word: relayed as is, nothing added after it, and
    the attempt counts as failed (here: the breaker opens). A clean close without any end
    event still gets the gateway's own error event."""
    fake, url = await anthropic_factory()
    gw = await gateway_factory(base_config(
        channels=[ant_channel(url)], circuit_breaker={"fail_max": 1, "reset_timeout": 60}))  # fmt: skip
    fake.script = [what]
    body = {"model": "claude-x", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    async with gw.client.post("/v1/messages", json=body, headers={"x-api-key": DEV_KEY}) as r:
        assert r.status == 200
        relayed = await r.read()
    sent = b"".join(sse(e) for e in fake.events(fake.seen[0].body, fake.blocks("text"))[:3])
    assert relayed.startswith(sent)
    tail = [e for e in relayed[len(sent) :].split(b"\n\n") if e]
    assert len(tail) == 1 and tail[0].startswith(b"event: error\ndata: ")
    error = json.loads(tail[0].split(b"data: ", 1)[1])["error"]
    if what.startswith("error"):
        assert error == {"type": "overloaded_error", "message": "Overloaded"}  # the upstream's
        rows = await gw.gateway.store.query(None, None, "endpoint")
        assert rows[0]["requests"] == 1 and rows[0]["errors"] == 1  # settled as a broken stream
    else:
        assert error["message"] == "upstream closed the stream before its end event"
    health = await (await gw.client.get("/health")).json()
    assert [c["circuit"] for c in health["channels"]] == ["open"]


# ----------------------------------------------------------------------------- openai channel
async def test_messages_to_an_openai_channel_tool_round_trip(
    serve: Any, gateway_factory: Any
) -> None:
    fake = FakeChat()
    url = await serve(fake.app())
    gw = await gateway_factory(base_config(channels=[channel("gpt", url, price_per_token=1e-6)]))
    sdk = ant(gw)
    first = await sdk.messages.create(
        model="gpt-4o",
        max_tokens=200,
        tools=TOOLS,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["text", "tool_use"]
    call = first.content[1]
    assert call.type == "tool_use" and call.name == "get_weather"
    assert call.input == {"city": "Paris"} and call.id == "call_w1"
    assert first.usage.input_tokens == 40 and first.usage.output_tokens == 10
    up = fake.seen[0]
    assert up["model"] == "gpt-4o" and up["max_tokens"] == 200
    assert up["tools"][0]["function"]["name"] == "get_weather"
    # The round trip: the tool result goes back as a role: tool message.
    final = await sdk.messages.create(
        model="gpt-4o",
        max_tokens=200,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "18C"}]},
        ],
    )  # fmt: skip
    assert final.stop_reason == "end_turn"
    assert final.content[0].type == "text" and final.content[0].text == "It is 18C in Paris."
    sent = fake.seen[1]["messages"]
    assert sent[1]["tool_calls"][0] == {"id": "call_w1", "type": "function",
                                        "function": {"name": "get_weather", "arguments": ARGS}}  # fmt: skip
    assert sent[2] == {"role": "tool", "tool_call_id": "call_w1", "content": "18C"}
    usage = await usage_of(gw, "gpt")
    assert usage["total_tokens"] == 100 and usage["cost_usd"] == pytest.approx(100e-6)
    rows = await gw.gateway.store.query(None, None, "endpoint")
    assert rows == [{"endpoint": "/v1/messages", "requests": 2, "prompt_tokens": 80,
                     "completion_tokens": 20, "total_tokens": 100, "cost": pytest.approx(1e-4),
                     "errors": 0}]  # fmt: skip


async def test_messages_stream_to_an_openai_channel(serve: Any, gateway_factory: Any) -> None:
    fake = FakeChat()
    url = await serve(fake.app())
    gw = await gateway_factory(base_config(channels=[channel("gpt", url)]))
    sdk = ant(gw)
    async with sdk.messages.stream(
        model="gpt-4o",
        max_tokens=200,
        tools=TOOLS,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        events = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "text" and final.content[0].text == "Let me check."
    tool = final.content[1]
    assert tool.type == "tool_use" and tool.input == {"city": "Paris"} and tool.id == "call_w1"
    assert final.usage.output_tokens == 10 and final.usage.input_tokens == 40
    assert fake.seen[0]["stream_options"] == {"include_usage": True}
    # The round trip, streamed: the tool result goes back, the answer streams as text (the
    # SDK's text stream); Claude Code's ?beta=true stays with the gateway.
    async with sdk.messages.stream(
        model="gpt-4o",
        max_tokens=50,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [b.model_dump() for b in final.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "18C"}],
            },
        ],
        extra_query={"beta": "true"},
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        last = await stream.get_final_message()
    assert text == "It is 18C in Paris." and last.stop_reason == "end_turn"
    assert fake.seen[1]["messages"][2] == {"role": "tool", "tool_call_id": "call_w1",
                                           "content": "18C"}  # fmt: skip
    assert fake.queries == ["", ""]
    usage = await usage_of(gw, "gpt")
    assert usage["total_tokens"] == 100 and usage["requests"] == 2


async def test_messages_to_the_mock_channel(gateway_factory: Any) -> None:
    gw = await gateway_factory(base_config(channels=[{"name": "local", "type": "mock"}]))
    msg = await ant(gw).messages.create(
        model="mock-1", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert msg.content[0].type == "text" and msg.content[0].text.startswith("Hello from")
    assert msg.stop_reason == "end_turn"


# ----------------------------------------------------------------------------- across fronts
async def test_a_free_channels_daily_limit_is_shared_by_every_front(
    serve: Any, gateway_factory: Any
) -> None:
    free_up = FakeChat(
        responses=FakeResponses(
            name="free",
            usage={"input_tokens": 40, "output_tokens": 10, "total_tokens": 50},
        )
    )
    paid_up = FakeChat(responses=FakeResponses(name="paid"))
    free_url, paid_url = await serve(free_up.app()), await serve(paid_up.app())
    cfg = base_config(
        channels=[
            channel("paid", paid_url, price_per_token=1e-6),
            channel("free", free_url, price_per_token=0, daily_limit=100),
        ]
    )
    gw = await gateway_factory(cfg)
    chat = await gw.openai().chat.completions.create(
        model="m1", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.usage is not None and chat.usage.total_tokens == 50
    assert len(free_up.seen) == 1
    msg = await ant(gw).messages.create(
        model="m1", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert msg.usage.output_tokens == 10 and len(free_up.seen) == 2
    assert (await usage_of(gw, "free"))["day_quota_left"] == 0
    # The free day is spent by chat + messages: responses (and everything else) pay now.
    resp = await gw.openai().responses.create(model="m1", input="hi", max_output_tokens=5)
    assert resp.id.startswith("resp_paid_") and not free_up.responses.made  # type: ignore[union-attr]
    again = await ant(gw).messages.create(
        model="m1", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert again.content[0].type == "text" and len(paid_up.seen) == 1
    async with gw.client.post(
        "/api/route",
        json={"model": "m1", "input": "hi", "path": "/v1/responses"},
        headers=gw.admin_headers(),
    ) as r:
        route = await r.json()
    assert [c["channel"] for c in route["candidates"]] == ["paid"]
    assert route["excluded"][0]["channel"] == "free"
    assert "daily token quota used (100/100)" in route["excluded"][0]["reason"]


# ----------------------------------------------------------------------------- error shapes
BAD = [
    ("missing model", {"max_tokens": 5, "messages": [], "input": "x"}, DEV_KEY, 400),
    ("bad JSON", b'{"model": "m1", ', DEV_KEY, 400),
    ("unknown key", {"model": "m1", "max_tokens": 5, "messages": []}, "sk-nobody-0000", 401),
]


@pytest.mark.parametrize(("case", "body", "key", "status"), BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/messages"])
async def test_each_front_answers_bad_input_in_its_own_error_shape(
    gateway_factory: Any, path: str, case: str, body: Any, key: str, status: int
) -> None:
    gw = await gateway_factory(base_config(channels=[{"name": "local", "type": "mock"}]))
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "x-api-key": key}
    async with gw.client.post(path, data=data, headers=headers) as r:
        assert r.status == status
        assert r.headers["Content-Type"].startswith("application/json")
        answer = await r.json()
    if path == "/v1/messages":
        assert set(answer) == {"type", "error"} and answer["type"] == "error"
        expected = "invalid_request_error" if status == 400 else "authentication_error"
        assert answer["error"]["type"] == expected and answer["error"]["message"]
    else:
        assert set(answer) == {"error"}
        assert set(answer["error"]) == {"message", "type", "code", "param"}
        assert answer["error"]["code"] in ("missing_model", "invalid_json", "invalid_api_key")


async def test_the_sdks_read_the_error_shapes(gateway_factory: Any) -> None:
    gw = await gateway_factory(base_config(channels=[{"name": "local", "type": "mock"}]))
    with pytest.raises(anthropic.AuthenticationError) as ant_auth:
        await ant(gw, key="sk-nobody-0000").messages.create(
            model="m1", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert ant_auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as ant_400:
        await ant(gw).messages.create(
            model="m1", max_tokens=5, messages=[{"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                "data": "x"}}]}],
        )  # fmt: skip
    assert "messages[0].content[0]" in ant_400.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError) as oai_auth:
        await gw.openai(key="sk-nobody-0000").responses.create(model="m1", input="x")
    assert oai_auth.value.code == "invalid_api_key"


async def test_metrics_request_log_and_openapi_know_both_fronts(
    serve: Any, gateway_factory: Any
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    fake = FakeChat(responses=FakeResponses(name="gpt"))
    url = await serve(fake.app())
    gw = await gateway_factory(base_config(channels=[channel("gpt", url)]))
    await gw.openai().responses.create(model="m1", input="hi")
    await ant(gw).messages.create(
        model="m1", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    async with gw.client.get("/metrics") as r:
        text = await r.text()
    counts = {
        s.labels["endpoint"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "smartproxy_requests"
        for s in family.samples
        if s.name == "smartproxy_requests_total" and s.labels.get("status") == "200"
    }
    assert counts["/v1/responses"] == 1 and counts["/v1/messages"] == 1
    async with gw.client.get(
        "/api/usage", params={"group_by": "endpoint"}, headers=gw.admin_headers()
    ) as r:
        rows = {row["endpoint"]: row for row in (await r.json())["rows"]}
    assert rows["/v1/responses"]["total_tokens"] == 28
    assert rows["/v1/messages"]["total_tokens"] == 50
    async with gw.client.get("/swagger.json") as r:
        spec = await r.json()
    for path in ("/v1/responses", "/v1/messages", "/v1/messages/count_tokens"):
        operation = spec["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["example"]["model"]
        assert operation["responses"]["200"]["content"]["application/json"]["example"]
    assert "get" in spec["paths"]["/v1/responses/{response_id}"]
    assert "delete" in spec["paths"]["/v1/responses/{response_id}"]


async def test_bearer_auth_as_claude_code_sends_it(gateway_factory: Any) -> None:
    gw = await gateway_factory(base_config(channels=[{"name": "local", "type": "mock"}]))
    sdk = anthropic.AsyncAnthropic(base_url=gw.root, auth_token=DEV_KEY, max_retries=0)
    gw.sdk_clients.append(sdk)
    msg = await sdk.messages.create(
        model="mock-1", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert msg.content[0].type == "text"


async def test_count_tokens_goes_to_an_anthropic_channel_unmetered(
    serve: Any, gateway_factory: Any
) -> None:
    from aiohttp import web

    seen: list[dict[str, Any]] = []

    async def count(request: web.Request) -> web.Response:
        seen.append({"headers": dict(request.headers), "body": await request.json()})
        return web.json_response({"input_tokens": 14})

    app = web.Application()
    app.router.add_post("/v1/messages/count_tokens", count)
    url = (await serve(app)).removesuffix("/v1")
    gw = await gateway_factory(base_config(channels=[ant_channel(url, daily_limit=50)]))
    counted = await ant(gw).messages.count_tokens(
        model="claude-x", messages=[{"role": "user", "content": "Hello"}]
    )
    assert counted.input_tokens == 14
    assert seen[0]["headers"]["x-api-key"] == ANT_KEY
    assert seen[0]["body"]["messages"] == [{"role": "user", "content": "Hello"}]
    usage = await usage_of(gw, "claude")
    assert usage["requests"] == 1 and usage["total_tokens"] == 0


async def test_fronts_fail_over_before_the_first_byte(
    anthropic_factory: Any, serve: Any, gateway_factory: Any
) -> None:
    from aiohttp import web

    claude, claude_url = await anthropic_factory(script=["fail-529", "fail-529"])

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "down"}}, status=503)

    down = web.Application()
    down.router.add_post("/v1/responses", broken)
    down.router.add_post("/v1/chat/completions", broken)
    down_url = await serve(down)
    fake = FakeChat(responses=FakeResponses(name="ok"))
    ok_url = await serve(fake.app())
    cfg = base_config(
        channels=[
            ant_channel(claude_url, price_per_token=0),
            channel("down", down_url, price_per_token=0),
            channel("ok", ok_url, price_per_token=1e-6),
        ]
    )
    gw = await gateway_factory(cfg)
    # Messages: the anthropic channel is overloaded (529), "down" answers 503; "ok" answers,
    # translated.
    msg = await ant(gw).messages.create(
        model="m1", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert msg.content[0].type == "text" and len(claude.seen) == 1 and len(fake.seen) == 1
    # Responses: 503 from the free channel, then the paid one.
    stream = await gw.openai().responses.create(model="m1", input="hi", stream=True)
    last = [e async for e in stream][-1]
    assert last.type == "response.completed" and last.response.id.startswith("resp_ok_")


async def test_a_body_over_the_limit_is_an_anthropic_shaped_413_on_messages(
    gateway_factory: Any,
) -> None:
    cfg = base_config(channels=[{"name": "local", "type": "mock"}])
    cfg["server"]["max_body_mb"] = 1
    gw = await gateway_factory(cfg)
    big = json.dumps({"model": "m1", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "x" * 1_100_000}]})  # fmt: skip
    headers = {"x-api-key": DEV_KEY, "Content-Type": "application/json"}
    async with gw.client.post("/v1/messages", data=io.BytesIO(big.encode()), headers=headers) as r:
        assert r.status == 413
        answer = await r.json()
    assert answer["type"] == "error" and answer["error"]["type"] == "request_too_large"
    async with gw.client.post("/v1/responses", data=io.BytesIO(big.encode()), headers=headers) as r:
        assert r.status == 413
        assert "message" in (await r.json())["error"]


# ----------------------------------------------------------------------------- untranslatable
async def test_a_field_chat_cannot_say_is_an_anthropic_400_naming_it(
    serve: Any, gateway_factory: Any
) -> None:
    fake = FakeChat()
    url = await serve(fake.app())
    gw = await gateway_factory(base_config(channels=[channel("gpt", url)]))
    sdk = ant(gw)
    with pytest.raises(anthropic.BadRequestError) as info:
        await sdk.messages.create(
            model="gpt-4o", max_tokens=50, messages=[{"role": "user", "content": "hi"}],
            extra_body={"top_k": 5},
        )  # fmt: skip
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error" and "top_k" in body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as info:
        await sdk.messages.create(
            model="gpt-4o", max_tokens=50, messages=[{"role": "user", "content": [
                {"type": "text", "text": "hi", "citations": [{"type": "char_location"}]}]}],
        )  # fmt: skip
    assert "messages[0].content[0].citations" in str(info.value)
    assert fake.seen == []  # nothing went up half-translated
    # What Claude Code sends (caching hints, thinking, effort, structured output) is served.
    msg = await sdk.messages.create(
        model="gpt-4o", max_tokens=50, thinking={"type": "enabled", "budget_tokens": 1024},
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "hi"}], metadata={"user_id": "u-1"},
        output_config={"effort": "high", "format": {"type": "json_schema",
                                                    "schema": {"type": "object"}}},
        service_tier="auto",
    )  # fmt: skip
    assert msg.content[0].type == "text"
    assert fake.seen[0]["response_format"]["json_schema"]["schema"] == {"type": "object"}


async def test_a_field_chat_cannot_say_goes_to_a_native_anthropic_channel(
    serve: Any, anthropic_factory: Any, gateway_factory: Any
) -> None:
    chat = FakeChat()
    url = await serve(chat.app())
    fake, ant_url = await anthropic_factory()
    cfg = base_config(
        channels=[channel("gpt", url, price_per_token=1e-7),
                  ant_channel(ant_url, price_per_token=1e-5)]
    )  # fmt: skip
    gw = await gateway_factory(cfg)
    msg = await ant(gw).messages.create(
        model="m1", max_tokens=50, messages=[{"role": "user", "content": "hi"}],
        extra_body={"top_k": 5},
    )  # fmt: skip
    assert msg.content[0].type == "text"
    assert chat.seen == [] and fake.seen[0].body["top_k"] == 5  # the cheaper chat one skipped
    # The dry run says the same (it listed the chat channel first, audit finding).
    dry = await gw.client.post(
        "/api/route",
        json={"path": "/v1/messages", "model": "m1", "max_tokens": 5, "top_k": 5,
              "messages": [{"role": "user", "content": "hi"}]},
        headers=gw.admin_headers(),
    )  # fmt: skip
    route = await dry.json()
    assert [c["channel"] for c in route["candidates"]] == ["claude"]
    reasons = {e["channel"]: e["reason"] for e in route["excluded"]}
    assert "top_k" in reasons["gpt"]
