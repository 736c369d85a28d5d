"""Channels behind an outbound HTTP proxy (``proxy`` per channel, ``server.proxy``).

The upstream is named ``upstream.test``: no resolver knows it, only the test's proxy maps it to
127.0.0.1, so an answer proves the request went through the proxy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from conftest import DEV_KEY, base_config, channel
from fakeupstream import FakeUpstream
from proxyserver import TestProxy
from tlsutil import self_signed

SECRET_PASS = "pr0xy-pa55-Secret"


@pytest.fixture
async def proxy_factory() -> Any:
    proxies: list[TestProxy] = []

    async def make(**kwargs: Any) -> TestProxy:
        proxy = TestProxy({"upstream.test": "127.0.0.1"}, **kwargs)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.close()


async def chat(gw: Any, model: str = "m") -> Any:
    return await gw.client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {DEV_KEY}"},
                                json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


async def test_http_upstream_is_reached_only_through_the_proxy_with_credentials_hidden(
    upstream_factory: Any, gateway_factory: Any, proxy_factory: Any, caplog: Any, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    fake, url = await upstream_factory()
    port = url.split(":")[-1].split("/")[0]
    proxy = await proxy_factory(user="bob", password=SECRET_PASS)
    proxied = channel("via-proxy", f"http://upstream.test:{port}/v1",
                      proxy=f"http://bob:{SECRET_PASS}@127.0.0.1:{proxy.port}")
    cfg = base_config(channels=[proxied])
    cfg["audit"] = {"path": str(tmp_path / "audit.log")}
    gw = await gateway_factory(cfg, write_file=True)
    resp = await chat(gw)
    assert resp.status == 200, await resp.text()
    assert len(fake.seen) == 1
    method, target, auth = proxy.seen[0]
    assert (method, target) == ("POST", f"http://upstream.test:{port}/v1/chat/completions")
    assert auth is not None and auth.startswith("Basic ")
    assert "proxy-authorization" not in {k.lower() for k in fake.seen[0].headers}
    # The credentials appear in no admin answer, ops page, audit line or log line.
    admin = gw.admin_headers()
    shown = await (await gw.client.get("/api/channels", headers=admin)).json()
    assert shown["channels"][0]["proxy"] == f"http://bob:****@127.0.0.1:{proxy.port}"
    edited = {**shown["channels"][0], "priority": 5}
    assert (await gw.client.post("/api/channels", headers=admin, json=edited)).status == 200
    assert (await gw.client.post("/api/reload", headers=admin)).status == 200
    texts = [await (await gw.client.get(p, headers=admin)).text()
             for p in ("/api/channels", "/health", "/metrics", "/api/usage")]
    texts.append(await (await gw.client.post("/api/route", headers=admin,
                                             json={"model": "m", "messages": []})).text())
    texts += [(tmp_path / "audit.log").read_text(), caplog.text]
    for text in texts:
        assert SECRET_PASS not in text
    assert (await chat(gw)).status == 200  # still through the proxy after the edit


async def test_wrong_proxy_credentials_fail_over_with_a_clear_reason(
    upstream_factory: Any, gateway_factory: Any, proxy_factory: Any, caplog: Any
) -> None:
    fake, url = await upstream_factory()
    port = url.split(":")[-1].split("/")[0]
    proxy = await proxy_factory(user="bob", password="right")
    bad = channel("bad", f"https://upstream.test:{port}/v1",
                  proxy=f"http://bob:{SECRET_PASS}@127.0.0.1:{proxy.port}")
    gw = await gateway_factory(base_config(channels=[bad]))
    resp = await chat(gw)
    body = await resp.text()
    assert resp.status == 502 and "bad" in body and "407" in body, body
    assert SECRET_PASS not in body and SECRET_PASS not in caplog.text


async def test_server_proxy_is_the_default_and_env_is_ignored_when_it_is_set(
    upstream_factory: Any, gateway_factory: Any, proxy_factory: Any, monkeypatch: Any
) -> None:
    fake, url = await upstream_factory()
    port = url.split(":")[-1].split("/")[0]
    proxy = await proxy_factory()
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would fail: nothing listens there
    cfg = base_config(channels=[channel("c", f"http://upstream.test:{port}/v1")])
    cfg["server"]["proxy"] = proxy.url
    gw = await gateway_factory(cfg)
    assert (await chat(gw)).status == 200 and len(proxy.seen) == 1


async def test_env_proxy_is_used_when_no_proxy_is_configured(
    upstream_factory: Any, gateway_factory: Any, proxy_factory: Any, monkeypatch: Any
) -> None:
    fake, url = await upstream_factory()
    port = url.split(":")[-1].split("/")[0]
    proxy = await proxy_factory()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost")
    gw = await gateway_factory(base_config(channels=[channel("c", f"http://upstream.test:{port}/v1")]))
    assert (await chat(gw)).status == 200 and len(proxy.seen) == 1


async def test_https_upstream_goes_through_a_connect_tunnel(
    gateway_factory: Any, proxy_factory: Any, tmp_path: Path
) -> None:
    server_ctx, client_ctx = self_signed(tmp_path)
    fake = FakeUpstream(name="tls")
    server = TestServer(fake.app())
    await server.start_server(ssl=server_ctx)
    proxy = await proxy_factory(user="bob", password=SECRET_PASS)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx))
    try:
        tls = channel("tls", f"https://upstream.test:{server.port}/v1",
                      proxy=f"http://bob:{SECRET_PASS}@127.0.0.1:{proxy.port}")
        gw = await gateway_factory(base_config(channels=[tls]), session=session)
        resp = await chat(gw)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["served_by"] == "tls"
        method, target, auth = proxy.seen[0]
        assert (method, target) == ("CONNECT", f"upstream.test:{server.port}") and auth
        assert len(fake.seen) == 1
    finally:
        await session.close()
        await server.close()
