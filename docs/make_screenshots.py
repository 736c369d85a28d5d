"""Screenshots of ``/dashboard`` for the README: a gateway with four channels and a month of traffic.

    python docs/make_screenshots.py            # writes docs/dashboard-desktop.png, -phone.png
    python docs/make_screenshots.py --serve    # the same gateway, left running for a browser

Everything is real: fake upstreams (aiohttp apps in this process) answer the gateway, ~400 chat
requests go through ``/v1/chat/completions`` with the gateway's clock stepped over the last 30
days (so the request log has history), and headless Chromium (playwright, ``/usr/bin/chromium``)
signs in with an admin JWT and photographs the page at 1280 px and 390 px width.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from smartproxy.app import create_app
from smartproxy.config import parse_config
from smartproxy.state import GATEWAY

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOW = datetime(2026, 11, 26, 12, 48, tzinfo=UTC)  # 20:48 in Shanghai: the night discount is near
KEYS = {"team-web": "sk-demo-web-000000001", "team-data": "sk-demo-data-00000002",
        "ci": "sk-demo-ci-0000000003"}  # fmt: skip
MODELS = ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini", "deepseek-chat", "gpt-4o", "llama-3.1-8b"]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def fake_upstream(fail_every: int = 0) -> web.Application:
    rnd = random.Random(fail_every)
    count = 0

    async def chat(request: web.Request) -> web.Response:
        nonlocal count
        count += 1
        if fail_every and count % fail_every == 0:
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        body = await request.json()
        prompt, completion = rnd.randint(300, 4000), rnd.randint(100, 1500)
        return web.json_response({
            "id": f"chatcmpl-{count}", "object": "chat.completion", "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        })  # fmt: skip

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
    return runner, f"http://127.0.0.1:{port}"


def config(urls: dict[str, str]) -> dict[str, Any]:
    def ch(name: str, **kw: Any) -> dict[str, Any]:
        return {"name": name, "type": "openai", "endpoint": urls[name] + "/v1",
                "api_key": f"sk-upstream-{name}-secret", **kw}  # fmt: skip

    return {
        "server": {"listen": "127.0.0.1:0", "timezone": "Asia/Shanghai"},
        "channels": [
            ch("groq-free", models=["gpt-4o-mini", "llama-3.1-8b"], daily_limit=400_000,
               hour_limit=60_000),
            ch("deepseek", models=["deepseek-chat", "gpt-4o-mini"], price_per_token=0.00000027,
               discount_time=["16:30-00:30"], discount_price=0.000000135, priority=1),
            ch("openai-paid", models=["gpt-4o-mini", "gpt-4o"], price_per_token=0.0000006,
               discount_time=["00:00-06:00"], discount_price=0.0000003, priority=2),
            ch("azure-backup", models=["gpt-4o"], price_per_token=0.0000025, status="disabled"),
        ],
        "rules": [{"name": "big prompts to deepseek", "channel": "deepseek",
                   "expression": "prompt_tokens > 3000"}],
        "security": {"auth": {"api_keys": KEYS, "jwt": {"secret": "demo-secret-0123456789abcdef"}},
                     "rate_limit": {"requests_per_minute": 100000, "burst": 100000}},
        "retry": {"max_attempts": 3, "base_delay_ms": 1, "max_delay_ms": 2},
        "circuit_breaker": {"fail_max": 3, "reset_timeout": 60},
        "storage": {"backend": "memory"},
    }  # fmt: skip


async def traffic(base: str, clock: Clock) -> None:
    rnd = random.Random(11)
    times = [NOW - timedelta(days=30) + timedelta(hours=rnd.uniform(0, 30 * 24)) for _ in range(320)]
    times += [NOW - timedelta(hours=rnd.uniform(0, 48)) for _ in range(180)]
    async with aiohttp.ClientSession() as http:
        for at in sorted(times):
            clock.now = at
            key = rnd.choice(list(KEYS.values()))
            async with http.post(
                base + "/v1/chat/completions",
                json={"model": rnd.choice(MODELS), "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {key}"},
            ) as resp:
                await resp.read()
    clock.now = NOW


async def screenshots(base: str, token: str) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        for name, width, height in (("desktop", 1280, 900), ("phone", 390, 844)):
            page = await browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("console", lambda m, out=errors: out.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e, out=errors: out.append(str(e)))
            await page.goto(base + "/dashboard")
            await page.fill("#token", token)
            await page.click("button[type=submit]")
            await page.wait_for_selector("#route li")
            path = HERE / f"dashboard-{name}.png"
            await page.screenshot(path=str(path), full_page=True)
            print(f"wrote {path} ({width} px){' console errors: ' + str(errors) if errors else ''}")
            await page.close()
        await browser.close()


async def main(keep_serving: bool) -> None:
    runners = []
    urls = {}
    for name, fail_every in (("groq-free", 0), ("deepseek", 0), ("openai-paid", 4),
                             ("azure-backup", 0)):  # fmt: skip
        runner, url = await serve(fake_upstream(fail_every))
        runners.append(runner)
        urls[name] = url
    clock = Clock(NOW)
    app = create_app(parse_config(config(urls)), clock=clock)
    gw = app[GATEWAY]  # started three hours before the demo's "now", like its traffic
    gw.started_at = (NOW - timedelta(hours=3)).timestamp()
    gw.snapshot = dataclasses.replace(gw.snapshot, loaded_at=gw.started_at)
    runner, base = await serve(app)
    runners.append(runner)
    try:
        await traffic(base, clock)
        token = app[GATEWAY].verifier().mint("readme", 60)
        if keep_serving:
            print(f"{base}/dashboard  admin token:\n{token}")
            await asyncio.Event().wait()
        await screenshots(base, token)
    finally:
        for r in reversed(runners):
            await r.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="keep the demo gateway running")
    asyncio.run(main(parser.parse_args().serve))
