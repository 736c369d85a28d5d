"""/swagger.json is a valid OpenAPI document of every documented route; /swagger is local only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from html.parser import HTMLParser
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from smartproxy.api import docs
from smartproxy.api.docs import build_spec, operations_without_examples, setup_docs

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]


async def chat(request: web.Request) -> web.Response:
    """Chat completion.
    ---
    summary: Chat completion
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: '#/components/schemas/ChatCompletionRequest'}
          examples:
            short: {$ref: '#/components/examples/ChatCompletionRequest'}
    responses:
      "200":
        description: Upstream's answer
        content:
          application/json:
            schema: {$ref: '#/components/schemas/ChatCompletionResponse'}
      "401": {$ref: '#/components/responses/Unauthorized'}
      "429": {$ref: '#/components/responses/RateLimited'}
    """
    return web.json_response({})


async def models(request: web.Request) -> web.Response:
    """No YAML section, so left out of the document."""
    return web.json_response({})


async def delete_channel(request: web.Request) -> web.Response:
    """Remove a channel.
    ---
    summary: Remove a channel
    responses:
      "204": {description: Removed}
      "401": {$ref: '#/components/responses/Unauthorized'}
    """
    return web.Response(status=204)


class RulesView(web.View):
    async def get(self) -> web.Response:
        """All rules.
        ---
        get:
          summary: All rules
          responses:
            "200":
              description: The rules
              content:
                application/json:
                  schema: {type: array, items: {type: object}}
                  example: [{name: free first, channel: free-groq}]
        """
        return web.json_response([])

    async def post(self) -> web.Response:  # undocumented: left out
        return web.json_response({})


async def healthz(request: web.Request) -> web.Response:
    """Liveness.
    ---
    summary: Liveness
    responses:
      "200":
        description: Serving
        content:
          text/plain:
            schema: {type: string}
            example: ok
    """
    return web.Response(text="ok")


def make_app(*, ops_as_domain: bool = False) -> web.Application:
    root = web.Application()
    proxy = web.Application()
    proxy.router.add_post("/chat/completions", chat)
    proxy.router.add_get("/models", models)
    root.add_subapp("/v1", proxy)
    admin = web.Application()
    admin.router.add_delete("/channels/{name}", delete_channel)
    admin.router.add_view("/rules", RulesView)
    root.add_subapp("/api", admin)
    if ops_as_domain:  # the arrangement of smartproxy.app: ops is a catch-all domain sub-app
        ops = web.Application()
        ops.router.add_get("/healthz", healthz)
        setup_docs(ops, title="T", version="9.9", root=root)
        root.add_domain("*", ops)
    else:
        root.router.add_get("/healthz", healthz)
        setup_docs(root, title="T", version="9.9", description="test gateway")
    return root


async def fetch_spec(client: Client) -> dict[str, Any]:
    resp = await client.get("/swagger.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    spec: dict[str, Any] = await resp.json()
    return spec


@pytest.mark.parametrize("ops_as_domain", [False, True])
async def test_spec_is_valid_and_covers_sub_apps(
    aiohttp_client: MakeClient, ops_as_domain: bool
) -> None:
    spec = await fetch_spec(await aiohttp_client(make_app(ops_as_domain=ops_as_domain)))
    validate(spec)
    assert spec["openapi"] == "3.0.3"
    assert spec["info"]["version"] == "9.9"
    paths = spec["paths"]
    assert set(paths) == {
        "/v1/chat/completions",
        "/api/channels/{name}",
        "/api/rules",
        "/healthz",
        "/swagger.json",
        "/swagger",
    }
    assert set(paths["/api/rules"]) == {"get"}  # post has no YAML; HEAD is never listed
    assert set(paths["/healthz"]) == {"get"}
    for name in ("Error", "ChatCompletionRequest", "ChatCompletionResponse", "CompletionRequest",
                 "CompletionResponse", "EmbeddingRequest", "EmbeddingResponse", "ModelList",
                 "Health", "Usage", "RouteDecision"):  # fmt: skip
        assert name in spec["components"]["schemas"]
    schemes = spec["components"]["securitySchemes"]
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"]["name"] == "x-api-key"
    assert schemes["adminJWT"]["bearerFormat"] == "JWT"


async def test_prefix_defaults_and_path_parameters(aiohttp_client: MakeClient) -> None:
    paths = (await fetch_spec(await aiohttp_client(make_app())))["paths"]
    chat_op = paths["/v1/chat/completions"]["post"]
    assert chat_op["security"] == [{"apiKey": []}, {"apiKeyHeader": []}]
    assert chat_op["tags"] == ["proxy"]
    delete_op = paths["/api/channels/{name}"]["delete"]
    assert delete_op["security"] == [{"adminJWT": []}]
    assert delete_op["parameters"] == [
        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    assert "security" not in paths["/healthz"]["get"]
    assert paths["/healthz"]["get"]["tags"] == ["ops"]


async def test_every_documented_operation_has_examples(aiohttp_client: MakeClient) -> None:
    spec = await fetch_spec(await aiohttp_client(make_app()))
    assert operations_without_examples(spec) == []
    healthz_ok = spec["paths"]["/healthz"]["get"]["responses"]["200"]
    del healthz_ok["content"]["text/plain"]["example"]
    chat_body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    del chat_body["content"]["application/json"]["examples"]
    # the referenced schema's own example still counts ...
    assert operations_without_examples(spec) == ["GET /healthz"]
    # ... until it is gone too
    del spec["components"]["schemas"]["ChatCompletionRequest"]["example"]
    assert sorted(operations_without_examples(spec)) == [
        "GET /healthz",
        "POST /v1/chat/completions",
    ]


async def test_spec_is_built_once(
    aiohttp_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    real = docs.build_spec

    def counting(app: web.Application, **meta: str) -> dict[str, Any]:
        calls.append(app)
        return real(app, **meta)

    monkeypatch.setattr(docs, "build_spec", counting)
    client = await aiohttp_client(make_app())
    first = await (await client.get("/swagger.json")).read()
    second = await (await client.get("/swagger.json")).read()
    assert first == second and len(calls) == 1


def test_bad_yaml_names_the_handler() -> None:
    async def broken(request: web.Request) -> web.Response:
        """Broken.
        ---
        responses: [unclosed
        """
        return web.Response()

    app = web.Application()
    app.router.add_get("/broken", broken)
    with pytest.raises(ValueError, match="broken"):
        build_spec(app, title="T", version="1")


class _Refs(HTMLParser):
    """Collects src/href of <script> and <link> tags."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts += 1
        if tag in ("script", "link"):
            self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]


@pytest.mark.parametrize("page", ["/swagger", "/swagger/"])
async def test_ui_loads_only_local_files(aiohttp_client: MakeClient, page: str) -> None:
    client = await aiohttp_client(make_app(ops_as_domain=True))
    resp = await client.get(page)
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    parser = _Refs()
    parser.feed(await resp.text())
    assert parser.scripts == len([r for r in parser.refs if r.endswith(".js")]) >= 2  # no inline
    assert len(parser.refs) >= 4
    for ref in parser.refs:
        assert ref.startswith("/") and not ref.startswith("//"), ref
        asset = await client.get(ref)
        assert asset.status == 200, ref
        assert len(await asset.read()) > 0
    init = await (await client.get("/swagger/static/smartproxy-init.js")).text()
    assert '"/swagger.json"' in init and "validatorUrl: null" in init


@pytest.mark.parametrize(
    "name", ["index.html", "swagger-initializer.js", "..%2F..%2F__init__.py", "nope.js"]
)
async def test_only_whitelisted_assets_are_served(aiohttp_client: MakeClient, name: str) -> None:
    client = await aiohttp_client(make_app())
    assert (await client.get(f"/swagger/static/{name}")).status == 404
