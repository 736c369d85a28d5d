"""``POST /v1/responses`` end to end with the openai SDK's ``client.responses`` against fake
Responses servers: unchanged bodies, streams relayed event by event, usage charged, stickiness of
``previous_response_id``, stored responses at the channel that made them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import DEV_KEY, Clock, base_config, channel
from fakeresponses import FakeResponses

Start = Callable[..., Awaitable[tuple[FakeResponses, str]]]


@pytest.fixture
async def responses_upstream(fake_servers: Any) -> Start:
    async def make(name: str = "resp-up", **kwargs: Any) -> tuple[FakeResponses, str]:
        fake = FakeResponses(name=name, **kwargs)
        server = await fake_servers(fake.app())
        return fake, str(server.make_url("/v1"))

    return make


async def usage_of(gw: Any, name: str) -> dict[str, Any]:
    async with gw.client.get("/api/usage", headers=gw.admin_headers()) as r:
        assert r.status == 200
        data = await r.json()
    return next(c for c in data["channels"] if c["channel"] == name)


async def test_responses_create_returns_the_upstream_answer_and_charges_usage(
    responses_upstream: Start, gateway_factory: Any
) -> None:
    fake, url = await responses_upstream("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url, price_per_token=1e-6)]))
    sdk = gw.openai()
    result = await sdk.responses.create(
        model="gpt-4.1-mini", input="Say hello", max_output_tokens=50
    )
    upstream = next(iter(fake.made.values()))
    assert result.id == upstream["id"]
    assert result.output_text == "Hello there!"
    assert result.usage is not None and result.usage.input_tokens == 21
    assert result.usage.input_tokens_details.cached_tokens == 5
    assert result.model_dump(exclude_unset=True)["output"] == upstream["output"]
    # Sent unchanged: the exact bytes the SDK sent, the gateway's key replaced by the channel's.
    seen = fake.seen[0]
    assert json.loads(seen["raw"]) == {"model": "gpt-4.1-mini", "input": "Say hello",
                                       "max_output_tokens": 50}  # fmt: skip
    assert seen["headers"]["Authorization"] == "Bearer sk-chan-a-secret"
    usage = await usage_of(gw, "a")
    assert usage["total_tokens"] == 28
    assert usage["cost_usd"] == pytest.approx(28e-6)


async def test_responses_body_bytes_pass_unchanged(
    responses_upstream: Start, gateway_factory: Any
) -> None:
    fake, url = await responses_upstream("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    raw = b'{"model":"m1", "input":[{"role":"user","content":"hi"}], "stream":true, "store":true}'
    async with gw.client.post(
        "/v1/responses", data=raw, headers={"Authorization": f"Bearer {DEV_KEY}"}
    ) as r:
        assert r.status == 200
        assert r.headers["x-smartproxy-channel"] == "a"
        await r.read()
    assert fake.seen[0]["raw"] == raw  # no stream_options added, not re-encoded


async def test_responses_stream_relays_every_event_and_charges_completed_usage(
    responses_upstream: Start, gateway_factory: Any
) -> None:
    fake, url = await responses_upstream("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url, price_per_token=1e-6)]))
    sdk = gw.openai()
    stream = await sdk.responses.create(model="m1", input="Say hello", stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events][0] == "response.created"
    assert events[-1].type == "response.completed"
    done = events[-1].response
    assert done.id == next(iter(fake.made))
    assert done.output_text == "Hello there!"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Hello there!"
    # Byte for byte what the upstream sent.
    async with gw.client.post(
        "/v1/responses",
        json={"model": "m1", "input": "again", "stream": True},
        headers={"Authorization": f"Bearer {DEV_KEY}"},
    ) as r:
        relayed = await r.read()
    assert relayed == fake.sent_stream
    usage = await usage_of(gw, "a")
    assert usage["total_tokens"] == 56
    assert usage["requests"] == 2


async def test_a_stream_cut_early_ends_with_an_error_event_and_is_billed_as_estimated(
    responses_upstream: Start, gateway_factory: Any
) -> None:
    fake, url = await responses_upstream("a", cut_after=6)
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    async with gw.client.post(
        "/v1/responses",
        json={"model": "m1", "input": "hi", "stream": True},
        headers={"Authorization": f"Bearer {DEV_KEY}"},
    ) as r:
        body = await r.read()
    assert body.startswith(fake.sent_stream)
    tail = body[len(fake.sent_stream) :]
    assert tail.startswith(b"event: error\ndata: ")
    error = json.loads(tail.split(b"data: ", 1)[1])
    assert error["type"] == "error" and "upstream" in error["message"]
    usage = await usage_of(gw, "a")
    # Prompt estimated from the request, one token per delta relayed (2 of them).
    assert usage["requests"] == 1
    assert usage["completion_tokens"] == 2
    rows = await gw.gateway.store.query(None, None, "endpoint")
    assert rows[0]["endpoint"] == "/v1/responses" and rows[0]["errors"] == 1


async def test_a_stream_ended_by_the_upstreams_error_event_gets_no_second_one(
    responses_upstream: Start, gateway_factory: Any
) -> None:
    fake, url = await responses_upstream("a", error_after=6)
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    async with gw.client.post(
        "/v1/responses",
        json={"model": "m1", "input": "hi", "stream": True},
        headers={"Authorization": f"Bearer {DEV_KEY}"},
    ) as r:
        body = await r.read()
    assert body == fake.sent_stream  # ends with the upstream's error event, nothing added
    assert body.endswith(b'"sequence_number": 6}\n\n') and body.count(b"event: error") == 1
    rows = await gw.gateway.store.query(None, None, "endpoint")
    assert rows[0]["requests"] == 1 and rows[0]["errors"] == 1  # still a failed attempt


async def test_previous_response_id_sticks_to_its_channel_when_another_is_cheaper(
    responses_upstream: Start, gateway_factory: Any
) -> None:
    a, url_a = await responses_upstream("a")
    b, url_b = await responses_upstream("b")
    clock = Clock()  # 12:00 UTC; b is cheaper from 13:00
    cfg = base_config(
        channels=[
            channel("a", url_a, price_per_token=2e-6),
            channel("b", url_b, price_per_token=5e-6, discount_time=["13:00-14:00"],
                    discount_price=1e-6),
        ]
    )  # fmt: skip
    gw = await gateway_factory(cfg, clock=clock)
    sdk = gw.openai()
    first = await sdk.responses.create(model="m1", input="Remember 42")
    assert first.id in a.made
    clock.advance(hours=1)
    fresh = await sdk.responses.create(model="m1", input="new conversation")
    assert fresh.id in b.made  # b is the cheaper channel now
    follow = await sdk.responses.create(
        model="m1", input="What number?", previous_response_id=first.id
    )
    assert follow.id in a.made
    assert json.loads(a.seen[-1]["raw"])["previous_response_id"] == first.id
    # The dry run shows the same decision for that key (audit finding: it ignored the id).
    dry = await gw.client.post(
        "/api/route?api_key_name=dev",
        json={"path": "/v1/responses", "model": "m1", "input": "x",
              "previous_response_id": first.id},
        headers=gw.admin_headers(),
    )
    assert [c["channel"] for c in (await dry.json())["candidates"]] == ["a"]
    # Streams too, chained on the follow-up.
    stream = await sdk.responses.create(
        model="m1", input="And again?", previous_response_id=follow.id, stream=True
    )
    last = [e async for e in stream][-1]
    assert last.response.id in a.made
    # A streamed answer's id (from response.created) is remembered too.
    chained = await sdk.responses.create(
        model="m1", input="Last one", previous_response_id=last.response.id
    )
    assert chained.id in a.made
    # Stored responses are read and deleted at the channel that made them, unmetered.
    got = await sdk.responses.retrieve(first.id)
    assert got.id == first.id and a.seen[-1]["method"] == "GET"
    await sdk.responses.delete(fresh.id)
    assert b.seen[-1]["method"] == "DELETE" and fresh.id not in b.made
    usage_a = await usage_of(gw, "a")
    assert usage_a["total_tokens"] == 4 * 28


async def test_stickiness_holds_across_a_restart_with_sqlite(
    responses_upstream: Start, gateway_factory: Any, tmp_path: Any
) -> None:
    a, url_a = await responses_upstream("a")
    b, url_b = await responses_upstream("b")
    storage = {"backend": "sqlite", "path": str(tmp_path / "usage.db")}
    first_cfg = base_config(channels=[channel("a", url_a)], storage=storage)
    gw1 = await gateway_factory(first_cfg)
    first = await gw1.openai().responses.create(model="m1", input="hi")
    await gw1.client.close()  # flushes the store
    cfg = base_config(
        channels=[channel("b", url_b), channel("a", url_a, price_per_token=1e-6)],
        storage=storage,
    )
    gw2 = await gateway_factory(cfg)
    follow = await gw2.openai().responses.create(
        model="m1", input="more", previous_response_id=first.id
    )
    assert follow.id in a.made and not b.made


async def test_unknown_stored_response_is_404_and_unknown_previous_id_routes_by_price(
    responses_upstream: Start, gateway_factory: Any
) -> None:
    fake, url = await responses_upstream("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    headers = {"Authorization": f"Bearer {DEV_KEY}"}
    async with gw.client.get("/v1/responses/resp_nope", headers=headers) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "response_not_found"
    async with gw.client.post(
        "/v1/responses",
        json={"model": "m1", "input": "x", "previous_response_id": "resp_elsewhere"},
        headers=headers,
    ) as r:
        assert r.status == 404  # the upstream's own answer: it never made that response
        assert (await r.json())["error"]["code"] == "previous_response_not_found"


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
async def test_another_keys_stored_response_is_404_and_its_previous_id_is_unknown(
    responses_upstream: Start, gateway_factory: Any, tmp_path: Any, backend: str
) -> None:
    storage: dict[str, Any] = {"backend": backend, "path": str(tmp_path / "usage.db")}
    if backend == "redis":  # GET/DELETE hold 0-token reservations (a Lua -0 once broke them)
        from redisutil import delete_prefix, require_redis, unique_prefix

        storage.update(url=require_redis(), key_prefix=unique_prefix(), timeout=3)
    try:
        await _another_keys_response(responses_upstream, gateway_factory, storage)
    finally:
        if backend == "redis":
            delete_prefix(storage["url"], storage["key_prefix"])


async def _another_keys_response(
    responses_upstream: Start, gateway_factory: Any, storage: dict[str, Any]
) -> None:
    a, url_a = await responses_upstream("a")
    b, url_b = await responses_upstream("b")
    clock = Clock()  # 12:00 UTC; b is cheaper from 13:00
    other_key = "sk-test-other-key-0002"
    cfg = base_config(
        channels=[
            channel("a", url_a, price_per_token=2e-6),
            channel("b", url_b, price_per_token=5e-6, discount_time=["13:00-14:00"],
                    discount_price=1e-6),
        ],
        storage=storage,
    )  # fmt: skip
    cfg["security"]["auth"]["api_keys"]["other"] = other_key
    gw = await gateway_factory(cfg, clock=clock)
    first = await gw.openai().responses.create(model="m1", input="Remember 42")
    assert first.id in a.made
    clock.advance(hours=1)
    seen_by_a = len(a.seen)
    other = gw.openai(other_key)
    headers = {"Authorization": f"Bearer {other_key}"}
    for method in ("GET", "DELETE"):
        async with gw.client.request(method, f"/v1/responses/{first.id}", headers=headers) as r:
            assert r.status == 404
            error = (await r.json())["error"]
            assert error["code"] == "response_not_found" and error["param"] == "response_id"
    with pytest.raises(openai.NotFoundError):
        await other.responses.retrieve(first.id)
    assert len(a.seen) == seen_by_a and first.id in a.made  # never asked, never deleted
    # Its previous_response_id is routed as unknown: by price (b now), b answers for itself.
    async with gw.client.post(
        "/v1/responses",
        json={"model": "m1", "input": "x", "previous_response_id": first.id},
        headers=headers,
    ) as r:
        assert r.status == 404 and r.headers["x-smartproxy-channel"] == "b"
    assert len(a.seen) == seen_by_a
    # The owner still reads it and continues it at a.
    got = await gw.openai().responses.retrieve(first.id)
    assert got.id == first.id
    follow = await gw.openai().responses.create(
        model="m1", input="more", previous_response_id=first.id
    )
    assert follow.id in a.made


async def test_the_mock_channel_answers_responses_like_the_api(gateway_factory: Any) -> None:
    """The default config's mock serves /v1/responses too, so an agent's first request works
    (it was 400 "mock channels do not serve /v1/responses", audit finding): the SDK reads the
    answer and the stream, usage is counted, and the mock stores nothing."""
    gw = await gateway_factory(base_config(channels=[{"name": "local", "type": "mock"}]))
    sdk = gw.openai()
    answer = await sdk.responses.create(model="any-model", input="hi", max_output_tokens=4)
    assert answer.output_text == "Hello from SmartProxy's local"
    assert answer.usage is not None and answer.usage.output_tokens == 4
    stream = await sdk.responses.create(model="any-model", input="hi", stream=True)
    events = [e async for e in stream]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text and text.startswith("Hello from")
    usage = await usage_of(gw, "local")
    assert usage["requests"] == 2
    assert usage["total_tokens"] == answer.usage.total_tokens + events[-1].response.usage.total_tokens
    # A follow-up on its id goes to it; stored responses are not kept by a mock.
    follow = await sdk.responses.create(model="m", input="more", previous_response_id=answer.id)
    assert follow.previous_response_id == answer.id
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(answer.id)


async def test_responses_with_curl_like_client_and_x_api_key(
    responses_upstream: Start, gateway_factory: Any
) -> None:
    fake, url = await responses_upstream("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{gw.url}/responses",
            json={"model": "m1", "input": "x"},
            headers={"x-api-key": DEV_KEY},
        ) as r:
            assert r.status == 200
            assert (await r.json())["object"] == "response"
    assert "x-api-key" not in {k.lower() for k in fake.seen[0]["headers"]}


@pytest.mark.parametrize(
    ("api_version", "path", "query"),
    [(None, "/openai/v1/responses", ""), ("2025-04-01-preview", "/openai/responses",
                                           "api-version=2025-04-01-preview")],
)  # fmt: skip
async def test_responses_to_azure_channels_use_azures_url_shapes(
    gateway_factory: Any, api_version: str | None, path: str, query: str
) -> None:
    fake = FakeResponses(name="az")
    seen: list[tuple[str, str]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, request.query_string))
        return await fake.create(request)

    app = web.Application()
    app.router.add_post("/openai/v1/responses", handle)
    app.router.add_post("/openai/responses", handle)
    server = TestServer(app)
    await server.start_server()
    try:
        az = {"name": "az", "type": "azure", "endpoint": str(server.make_url("")).rstrip("/"),
              "api_key": "az-key-1", "model_mapping": {"gpt-4.1": "my-deployment"}}  # fmt: skip
        if api_version:
            az["api_version"] = api_version
        gw = await gateway_factory(base_config(channels=[az]))
        result = await gw.openai().responses.create(model="gpt-4.1", input="hi")
        assert result.id in fake.made
        assert seen == [(path, query)]
        assert fake.seen[0]["headers"]["api-key"] == "az-key-1"
        assert "Authorization" not in fake.seen[0]["headers"]
        assert json.loads(fake.seen[0]["raw"])["model"] == "my-deployment"
    finally:
        await server.close()


@pytest.mark.parametrize("field", ["path", "endpoint"])
async def test_route_dry_run_names_the_front(gateway_factory: Any, field: str) -> None:
    ant = {"name": "claude", "type": "anthropic", "endpoint": "http://127.0.0.1:9", "api_key": "k"}
    cfg = base_config(
        channels=[{"name": "local", "type": "mock"}, ant, channel("gpt", "http://127.0.0.1:9")]
    )
    gw = await gateway_factory(cfg)
    body = {"model": "m1", "input": "hi", "max_output_tokens": 7, field: "/v1/responses"}
    async with gw.client.post("/api/route", json=body, headers=gw.admin_headers()) as r:
        assert r.status == 200
        route = await r.json()
    assert [c["channel"] for c in route["candidates"]] == ["local", "gpt"]  # free first
    reasons = {e["channel"]: e["reason"] for e in route["excluded"]}
    assert reasons == {"claude": "anthropic channels do not serve /v1/responses"}
    assert route["reserve_tokens"] == route["prompt_tokens_estimate"] + 7
    body = {"model": "m1", "max_tokens": 5, "messages": [], field: "/v1/messages"}
    async with gw.client.post("/api/route", json=body, headers=gw.admin_headers()) as r:
        route = await r.json()
    assert {c["channel"] for c in route["candidates"]} == {"local", "claude", "gpt"}
