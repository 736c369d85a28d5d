"""Issue [9]: ``azure`` channels. The fake Azure OpenAI resource serves the two URL shapes of the
public reference (learn.microsoft.com/azure/ai-services/openai/reference): the deployments form
``/openai/deployments/{deployment}/...?api-version=...`` and the v1 form ``/openai/v1/...``,
both authenticated with the ``api-key`` header, and answers like the OpenAI fake."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from conftest import DEV_KEY, base_config
from fakeupstream import FakeUpstream

AZ_KEY = "az-key-0123456789"


class FakeAzure(FakeUpstream):
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.check])
        app.router.add_post("/openai/deployments/{deployment}/{tail:.*}", self.handle)
        app.router.add_post("/openai/v1/{tail:.*}", self.handle)
        return app

    @web.middleware
    async def check(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("api-key") != AZ_KEY:
            return web.json_response({"error": {"code": "401", "message": "bad key"}}, status=401)
        if "/deployments/" in request.path and "api-version" not in request.query:
            return web.json_response({"error": {"code": "404", "message": "no api-version"}},
                                     status=404)  # fmt: skip
        resp: web.StreamResponse = await handler(request)
        return resp


@pytest.fixture
async def azure_factory(fake_servers: Any) -> Callable[[], Awaitable[tuple[FakeAzure, str]]]:
    async def make() -> tuple[FakeAzure, str]:
        fake = FakeAzure(name="azure")
        server = await fake_servers(fake.app())
        return fake, str(server.make_url("")).rstrip("/")

    return make


def az(url: str, **kw: Any) -> dict[str, Any]:
    return {"name": "az", "type": "azure", "endpoint": url, "api_key": AZ_KEY,
            "model_mapping": {"gpt-4o-mini": "my-4o-mini-deployment"}, **kw}  # fmt: skip


def no_client_key(headers: dict[str, str]) -> bool:
    lower = {k.lower(): v for k, v in headers.items()}
    return "authorization" not in lower and not any(DEV_KEY in v for v in lower.values())


@pytest.mark.parametrize(
    ("extra", "endpoint_tail", "path", "query"),
    [
        ({"api_version": "2024-10-21"}, "",
         "/openai/deployments/my-4o-mini-deployment/chat/completions", "api-version=2024-10-21"),
        ({}, "", "/openai/v1/chat/completions", ""),
        ({}, "/openai/v1", "/openai/v1/chat/completions", ""),
        ({"api_version": "2025-01-01-preview"}, "/openai/",
         "/openai/deployments/my-4o-mini-deployment/chat/completions",
         "api-version=2025-01-01-preview"),
    ],
)  # fmt: skip
async def test_both_url_shapes_api_key_and_deployment(
    azure_factory, gateway_factory, extra, endpoint_tail, path, query
):
    fake, url = await azure_factory()
    gw = await gateway_factory(base_config(channels=[az(url + endpoint_tail, **extra)]))
    resp = await gw.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert resp.choices[0].message.content == "Hello from the fake upstream."
    assert resp.model_extra["served_by"] == "azure"  # the answer passes through unchanged
    seen = fake.seen[-1]
    assert (seen.path, seen.query) == (path, query)
    assert seen.headers["api-key"] == AZ_KEY and no_client_key(seen.headers)
    assert seen.json == {"model": "my-4o-mini-deployment",
                         "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip


async def test_embeddings_completions_and_streams(azure_factory, gateway_factory):
    fake, url = await azure_factory()
    gw = await gateway_factory(base_config(channels=[az(url, api_version="2024-10-21")]))
    sdk = gw.openai()
    emb = await sdk.embeddings.create(model="text-embedding-3-small", input="hello")
    assert emb.data[0].embedding == [0.1, 0.2]
    assert fake.seen[-1].path == "/openai/deployments/text-embedding-3-small/embeddings"
    await sdk.completions.create(model="gpt-4o-mini", prompt="Say hi")
    assert fake.seen[-1].path == "/openai/deployments/my-4o-mini-deployment/completions"
    stream = await sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello from the fake upstream."
    assert all(no_client_key(s.headers) and s.headers["api-key"] == AZ_KEY for s in fake.seen)
    await gw.gateway.drain_background()
    resp = await gw.client.get("/api/usage", headers=gw.admin_headers())
    row = (await resp.json())["channels"][0]
    assert (row["requests"], row["prompt_tokens"]) == (3, 3 + 11 + 11)


async def test_wrong_key_fails_over_like_openai(azure_factory, gateway_factory, upstream_factory):
    _, url = await azure_factory()
    up, oa_url = await upstream_factory("oa")
    oa = {"name": "oa", "type": "openai", "endpoint": oa_url, "api_key": "sk-oa",
          "price_per_token": 1.0}  # fmt: skip
    gw = await gateway_factory(base_config(channels=[az(url, api_key="wrong"), oa]))
    resp = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {DEV_KEY}"},
    )
    assert resp.status == 200 and resp.headers["x-smartproxy-channel"] == "oa"
    assert json.loads(await resp.read())["served_by"] == "oa"
