"""Real gateway processes for the scale-out tests: ``smartproxy run`` in a subprocess, its output
in a file, driven over HTTP from the test's event loop (never blocking it: the fake upstreams run
in that loop too)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from redisutil import free_port

import smartproxy
from smartproxy.config import load_config
from smartproxy.security.jwt import JwtVerifier

DEV_KEY = "sk-test-dev-key-0001"
ADMIN_SECRET = "test-admin-secret-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "hi"}]


def env() -> dict[str, str]:
    pkg_parent = str(Path(smartproxy.__file__).resolve().parent.parent)
    return {
        **os.environ,
        "SMARTPROXY_CONFIG": "",
        "PYTHONPATH": os.pathsep.join(filter(None, [pkg_parent, os.environ.get("PYTHONPATH")])),
    }


def gateway_config(channels: list[dict[str, Any]], storage: dict[str, Any], **over: Any) -> dict:
    cfg: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:0", "timeout": 5},
        "channels": channels,
        "security": {
            "auth": {"api_keys": {"dev": DEV_KEY}, "jwt": {"secret": ADMIN_SECRET}},
            "rate_limit": {"requests_per_minute": 1_000_000, "burst": 1_000_000},
        },
        "retry": {"max_attempts": 3, "base_delay_ms": 1, "max_delay_ms": 2},
        "storage": storage,
        "log": {"level": "warning"},
    }
    cfg.update(over)
    return cfg


class GatewayProcess:
    """One ``smartproxy run`` on a free port (``workers`` > 1: ``--workers``)."""

    def __init__(self, folder: Path, name: str, config: dict[str, Any], workers: int = 1):
        self.folder = folder
        self.name = name
        self.port = free_port()
        self.config_path = folder / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.out_path = folder / f"{name}.out"
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "smartproxy", "run", "--config", str(self.config_path),
                "--listen", f"127.0.0.1:{self.port}"]
        if self.workers != 1:
            args += ["--workers", str(self.workers)]
        out = self.out_path.open("ab")
        self.proc = subprocess.Popen(args, cwd=self.folder, env=env(), stdout=out,
                                     stderr=subprocess.STDOUT)
        out.close()
        return self.proc

    async def start(self, http: aiohttp.ClientSession) -> GatewayProcess:
        self.spawn()
        deadline = time.monotonic() + 60  # a loaded 2-core machine starts Python slowly
        while True:
            try:
                async with http.get(f"{self.base}/healthz") as resp:
                    if resp.status == 200:
                        return self
            except aiohttp.ClientError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not start: {self.output()}")
            await asyncio.sleep(0.05)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def admin_headers(self) -> dict[str, str]:
        token = JwtVerifier(load_config(self.config_path).security.jwt).mint("tester", 10)
        return {"Authorization": f"Bearer {token}"}

    async def chat(self, http: aiohttp.ClientSession, key: str = DEV_KEY,
                   **body: Any) -> tuple[int, dict[str, str], Any]:
        payload = {"model": "gpt-4o-mini", "messages": MESSAGES, **body}
        async with http.post(f"{self.base}/v1/chat/completions", json=payload,
                             headers={"Authorization": f"Bearer {key}"}) as resp:
            return resp.status, dict(resp.headers), await resp.json(content_type=None)

    async def get(self, http: aiohttp.ClientSession, path: str, admin: bool = True) -> Any:
        headers = self.admin_headers() if admin else {}
        async with http.get(f"{self.base}{path}", headers=headers) as resp:
            return await resp.json(content_type=None)

    async def usage(
        self, http: aiohttp.ClientSession, *, settled: bool = True
    ) -> dict[str, dict[str, Any]]:
        """``/api/usage`` by channel. ``settled``: first wait (up to 5 s) until no reservation is
        held anywhere: a request's usage is written after its answer (batched per loop turn),
        possibly by another process than the one asked, so a read right after the last answer
        could miss it."""
        deadline = time.monotonic() + 5
        while True:
            rows = (await self.get(http, "/api/usage"))["channels"]
            held = any(row.get("reserved_tokens") for row in rows)
            if not settled or not held or time.monotonic() > deadline:
                return {row["channel"]: row for row in rows}
            await asyncio.sleep(0.05)

    def log_rows(self) -> dict[str, dict[str, int]]:
        """This gateway's request log (its own SQLite file), summed by channel. Read it after
        ``stop()`` (the log is written in batches; stopping flushes it)."""
        path = Path(load_config(self.config_path).storage.path)
        if not path.is_absolute():
            path = self.folder / path
        with sqlite3.connect(path) as db:
            rows = db.execute(
                "SELECT channel, COUNT(*), SUM(prompt_tokens + completion_tokens)"
                " FROM request_log GROUP BY channel"
            ).fetchall()
        return {ch: {"requests": n, "total_tokens": t} for ch, n, t in rows}

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
