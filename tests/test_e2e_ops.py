"""Ops surface of the real app: /healthz, /health, /metrics (parsed), /swagger.json (validated), /swagger."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile

import pytest
from aiohttp.test_utils import TestServer
from conftest import DEV_KEY, base_config, channel
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_requests_by_endpoint_and_status(upstream_factory, gateway_factory):
    up, url = await upstream_factory("a")
    gw = await gateway_factory(base_config(channels=[channel("a", url)]))
    sdk = gw.openai()
    for _ in range(3):
        await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    bad = await gw.client.post(
        "/v1/chat/completions", data=b"{", headers={"Authorization": f"Bearer {DEV_KEY}"}
    )
    assert bad.status == 400
    unauth = await gw.client.post("/v1/chat/completions", json={"model": "m"})
    assert unauth.status == 401
    resp = await gw.client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    m = samples(await resp.text())
    ep = "/v1/chat/completions"
    assert m[("smartproxy_requests_total", (("endpoint", ep), ("status", "200")))] == 3
    assert m[("smartproxy_requests_total", (("endpoint", ep), ("status", "400")))] == 1
    assert m[("smartproxy_requests_total", (("endpoint", ep), ("status", "401")))] == 1
    assert m[("smartproxy_upstream_requests_total", (("channel", "a"), ("status", "200")))] == 3
    assert m[("smartproxy_tokens_total", (("channel", "a"), ("kind", "prompt")))] == 33
    assert m[("smartproxy_tokens_total", (("channel", "a"), ("kind", "completion")))] == 18
    assert m[("smartproxy_request_duration_seconds_count", (("endpoint", ep),))] == 5
    assert m[("smartproxy_auth_failures_total", (("reason", "missing"),))] == 1
    assert ("smartproxy_circuit_state", (("channel", "a"),)) in m
    # raw paths never become labels (bounded cardinality)
    await gw.client.get("/v1/nope/123")
    text = await (await gw.client.get("/metrics")).text()
    assert "/v1/nope/123" not in text


async def test_healthz_and_health(gateway_factory):
    gw = await gateway_factory(
        base_config(channels=[{"name": "m", "type": "mock", "daily_limit": 500}])
    )
    r = await gw.client.get("/healthz")
    assert r.status == 200 and await r.text() == "ok"
    health = await (await gw.client.get("/health")).json()
    assert health["status"] == "ok"
    assert health["version"]
    assert health["channels"][0]["name"] == "m"
    assert health["channels"][0]["circuit"] == "healthy"
    assert health["channels"][0]["day_quota_left"] == 500
    assert "sk-" not in str(health)
    gw.gateway.draining = True
    r = await gw.client.get("/healthz")
    assert r.status == 503


async def test_swagger_json_is_valid_and_complete(gateway_factory):
    gw = await gateway_factory(base_config(channels=[{"name": "m", "type": "mock"}]))
    spec = await (await gw.client.get("/swagger.json")).json()
    validate(spec)
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path, method in [
        ("/v1/chat/completions", "post"),
        ("/v1/completions", "post"),
        ("/v1/embeddings", "post"),
        ("/v1/models", "get"),
        ("/healthz", "get"),
        ("/health", "get"),
        ("/metrics", "get"),
        ("/api/usage", "get"),
        ("/api/route", "post"),
        ("/api/reload", "post"),
    ]:
        assert method in paths[path], path
    assert {"apiKey", "adminJWT"} <= set(spec["components"]["securitySchemes"])
    from smartproxy.api.docs import operations_without_examples

    assert operations_without_examples(spec) == []


async def test_swagger_ui_is_local(gateway_factory):
    gw = await gateway_factory(base_config(channels=[{"name": "m", "type": "mock"}]))
    html = await (await gw.client.get("/swagger")).text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs
    for ref in refs:
        assert not ref.startswith(("http:", "https:", "//")), ref
        assert (
            await gw.client.get(ref if ref.startswith("/") else "/swagger/" + ref)
        ).status == 200


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    not _chromium() and os.environ.get("CI") != "true",
    reason="headless Chromium not installed (.ci/run installs it)",
)
async def test_swagger_renders_in_headless_chromium(gateway_factory):
    browser = _chromium()
    assert browser, "CI must have chromium (apt-get install -y chromium)"
    gw = await gateway_factory(base_config(channels=[{"name": "m", "type": "mock"}]))
    # a real listening server on a fixed host:port for the browser
    server: TestServer = gw.client.server
    url = f"http://127.0.0.1:{server.port}/swagger"
    with tempfile.TemporaryDirectory() as profile:
        proc = await asyncio.create_subprocess_exec(
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=8000",
            "--dump-dom",
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    dom = out.decode(errors="replace")
    # Swagger UI fetched /swagger.json and rendered the operations
    assert "/v1/chat/completions" in dom, err.decode(errors="replace")[-2000:]
    assert "opblock" in dom


async def test_every_proxy_operation_documents_the_errors_it_answers_with_a_schema(
    gateway_factory,
):
    """Contract §6: /swagger.json documents every endpoint with schemas. Each /v1 POST lists
    the statuses the gateway answers with (a model no channel serves is a 404, a timeout a 504)
    and each answer has a schema (the Messages front's errors are Anthropic-shaped)."""
    gw = await gateway_factory(base_config(channels=[{"name": "m", "type": "mock"}]))
    spec = await (await gw.client.get("/swagger.json")).json()
    shared = spec["components"]["responses"]
    for path, item in spec["paths"].items():
        if not path.startswith("/v1/") or "post" not in item:
            continue
        responses = item["post"]["responses"]
        if path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                    "/v1/responses", "/v1/messages"):  # routed like chat completions
            assert {"400", "401", "404", "429", "502", "503", "504"} <= set(responses), path
        for status, answer in responses.items():
            if "$ref" in answer:
                answer = shared[answer["$ref"].rsplit("/", 1)[1]]
            content = answer.get("content", {})
            assert any("schema" in media for media in content.values()), (path, status)


def _json_schema(node):
    """OpenAPI 3.0 -> JSON Schema for the parts used here: ``nullable`` becomes a null type."""
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if k not in ("nullable", "example")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


async def test_admin_entries_match_their_documented_schemas(gateway_factory):
    """What GET /api/channels and /api/keys return is what /swagger.json says (a client that
    builds its body from the spec can send back every field)."""
    import jsonschema

    gw = await gateway_factory(base_config(channels=[
        {"name": "m", "type": "mock"},
        {"name": "o", "type": "openai", "endpoint": "https://x.example/v1", "api_key": "sk-abc12345",
         "forward_openai_org": True, "discount_time": ["00:00-06:00"], "discount_price": 0.1},
    ]))  # fmt: skip
    spec = await (await gw.client.get("/swagger.json")).json()
    schemas = spec["components"]["schemas"]
    for route, key, schema in (("/api/channels", "channels", "Channel"),
                               ("/api/keys", "keys", "ApiKey")):
        listed = (await (await gw.client.get(route, headers=gw.admin_headers())).json())[key]
        assert listed
        for entry in listed:
            jsonschema.validate(entry, _json_schema(schemas[schema]))
