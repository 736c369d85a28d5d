"""``/dashboard`` in headless Chromium (playwright driving Debian's ``/usr/bin/chromium``).

After real requests through two channels the page signs in and shows both channels, a quota bar
whose value is ``/api/usage``'s, a cost figure that is ``/api/usage``'s, refreshes itself without
a reload, and logs no console error. Without a token it shows only the form and asks the API for
nothing; a wrong or expired token gets a plain message and no data; every admin call carries the
token, and only as the Bearer header.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from datetime import datetime
from typing import Any

import jwt
import pytest
from conftest import ADMIN_SECRET, base_config, channel

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
IN_CI = os.environ.get("CI") == "true"

try:
    from playwright.async_api import Page, async_playwright, expect
except ImportError:  # pragma: no cover - the test extra installs it
    async_playwright = None  # type: ignore[assignment]

needs_browser = pytest.mark.skipif(
    (CHROMIUM is None or async_playwright is None) and not IN_CI,
    reason="headless Chromium or playwright missing (.ci/run installs both)",
)


@pytest.fixture
async def browser(tmp_path) -> Any:
    assert CHROMIUM, "CI must have chromium (apt-get install -y chromium)"
    assert async_playwright is not None, "CI must have playwright (pip install '.[test]')"
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"  # never fetch a browser of its own
    async with async_playwright() as pw:
        # A persistent context gives Chromium a fresh --user-data-dir of our own under tmp_path.
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1200, "height": 900},
        )  # fmt: skip
        yield context
        await context.close()


class Watch:
    """Everything the page logs and asks for."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("request", lambda r: self.requests.append((r.method, r.url, r.headers)))

    def api(self) -> list[tuple[str, str, dict[str, str]]]:
        return [r for r in self.requests if "/api/" in r[1]]


async def two_channels(upstream_factory, gateway_factory) -> Any:
    _, a_url = await upstream_factory("alpha")
    _, b_url = await upstream_factory("bravo")
    cfg = base_config(
        channels=[
            channel("alpha-free", a_url, models=["gpt-4o-mini"], daily_limit=5000, hour_limit=4000),
            channel("bravo-paid", b_url, models=["gpt-4o"], price_per_token=0.0000025,
                    discount_time=["20:42-23:00"], discount_price=0.00000125),
        ]
    )
    cfg["server"]["timezone"] = "Asia/Kolkata"
    return await gateway_factory(cfg)


async def proxied(gw: Any, model: str, n: int) -> None:
    sdk = gw.openai()
    for _ in range(n):
        await sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])


async def usage_of(gw: Any) -> dict[str, Any]:
    resp = await gw.client.get("/api/usage", headers=gw.admin_headers())
    return {c["channel"]: c for c in (await resp.json())["channels"]}


def dollars(text: str) -> float:
    match = re.fullmatch(r"\$([0-9.,]+)", text.strip())
    assert match, text
    return float(match.group(1).replace(",", ""))


@needs_browser
async def test_signed_in_dashboard_shows_channels_quota_and_cost(
    upstream_factory, gateway_factory, browser
):
    gw = await two_channels(upstream_factory, gateway_factory)
    await proxied(gw, "gpt-4o-mini", 3)  # alpha-free: 3 x 17 tokens
    await proxied(gw, "gpt-4o", 2)  # bravo-paid: 2 x 17 tokens x $0.0000025
    token = gw.gateway.verifier().mint("dash-test", 10)
    page = await browser.new_page()
    watch = Watch(page)
    await page.clock.install(time=datetime.now())
    await page.goto(f"{gw.root}/dashboard")
    await page.fill("#token", token)
    await page.press("#token", "Tab")
    await page.keyboard.press("Enter")  # the sign-in button, reached by keyboard
    await page.wait_for_selector('.card[data-channel="bravo-paid"]')
    await page.wait_for_selector("#route li")
    body = await page.inner_text("main")
    assert "alpha-free" in body and "bravo-paid" in body

    usage = await usage_of(gw)
    bar = page.locator('[role=progressbar][data-channel="alpha-free"][data-window="day"]')
    assert int(await bar.get_attribute("aria-valuenow")) == usage["alpha-free"]["day_tokens"] == 51
    assert int(await bar.get_attribute("aria-valuemax")) == usage["alpha-free"]["daily_limit"]
    assert await page.inner_text('.card[data-channel="alpha-free"] .quota[data-window="day"]') == (
        "Today\n51 of 5\u202fk tokens"
    )
    cost = page.locator('.card[data-channel="bravo-paid"] dd[data-field="day_cost_usd"]')
    expected = usage["bravo-paid"]["day_cost_usd"]
    assert expected == pytest.approx(34 * 0.0000025)
    assert float(await cost.get_attribute("data-value")) == expected
    assert dollars(await cost.inner_text()) == pytest.approx(expected, rel=0.05)
    # the gateway's clock says 12:00 UTC = 17:30 in Kolkata
    assert await page.inner_text('.card[data-channel="bravo-paid"] .discount') == (
        "Discount 20:42\u201323:00 ($1.25 / 1M tokens) starts in 3 h 12 min"
    )
    assert await page.inner_text('.card[data-channel="bravo-paid"] [data-field=effective_price]') == (
        "$2.50 / 1M tokens"
    )
    assert "Asia/Kolkata" in await page.inner_text("#clock")
    route = await page.inner_text("#route")
    assert "alpha-free" in route  # gpt-4o-mini: the free channel first

    # refreshes every 10 s without reloading the page
    await page.evaluate("window.__same_page = true")
    await proxied(gw, "gpt-4o-mini", 1)
    calls = len(watch.api())
    await page.clock.run_for(10_500)
    await expect(bar).to_have_attribute("aria-valuenow", "68")  # (CSP: no eval'd predicates)
    assert await page.evaluate("window.__same_page") is True
    assert len(watch.api()) > calls

    # keyboard: a sort header is a button; Enter on it sorts (and says so to a screen reader)
    header = page.locator('#by-model button.sort[data-col="name"]')
    await header.focus()
    await page.keyboard.press("Enter")
    assert await page.get_attribute('#by-model th:has(button[data-col="name"])', "aria-sort") == (
        "ascending"
    )
    assert await page.evaluate("document.activeElement.dataset.col") == "name"
    assert await page.locator("#by-model tbody th").all_inner_texts() == ["gpt-4o", "gpt-4o-mini"]
    await page.keyboard.press("Enter")  # again: descending
    assert await page.locator("#by-model tbody th").all_inner_texts() == ["gpt-4o-mini", "gpt-4o"]
    assert await page.get_attribute('#by-model th:has(button[data-col="name"])', "aria-sort") == (
        "descending"
    )
    refreshes = int(await page.get_attribute("#main", "data-refreshes"))
    await page.clock.run_for(10_000)  # a refresh redraws the table; focus stays on the header
    await expect(page.locator("#main")).to_have_attribute("data-refreshes", str(refreshes + 1))
    assert await page.evaluate("document.activeElement.dataset.col") == "name"
    # a phone: 390 px wide, nothing sticks out sideways (wide tables scroll inside their box)
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.clock.run_for(500)  # the chart redraw after a resize is debounced
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    assert await page.locator(".card").first.bounding_box() is not None
    # Cost axis values of a few cheap requests ("$0.0000425") fit inside the chart (audit
    # finding: a fixed 52 px margin cut them to "0000425").
    for chart in ("#chart-hour", "#chart-day"):
        cut = await page.evaluate(
            """(sel) => { const svg = document.querySelector(sel + " svg");
              const left = svg.getBoundingClientRect().left;
              return [...svg.querySelectorAll("text.axis")]
                .filter((t) => t.getBoundingClientRect().left < left - 0.5)
                .map((t) => t.textContent); }""",
            chart,
        )
        assert cut == [], (chart, cut)

    # numbers for people
    formats = await page.evaluate(
        """() => { const f = window.SmartProxyDashboard; return [
          f.fmtTokens(1234567), f.fmtTokens(950), f.fmtTokens(12345), f.fmtTokens(1),
          f.fmtUSD(3.4149), f.fmtUSD(0), f.fmtUSD(0.0000172), f.fmtUSD(0.054), f.fmtUSD(12345.6),
          f.fmtPrice(0.0000006), f.fmtPrice(0), f.fmtIn(3 * 3600), f.fmtIn(3 * 3600 + 12 * 60 + 5),
          f.fmtIn(20), f.fmtIn(26 * 3600)]; }"""
    )
    assert [x.replace("\u202f", " ") for x in formats] == [
        "1.2 M tokens", "950 tokens", "12.3 k tokens", "1 token",
        "$3.41", "$0.00", "$0.000017", "$0.05", "$12,346",
        "$0.60 / 1M tokens", "free", "in 3 h", "in 3 h 12 min",
        "in less than a minute", "in 1 d 2 h",
    ]  # fmt: skip

    assert watch.errors == []
    assert_token_only_as_bearer(watch, token, gw.root)


def assert_token_only_as_bearer(watch: Watch, token: str, origin: str) -> None:
    api = watch.api()
    assert {url.split("?")[0].removeprefix(origin) for _, url, _ in api} >= {
        "/api/status", "/api/usage", "/api/usage/timeseries", "/api/channels", "/api/route"
    }  # fmt: skip
    for method, url, headers in watch.requests:
        assert url.startswith(origin + "/"), url  # nothing leaves the gateway's origin
        assert token not in url
        assert "cookie" not in {k.lower() for k in headers}
        if "/api/" in url:
            assert headers.get("authorization") == f"Bearer {token}", (method, url)
            assert not any(token in v for k, v in headers.items() if k != "authorization")
        else:
            assert "authorization" not in headers, url  # the page's own files: no token


def foreign_token(secret: str, *, expired: bool = False) -> str:
    now = int(time.time())
    claims = {"sub": "mallory", "iss": "smartproxy", "aud": "smartproxy-admin",
              "iat": now - 7200, "exp": now - 3600 if expired else now + 600}  # fmt: skip
    return jwt.encode(claims, secret, algorithm="HS256")


@needs_browser
async def test_without_or_with_a_wrong_token_only_the_form(
    upstream_factory, gateway_factory, browser
):
    gw = await two_channels(upstream_factory, gateway_factory)
    await proxied(gw, "gpt-4o", 1)
    page = await browser.new_page()
    watch = Watch(page)
    await page.goto(f"{gw.root}/dashboard")
    await page.wait_for_load_state("networkidle")
    assert await page.is_visible("#signin-form")
    assert not await page.is_visible("#main")
    assert watch.api() == []  # no token: the page asks the admin API for nothing
    text = await page.inner_text("body")
    assert "bravo-paid" not in text and "alpha-free" not in text
    assert await page.evaluate("document.activeElement.id") == "token"

    cases = [
        ("not a token at all", "That is not an admin token"),
        (foreign_token("another-gateways-secret-0123456789"), "The gateway refused this token"),
        (foreign_token(ADMIN_SECRET, expired=True), "This token expired at"),
    ]
    for token, message in cases:
        await page.fill("#token", token)
        await page.click("button[type=submit]")
        error = page.locator("#signin-error")
        await expect(error).to_contain_text(message)
        assert not await page.is_visible("#main")
        text = await page.inner_text("body")
        assert "bravo-paid" not in text and "alpha-free" not in text
        assert await page.evaluate("sessionStorage.length") == 0  # a refused token is not kept
    # the malformed one never left the page; each refused one cost a single call
    assert [r[1].removeprefix(gw.root) for r in watch.api()] == ["/api/status", "/api/status"]
    # the only console errors: Chromium's own note of the two refused (401) API answers
    assert watch.errors and all("status of 401" in e for e in watch.errors), watch.errors


async def test_dashboard_files_are_served_without_auth_and_locked_down(gateway_factory):
    gw = await gateway_factory(base_config(channels=[{"name": "m", "type": "mock"}]))
    page = await gw.client.get("/dashboard")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe" not in csp
    html = await page.text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(r.startswith("/dashboard/static/") or r == "#main" for r in refs)
    for ref in refs:
        if ref.startswith("/"):
            assert (await gw.client.get(ref)).status == 200, ref
    for bad in ("/dashboard/static/../../app.py", "/dashboard/static/index.html",
                "/dashboard/static/nope.js"):  # fmt: skip
        assert (await gw.client.get(bad)).status == 404, bad
    slash = await gw.client.get("/dashboard/", allow_redirects=False)
    assert slash.status == 308 and slash.headers["Location"] == "/dashboard"
    spec = await (await gw.client.get("/swagger.json")).json()
    assert "get" in spec["paths"]["/dashboard"]
    assert "get" in spec["paths"]["/api/usage/timeseries"]
    assert "get" in spec["paths"]["/api/status"]


def test_the_package_ships_every_dashboard_file():
    """``pip install .`` copies package_data only: each file of the page must match a pattern."""
    import configparser
    from fnmatch import fnmatch
    from pathlib import Path

    from smartproxy.api.dashboard import ASSETS, STATIC_DIR

    root = Path(__file__).resolve().parent.parent
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["smartproxy"].split(",")]
    files = sorted(p.relative_to(STATIC_DIR.parent.parent).as_posix()
                   for p in STATIC_DIR.iterdir())  # fmt: skip
    assert files == sorted(f"static/dashboard/{n}" for n in [*ASSETS, "index.html"])
    for name in files:
        assert any(fnmatch(name, pattern) for pattern in patterns), name
