"""Shared fixtures: fake upstreams (real aiohttp apps) and a gateway built from a config dict."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

sys.path.insert(0, os.path.dirname(__file__))

from fakeupstream import FakeUpstream  # noqa: E402

from smartproxy.app import create_app  # noqa: E402
from smartproxy.config import load_config, parse_config  # noqa: E402
from smartproxy.state import GATEWAY, Gateway  # noqa: E402

DEV_KEY = "sk-test-dev-key-0001"
ADMIN_SECRET = "test-admin-secret-0123456789abcdef"


class Clock:
    """An injectable wall clock (aware UTC)."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        from datetime import timedelta

        self.now = self.now + timedelta(**kwargs)


def base_config(**overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:0", "timeout": 5},
        "channels": [],
        "security": {
            "auth": {"api_keys": {"dev": DEV_KEY}, "jwt": {"secret": ADMIN_SECRET}},
            "rate_limit": {"requests_per_minute": 100000, "burst": 100000},
        },
        "retry": {"max_attempts": 3, "base_delay_ms": 1, "max_delay_ms": 2},
        "storage": {"backend": "memory"},
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture
async def fake_servers() -> AsyncIterator[Callable[[web.Application], Awaitable[TestServer]]]:
    """Serve fake upstream apps on free ports; every one is closed when the test ends."""
    servers: list[TestServer] = []

    async def serve(app: web.Application) -> TestServer:
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        await server.close()


@pytest.fixture
async def upstream_factory(
    fake_servers: Callable[[web.Application], Awaitable[TestServer]],
) -> Callable[..., Awaitable[tuple[FakeUpstream, str]]]:
    async def make(name: str = "up", **kwargs: Any) -> tuple[FakeUpstream, str]:
        fake = FakeUpstream(name=name, **kwargs)
        server = await fake_servers(fake.app())
        return fake, str(server.make_url("/v1"))

    return make


class GatewayHandle:
    def __init__(self, client: TestClient, gateway: Gateway, config_path: Path | None) -> None:
        self.client = client
        self.gateway = gateway
        self.config_path = config_path
        self.sdk_clients: list[Any] = []

    @property
    def url(self) -> str:
        return str(self.client.make_url("/v1"))

    @property
    def root(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    def openai(self, key: str = DEV_KEY, **kwargs: Any) -> Any:
        import openai

        sdk = openai.AsyncOpenAI(base_url=self.url, api_key=key, max_retries=0, **kwargs)
        self.sdk_clients.append(sdk)
        return sdk

    def admin_headers(self, sub: str = "tester") -> dict[str, str]:
        token = self.gateway.verifier().mint(sub, 10)
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def gateway_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[GatewayHandle]]]:
    clients: list[TestClient] = []
    handles: list[GatewayHandle] = []

    async def make(
        config: dict[str, Any] | Path,
        *,
        write_file: bool = False,
        clock: Any = None,
        **kwargs: Any,
    ) -> GatewayHandle:
        path: Path | None = None
        if isinstance(config, Path):  # a (re)start from a config file, ${VAR} expanded
            path = config
            parsed = load_config(path)
        else:
            storage = config.get("storage") or {}
            if "audit" not in config and "path" not in storage:
                # The audit log goes to storage.path's folder, ./data by default: tests write
                # only under tmp_path (audit.log beside the config file when there is one).
                storage = {**storage, "path": str(tmp_path / "smartproxy.db")}
                config = {**config, "storage": storage}
            if write_file:
                path = tmp_path / "smartproxy.yaml"
                path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
            parsed = parse_config(config, source=str(path) if path else None)
        app = create_app(
            parsed, config_path=str(path) if path else None, clock=clock or Clock(), **kwargs
        )
        client = TestClient(TestServer(app, handler_cancellation=True))
        await client.start_server()
        clients.append(client)
        handle = GatewayHandle(client, app[GATEWAY], path)
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        for sdk in handle.sdk_clients:
            await sdk.close()
    for client in clients:
        await client.close()


def channel(name: str, endpoint: str, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "openai",
        "endpoint": endpoint,
        "api_key": f"sk-chan-{name}-secret",
        **kw,
    }


@pytest.fixture
async def anthropic_factory(
    fake_servers: Callable[[web.Application], Awaitable[TestServer]],
) -> Callable[..., Awaitable[tuple[Any, str]]]:
    """Fake Anthropic Messages APIs (tests/fakeanthropic.py); returns (fake, base URL)."""
    from fakeanthropic import FakeAnthropic

    async def make(**kwargs: Any) -> tuple[FakeAnthropic, str]:
        fake = FakeAnthropic(**kwargs)
        server = await fake_servers(fake.app())
        return fake, str(server.make_url("")).rstrip("/")

    return make


def fresh_python(*lines: str) -> list[str]:
    """Run ``lines`` in a new interpreter (nothing imported yet): its printed lines. For what a
    gateway process loads, which this test process cannot tell any more."""
    out = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True,
                         text=True, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()
