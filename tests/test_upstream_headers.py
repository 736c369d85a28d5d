"""The header policy (issue [6]): what goes up with a request and what comes back, through HTTP
with the openai SDK, plus the pure functions."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from conftest import base_config, channel
from multidict import CIMultiDict

from smartproxy.config import parse_channel
from smartproxy.upstream.headers import (
    client_request_headers,
    for_channel,
    response_header_allowed,
)

CHANNEL_KEY = "sk-chan-a-secret"


async def leaky_upstream(aiohttp_server: Any, seen: list[dict[str, str]]) -> str:
    """An upstream whose answers carry cookies, account and debug headers, and the key."""

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        await request.read()
        body = {
            "id": "c1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }  # fmt: skip
        headers = {
            "x-debug-key": CHANNEL_KEY,
            "X-Echo": f"Bearer {CHANNEL_KEY}",
            "Set-Cookie": "session=upstream-abc; Path=/",
            "openai-organization": "org-operator",
            "x-internal-route": "pool-7",
            "openai-processing-ms": "12",
            "x-ratelimit-remaining-requests": "99",
        }
        return web.json_response(body, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/v1"))


async def test_cookies_forwarding_and_debug_headers_stay_on_their_side(
    gateway_factory: Any, aiohttp_server: Any
) -> None:
    seen: list[dict[str, str]] = []
    url = await leaky_upstream(aiohttp_server, seen)
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    sdk = gw.openai(
        organization="org-client",
        project="proj-client",
        default_headers={
            "Cookie": "sid=client-session",
            "X-Forwarded-For": "10.1.2.3",
            "Forwarded": "for=10.1.2.3",
            "api-key": "client-azure-key",
            "X-Custom": "kept",
        },
    )
    raw = await sdk.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    up = {k.lower(): v for k, v in seen[-1].items()}
    for gone in ("cookie", "x-forwarded-for", "forwarded", "api-key",
                 "openai-organization", "openai-project"):  # fmt: skip
        assert gone not in up, gone
    assert up["x-custom"] == "kept" and up["authorization"] == f"Bearer {CHANNEL_KEY}"
    back = {k.lower(): v for k, v in raw.headers.items()}
    for gone in ("x-debug-key", "x-echo", "set-cookie", "openai-organization",
                 "x-internal-route"):  # fmt: skip
        assert gone not in back, gone
    assert CHANNEL_KEY not in str(raw.headers)
    assert back["openai-processing-ms"] == "12" and back["x-smartproxy-channel"] == "a"
    assert raw.parse().choices[0].message.content == "hi"


async def test_organization_headers_only_when_the_channel_says_so(
    gateway_factory: Any, aiohttp_server: Any
) -> None:
    seen: list[dict[str, str]] = []
    url = await leaky_upstream(aiohttp_server, seen)
    gw = await gateway_factory(
        base_config(channels=[channel("a", url, forward_openai_org=True)])
    )
    sdk = gw.openai(organization="org-client", project="proj-client")
    await sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    up = {k.lower(): v for k, v in seen[-1].items()}
    assert up["openai-organization"] == "org-client" and up["openai-project"] == "proj-client"


def test_connection_listed_headers_are_hop_by_hop() -> None:
    out = client_request_headers(
        CIMultiDict({"Connection": "close, X-Hop", "X-Hop": "1", "X-Keep": "2"}), "ua"
    )
    assert "X-Hop" not in out and out["X-Keep"] == "2" and out["User-Agent"] == "ua"


def test_for_channel_copies_only_when_it_removes_something() -> None:
    plain = parse_channel({"name": "c", "type": "mock"}, "c", [])
    assert plain is not None
    headers: CIMultiDict[str] = CIMultiDict({"X-A": "1"})
    assert for_channel(headers, plain) is headers
    with_org: CIMultiDict[str] = CIMultiDict({"X-A": "1", "OpenAI-Organization": "o"})
    assert "OpenAI-Organization" not in for_channel(with_org, plain)
    assert "OpenAI-Organization" in with_org  # the request's own headers are not changed


def test_response_headers_holding_a_secret_are_dropped_whatever_their_name() -> None:
    assert not response_header_allowed("X-Trace", "auth=sk-secret-123456", ["sk-secret-123456"])
    assert response_header_allowed("X-Trace", "abc", ["sk-secret-123456"])
    assert not response_header_allowed("X-Debug-Upstream", "x")
    assert response_header_allowed("Content-Type", "application/json")
