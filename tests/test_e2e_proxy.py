"""Issue [1] end to end: the openai SDK through the gateway to a fake upstream."""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any

import aiohttp
import openai
import pytest
import yarl
from conftest import DEV_KEY, base_config, channel


async def post_raw(gw, raw: bytes) -> tuple[int, bytes]:
    """POST these exact bytes as a chat completion with the dev key: (status, answer bytes)."""
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.url + "/chat/completions",
            data=raw,
            headers={"Authorization": f"Bearer {DEV_KEY}", "Content-Type": "application/json"},
        ) as r:
            return r.status, await r.read()


async def test_chat_non_streaming_identical(upstream_factory, gateway_factory):
    up, url = await upstream_factory("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    client = gw.openai()
    resp = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    completion = resp.parse()
    assert completion.choices[0].message.content == "Hello from the fake upstream."
    assert completion.usage.total_tokens == 17
    assert resp.headers["x-smartproxy-channel"] == "a"
    assert resp.headers["x-request-id"]
    # byte-identical body
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.url + "/chat/completions",
            headers={"Authorization": f"Bearer {DEV_KEY}"},
            json={"model": "gpt-4o-mini", "messages": []},
        ) as r:
            via = await r.read()
            assert r.headers["Content-Type"].startswith("application/json")
        async with s.post(
            url + "/chat/completions", json={"model": "gpt-4o-mini", "messages": []}
        ) as r:
            direct = await r.read()
    assert json.loads(via) == json.loads(direct) and via == direct


@pytest.mark.parametrize(
    "media_type", ["text/event-stream", "Text/Event-Stream; charset=utf-8", "TEXT/EVENT-STREAM"]
)
async def test_stream_chunks_arrive_before_upstream_finishes(
    upstream_factory, gateway_factory, media_type
):
    # Media types are case-insensitive: any spelling is relayed as it arrives, not buffered.
    up, url = await upstream_factory("a", default="hold")
    up.stream_type = media_type
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    client = gw.openai()
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    it = stream.__aiter__()
    first = await asyncio.wait_for(it.__anext__(), 5)
    # upstream is still holding the rest of the stream
    assert not up.release.is_set()
    assert first.choices[0].delta.content == "Hello"
    up.release.set()
    rest = [c async for c in it]
    text = first.choices[0].delta.content + "".join(
        c.choices[0].delta.content or "" for c in rest if c.choices
    )
    assert text == "Hello from the fake upstream."
    # the usage chunk the gateway asked for is not shown to a client that did not ask for it
    assert all(c.choices for c in rest)


@pytest.mark.parametrize("behaviour", ["hold", "coding"])
async def test_a_streams_head_goes_out_with_its_first_events(
    upstream_factory, gateway_factory, monkeypatch, behaviour
):
    """The answer's head and the first events are one write to the client (one segment, one
    system call), not the head alone first: in push mode, and when the stream is decoded as it
    comes."""
    from aiohttp.web_protocol import RequestHandler

    writes: list[bytes] = []

    class Recording:
        def __init__(self, transport: Any) -> None:
            self._t = transport

        def __getattr__(self, name: str) -> Any:
            return getattr(self._t, name)

        def write(self, data: bytes) -> None:
            writes.append(bytes(data))
            self._t.write(data)

        def writelines(self, chunks: Any) -> None:
            chunks = [bytes(c) for c in chunks]
            writes.append(b"".join(chunks))
            self._t.writelines(chunks)

    made = RequestHandler.connection_made
    monkeypatch.setattr(RequestHandler, "connection_made", lambda h, t: made(h, Recording(t)))
    up, url = await upstream_factory("a", default="hold")
    if behaviour == "coding":
        up.coding = "gzip"  # decoded as it comes: relayed without the push mode
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.post(
            gw.url + "/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                  "stream": True},
            headers={"Authorization": f"Bearer {DEV_KEY}"},
        ) as r:  # fmt: skip
            assert r.status == 200  # the head came while the upstream holds the rest
            assert b"Hello" in await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
            mine = [w for w in writes if b"x-smartproxy-channel" in w.lower()]
            assert len(mine) == 1 and mine[0].startswith(b"HTTP/1.1 200")
            assert b'"content": "Hello"' in mine[0]  # the first event, in the same write
            up.release.set()
            assert (await r.read()).endswith(b"data: [DONE]\n\n")


async def test_forwarding_body_query_headers_and_key(upstream_factory, gateway_factory):
    up, url = await upstream_factory("a")
    # forward_openai_org: the organization header goes up only when the channel says so ([6])
    gw = await gateway_factory(base_config(channels=[channel("a", url, forward_openai_org=True)]))
    raw = (
        b'{"model": "gpt-4o-mini",   "messages": [{"role":"user","content":"x"}], "extra_field": 1}'
    )
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.url + "/chat/completions?api-version=2024-01&x=1",
            data=raw,
            headers={
                "Authorization": f"Bearer {DEV_KEY}",
                "Content-Type": "application/json",
                "X-Custom-Trace": "abc123",
                "OpenAI-Organization": "org-1",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "must-not-pass",
                "Keep-Alive": "timeout=5",
                "Proxy-Authorization": "Basic xyz",
                "TE": "trailers",
            },
        ) as r:
            assert r.status == 200
    seen = up.seen[-1]
    assert seen.body == raw  # unchanged bytes: no mapping, not streaming
    assert seen.query == "api-version=2024-01&x=1"
    assert seen.headers["X-Custom-Trace"] == "abc123"
    assert seen.headers["OpenAI-Organization"] == "org-1"
    assert seen.headers["Authorization"] == "Bearer sk-chan-a-secret"
    assert DEV_KEY not in json.dumps(seen.headers)
    for hop in ("X-Hop", "Keep-Alive", "Proxy-Authorization", "TE"):
        assert hop not in seen.headers
    assert "keep-alive, X-Hop" not in seen.headers.get("Connection", "")


async def test_query_is_forwarded_byte_for_byte(upstream_factory, gateway_factory):
    """A literal ``%`` in a value (``%2541``, ``%25zz``) stays escaped: the gateway forwards the
    raw query, not a decoded and re-joined one (which sent ``f=%41``, read upstream as "A")."""
    up, url = await upstream_factory("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    query = "f=%2541&x=%25zz&y=a%26b%2Bc%3Dd&z=%E2%82%AC&q=1+2"
    async with aiohttp.ClientSession() as s:
        async with s.post(
            yarl.URL(gw.url + "/chat/completions?" + query, encoded=True),
            json={"model": "gpt-4o-mini", "messages": []},
            headers={"Authorization": f"Bearer {DEV_KEY}"},
        ) as r:
            assert r.status == 200
    assert up.seen[-1].query == query


async def test_x_api_key_and_model_mapping(upstream_factory, gateway_factory):
    up, url = await upstream_factory("a")
    gw = await gateway_factory(
        base_config(
            channels=[
                channel("a", url, models=["llama-3"], model_mapping={"gpt-4o-mini": "llama-3"})
            ]
        )
    )
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.url + "/chat/completions",
            headers={"x-api-key": DEV_KEY},
            json={"model": "gpt-4o-mini", "messages": []},
        ) as r:
            assert r.status == 200
    assert up.seen[-1].json["model"] == "llama-3"
    assert "x-api-key" not in {k.lower() for k in up.seen[-1].headers}


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_upstream_client_errors_unchanged(upstream_factory, gateway_factory, status):
    up, url = await upstream_factory("a", default=f"fail-{status}")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    client = gw.openai()
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert info.value.status_code == status
    assert info.value.body["message"] == f"a says {status}"
    assert len(up.seen) == 1  # not retried


async def test_upstream_5xx_unchanged_when_it_is_the_last_answer(upstream_factory, gateway_factory):
    up, url = await upstream_factory("a", default="fail-503")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.url + "/chat/completions",
            headers={"Authorization": f"Bearer {DEV_KEY}"},
            json={"model": "gpt-4o-mini", "messages": []},
        ) as r:
            assert r.status == 503
            body = await r.json()
            assert body["error"]["message"] == "a says 503"
            assert r.headers["x-smartproxy-attempts"] == "a:503, a:503, a:503"


@pytest.mark.parametrize(
    "raw,code",
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1,2]", "invalid_json"),
        (b'{"messages": []}', "missing_model"),
    ],
)
async def test_bad_request_body_is_openai_shaped_400(upstream_factory, gateway_factory, raw, code):
    up, url = await upstream_factory("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    status, answer = await post_raw(gw, raw)
    assert status == 400
    body = json.loads(answer)
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["code"] == code
    assert up.seen == []


async def test_completions_embeddings_models(upstream_factory, gateway_factory):
    up, url = await upstream_factory("a")
    gw = await gateway_factory(
        base_config(channels=[channel("a", url, models=["gpt-4o-mini", "emb"])])
    )
    client = gw.openai()
    emb = await client.embeddings.create(model="emb", input="hello")
    assert emb.data[0].embedding == [0.1, 0.2]
    assert up.seen[-1].path == "/v1/embeddings"
    comp = await client.completions.with_raw_response.create(model="gpt-4o-mini", prompt="x")
    assert comp.http_response.status_code == 200 and up.seen[-1].path == "/v1/completions"
    models = await client.models.list()
    assert sorted(m.id for m in models.data) == ["emb", "gpt-4o-mini"]


async def test_mock_channel_answers_locally(gateway_factory):
    gw = await gateway_factory(base_config(channels=[{"name": "local", "type": "mock"}]))
    client = gw.openai()
    out = await client.chat.completions.create(
        model="anything", messages=[{"role": "user", "content": "hi"}]
    )
    assert "mock" in out.choices[0].message.content
    chunks = [
        c
        async for c in await client.chat.completions.create(
            model="anything", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    ]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith(
        "Hello"
    )


async def test_client_disconnect_cancels_upstream(upstream_factory, gateway_factory):
    up, url = await upstream_factory("a", default="hold")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    async with aiohttp.ClientSession() as s:
        resp = await s.post(
            gw.url + "/chat/completions",
            headers={"Authorization": f"Bearer {DEV_KEY}"},
            json={"model": "gpt-4o-mini", "messages": [], "stream": True},
        )
        await resp.content.readany()
        resp.close()  # client goes away mid-stream
    for _ in range(200):
        if gw.gateway.metrics.in_flight_now == 0:
            break
        await asyncio.sleep(0.01)
    up.release.set()
    assert gw.gateway.metrics.in_flight_now == 0


async def test_body_bytes_reach_upstream_unchanged_but_for_model_and_include_usage(
    upstream_factory, gateway_factory
):
    """Contract §3: the body is forwarded as sent, apart from ``model`` (model_mapping) and,
    on a stream, ``stream_options.include_usage``: spacing, key order, number spellings and
    integers past 64 bits are the client's."""
    up, url = await upstream_factory("a")
    gw = await gateway_factory(
        base_config(
            channels=[
                channel("a", url, models=["llama-3"], model_mapping={"gpt-4o-mini": "llama-3"})
            ]
        )
    )
    sent = (
        b'{"seed" : 18446744073709551616,  "temperature": 1.0e0, "model": "gpt-4o-mini",\n'
        b' "messages": [{"role": "user", "content": "caf\xc3\xa9 \\u00e9"}], "stream": true}'
    )
    assert (await post_raw(gw, sent))[0] == 200
    assert up.seen[-1].body == (
        b'{"seed" : 18446744073709551616,  "temperature": 1.0e0, "model": "llama-3",\n'
        b' "messages": [{"role": "user", "content": "caf\xc3\xa9 \\u00e9"}], "stream": true'
        b',"stream_options":{"include_usage":true}}'
    )


async def test_an_event_stream_the_request_did_not_ask_for_is_relayed_as_it_comes(
    fake_servers, gateway_factory
):
    """Contract §3: text/event-stream is relayed chunk by chunk, never buffered whole, also
    when the upstream streams an answer to a request without ``stream: true``."""
    from aiohttp import web

    more = asyncio.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"n": 1}\n\n')
        await more.wait()
        await resp.write(b'data: {"n": 2, "usage": {"prompt_tokens": 1, "total_tokens": 1}}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", sse)
    server = await fake_servers(app)
    gw = await gateway_factory(base_config(channels=[channel("a", str(server.make_url("/v1")))]))
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.url + "/chat/completions",
            headers={"Authorization": f"Bearer {DEV_KEY}"},
            json={"model": "gpt-4o-mini", "messages": []},
        ) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
            assert first == b'data: {"n": 1}\n\n'  # while upstream still holds the rest
            more.set()
            rest = await r.read()
    assert rest == (
        b'data: {"n": 2, "usage": {"prompt_tokens": 1, "total_tokens": 1}}\n\ndata: [DONE]\n\n'
    )  # the usage event too: nobody asked upstream for it on the client's behalf


# -- answers compressed although the gateway asked for Accept-Encoding: identity ------------------
HI = [{"role": "user", "content": "hi"}]


async def usage_row(gw, name: str = "a") -> dict:
    await gw.gateway.drain_background()
    resp = await gw.client.get("/api/usage", headers=gw.admin_headers())
    return {row["channel"]: row for row in (await resp.json())["channels"]}[name]


async def post_undecoded(gw, body: dict) -> tuple[int, str | None, bytes]:
    """(status, Content-Encoding, the answer's bytes as they came: not decompressed)."""
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.post(
            gw.url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {DEV_KEY}"}
        ) as r:
            return r.status, r.headers.get("Content-Encoding"), await r.read()


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
async def test_a_compressed_answer_is_relayed_with_its_coding_and_its_usage_read(
    upstream_factory, gateway_factory, coding
):
    """An upstream that ignores ``Accept-Encoding: identity``: the bytes and their
    Content-Encoding go back unchanged (the SDK decodes them); usage is read from a copy."""
    up, url = await upstream_factory("a", coding=coding)
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    answer = await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert answer.choices[0].message.content == "Hello from the fake upstream."
    assert answer.usage.total_tokens == 17
    row = await usage_row(gw)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 6)  # upstream's, not estimated
    status, header, raw = await post_undecoded(gw, {"model": "gpt-4o-mini", "messages": HI})
    assert (status, header, raw) == (200, "deflate" if coding == "raw-deflate" else coding,
                                     up.sent_body)  # fmt: skip


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_stream_is_relayed_decoded_with_its_usage_chunk_stripped(
    upstream_factory, gateway_factory, coding
):
    up, url = await upstream_factory("a", coding=coding)
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    stream = await gw.openai().chat.completions.create(
        model="gpt-4o-mini", messages=HI, stream=True
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content for c in chunks) == "Hello from the fake upstream."
    assert all(c.usage is None for c in chunks)  # the usage chunk the gateway asked for: gone
    row = await usage_row(gw)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 6)
    body = {"model": "gpt-4o-mini", "messages": HI, "stream": True}
    status, header, raw = await post_undecoded(gw, body)
    assert (status, header) == (200, None)
    assert raw == b"".join(d for d in up.sent_stream if b'"choices": []' not in d)


async def test_an_answer_in_a_coding_the_gateway_cannot_read_is_relayed_as_it_came(
    upstream_factory, gateway_factory
):
    """``br`` (or zstd): relayed unchanged with its header, streams too (unread: the usage
    chunk stays), and usage estimated."""
    up, url = await upstream_factory("a", coding="br")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    body = {"model": "gpt-4o-mini", "messages": HI}
    estimate = (
        await (await gw.client.post("/api/route", json=body, headers=gw.admin_headers())).json()
    )["prompt_tokens_estimate"]
    assert await post_undecoded(gw, body) == (200, "br", up.sent_body)
    status, header, raw = await post_undecoded(gw, {**body, "stream": True})
    assert (status, header) == (200, "br")
    assert zlib.decompress(raw, 31) == b"".join(up.sent_stream)  # the fake's br is gzip
    row = await usage_row(gw)
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (
        2, 2 * estimate, 0)  # fmt: skip


async def test_a_compressed_error_answer_is_returned_as_it_came(upstream_factory, gateway_factory):
    up, url = await upstream_factory("a", coding="gzip", default="fail-503")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    status, header, raw = await post_undecoded(gw, {"model": "gpt-4o-mini", "messages": HI})
    assert (status, header, raw) == (503, "gzip", up.sent_body)
    with pytest.raises(openai.APIStatusError) as info:  # which the SDK reads
        await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert info.value.body["message"] == "a says 503"


async def test_a_compressed_stream_cut_short_never_ends_cleanly(upstream_factory, gateway_factory):
    """Decoded (gzip): the SSE error event ends it. Unread (br): an event would corrupt the
    encoded bytes, so the connection is closed and the client sees a broken body."""
    body = {"model": "cut-3", "messages": HI, "stream": True}
    up, url = await upstream_factory("a", coding="gzip")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    status, header, raw = await post_undecoded(gw, body)
    assert (status, header) == (200, None)
    assert raw.startswith(b"".join(up.sent_stream)) and b"event: error" in raw
    up, url = await upstream_factory("b", coding="br")
    gw = await gateway_factory(base_config(channels=[channel("b", url)]))
    with pytest.raises(aiohttp.ClientPayloadError):
        await post_undecoded(gw, body)


CHUNK = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'


async def ending_upstream(tail: bytes) -> Any:
    """An upstream whose stream is one whole event, then ``tail``, then a clean close."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(CHUNK)
        await resp.write(tail)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    server = TestServer(app)
    await server.start_server()
    return server


@pytest.mark.parametrize(
    ("tail", "ends"),
    [
        (b'data: {"id":"c1","object":"chat.comp', b"event: error"),  # cut mid-event
        (b"data: [DONE]\n", b"data: [DONE]\n\n"),  # the end, without its blank line
    ],
)
async def test_a_stream_ending_mid_event_ends_cleanly_for_sse_clients(gateway_factory, tail, ends):
    """A piece cut off mid-event is left out before the error event (it ran into it: the SDK
    raised JSONDecodeError instead of APIError); a last event missing its blank line gets it
    (audit finding)."""
    server = await ending_upstream(tail)
    try:
        gw = await gateway_factory(
            base_config(channels=[channel("a", str(server.make_url("/v1")))])
        )
        raw = json.dumps({"model": "m", "stream": True, "messages": []}).encode()
        status, body = await post_raw(gw, raw)
        assert status == 200 and body.startswith(CHUNK)
        assert body[len(CHUNK):].startswith(ends)
        assert b"chat.comp\n" not in body and b"chat.compevent" not in body
        stream = await gw.openai().chat.completions.create(model="m", messages=[], stream=True)
        if ends == b"event: error":
            with pytest.raises(openai.APIError):
                _ = [c async for c in stream]
        else:
            assert [c.choices[0].delta.content async for c in stream] == ["a"]
    finally:
        await server.close()


async def test_an_http_1_0_stream_ends_with_the_connection(upstream_factory, gateway_factory):
    """HTTP/1.0 has no chunked encoding: a stream must end by closing the connection, even when
    the client asked for keep-alive (it stayed open after [DONE], audit finding)."""
    up, url = await upstream_factory("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": []}).encode()
    reader, writer = await asyncio.open_connection(gw.client.host, gw.client.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
        b"Authorization: Bearer " + DEV_KEY.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    answer = await asyncio.wait_for(reader.read(), 5)  # EOF: the connection was closed
    writer.close()
    assert answer.startswith(b"HTTP/1.") and b"data: [DONE]" in answer
