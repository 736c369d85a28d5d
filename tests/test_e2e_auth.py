"""Issue [4] end to end: gateway API keys, per-key limits and budgets, through HTTP.

Every request goes through the gateway's HTTP surface, with the official openai SDK where it is
natural and raw aiohttp where headers or client addresses matter. Clocks and the auth-failure
sleep are injected: nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import DEV_KEY, Clock, base_config, channel
from prometheus_client.parser import text_string_to_metric_families

from smartproxy.config import parse_config
from smartproxy.security.ratelimit import FailurePenalty
from smartproxy.state import Snapshot

MESSAGES = [{"role": "user", "content": "hi"}]
TEAM_A_KEY = "sk-gw-team-a-7f3c9e21d4b8a6f0"
LIMITED_KEY = "sk-gw-limited-5b2e8c7a1d9f3e60"
OTHER_KEY = "sk-gw-other-limited-9a8b7c6d5e4f"
HASHED_PLAIN = "sk-gw-hashed-only-c0ffee1234567890"
HASHED_HEX = hashlib.sha256(HASHED_PLAIN.encode()).hexdigest()
MODELS_KEY = "sk-gw-mini-only-31415926535897"
TPM_KEY = "sk-gw-tokens-per-min-27182818"
BUDGET_KEY = "sk-gw-budget-key-16180339887"
ALL_KEYS = (
    DEV_KEY,
    TEAM_A_KEY,
    LIMITED_KEY,
    OTHER_KEY,
    HASHED_PLAIN,
    MODELS_KEY,
    TPM_KEY,
    BUDGET_KEY,
)
WRONG_KEY = "sk-gw-wrong-but-plausible-000111222"


class Monotonic:
    """An injectable monotonic clock (seconds) for the rate limiter and the failure penalty."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def keys_config(**extra: Any) -> dict[str, Any]:
    keys: dict[str, Any] = {
        "dev": DEV_KEY,
        "team-a": TEAM_A_KEY,
        "limited": {"key": LIMITED_KEY, "requests_per_minute": 60, "burst": 5},
        "other": {"key": OTHER_KEY, "requests_per_minute": 60, "burst": 5},
        "hashed": f"sha256:{HASHED_HEX.upper()}",  # hex case does not matter
        "mini-only": {"key": MODELS_KEY, "models": ["gpt-4o-mini"]},
        "tpm": {"key": TPM_KEY, "tokens_per_minute": 1000},
        "budget": {"key": BUDGET_KEY, "daily_budget_usd": 0.01},
    }
    keys.update(extra)
    return keys


def config(url: str, **overrides: Any) -> dict[str, Any]:
    cfg = base_config(
        channels=[channel("a", url, models=["gpt-4o-mini", "gpt-4o", "fail-400", "drop"])],
        **overrides,
    )
    cfg["security"]["auth"]["api_keys"] = keys_config()
    cfg["retry"]["max_attempts"] = 1
    return cfg


async def post(
    gw: Any,
    key: str | None = None,
    body: Any = None,
    *,
    headers: Any = None,
    session: aiohttp.ClientSession | None = None,
) -> tuple[int, Any, Any]:
    """POST /v1/chat/completions; (status, headers, JSON body or text)."""
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    payload = body if body is not None else {"model": "gpt-4o-mini", "messages": MESSAGES}
    url = gw.url + "/chat/completions"
    own = session is None
    s = session or aiohttp.ClientSession()
    try:
        async with s.post(url, json=payload, headers=hdrs) as r:
            text = await r.text()
            try:
                data: Any = await r.json(content_type=None)
            except ValueError:
                data = text
            return r.status, r.headers, data
    finally:
        if own:
            await s.close()


async def metric(gw: Any, name: str, **labels: str) -> float:
    resp = await gw.client.get("/metrics")
    text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def assert_openai_error(data: Any, code: str) -> None:
    assert set(data) == {"error"}
    assert set(data["error"]) == {"message", "type", "code", "param"}
    assert data["error"]["code"] == code
    assert isinstance(data["error"]["message"], str) and data["error"]["message"]


# ----------------------------------------------------------------------------- 1. 401
async def test_missing_unknown_and_malformed_keys_get_401(upstream_factory, gateway_factory):
    up, url = await upstream_factory("a")
    gw = await gateway_factory(config(url))
    sleep = HeldSleep()
    gw.gateway.penalty = FailurePenalty(sleep=sleep)  # 10 failures: the penalty kicks in
    cases = {
        "missing": [{}],
        "unknown": [{"Authorization": f"Bearer {WRONG_KEY}"}, {"x-api-key": WRONG_KEY}],
        "malformed": [
            {"Authorization": "Basic dXNlcjpwYXNz"},
            {"Authorization": "Bearer"},
            {"Authorization": f"Bearer {DEV_KEY} extra"},
            {"x-api-key": "sk a b"},
        ],
    }
    for reason, header_sets in cases.items():
        for headers in header_sets:
            status, hdrs, data = await post(gw, headers=headers)
            assert status == 401, (reason, headers)
            assert_openai_error(data, "invalid_api_key")
            assert data["error"]["type"] == "invalid_request_error"
            assert "x-ratelimit-limit-requests" not in hdrs  # no key, no bucket
    resp = await gw.client.get("/v1/models")
    assert resp.status == 401
    # The SDK sees an AuthenticationError, for chat and for the model list.
    sdk = gw.openai(key=WRONG_KEY)
    with pytest.raises(openai.AuthenticationError) as err:
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    assert WRONG_KEY not in str(err.value) and WRONG_KEY[:6] in str(err.value)
    with pytest.raises(openai.AuthenticationError):
        await sdk.models.list()
    assert up.seen == []  # nothing reached upstream
    assert len(sleep.delays) == 10 - 4  # slowed, but never by a real sleep in a test
    assert await metric(gw, "smartproxy_auth_failures_total", reason="missing") == 2
    assert await metric(gw, "smartproxy_auth_failures_total", reason="unknown") == 4
    assert await metric(gw, "smartproxy_auth_failures_total", reason="malformed") == 4


async def test_bearer_and_x_api_key_both_authenticate(upstream_factory, gateway_factory):
    _, url = await upstream_factory("a")
    gw = await gateway_factory(config(url))
    assert (await post(gw, TEAM_A_KEY))[0] == 200
    assert (await post(gw, headers={"x-api-key": TEAM_A_KEY}))[0] == 200
    # Authorization wins when both are sent (it is what the SDKs send).
    status, _, _ = await post(
        gw, headers={"Authorization": f"Bearer {WRONG_KEY}", "x-api-key": TEAM_A_KEY}
    )
    assert status == 401


# ----------------------------------------------------------------------------- 2. rate limit
async def test_burst_then_429_with_retry_after_then_refill(upstream_factory, gateway_factory):
    _, url = await upstream_factory("a")
    mono = Monotonic()
    gw = await gateway_factory(config(url), monotonic=mono)
    sdk = gw.openai(key=LIMITED_KEY)
    for i in range(5):
        resp = await sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        assert resp.headers["x-ratelimit-limit-requests"] == "5"
        assert resp.headers["x-ratelimit-remaining-requests"] == str(4 - i)
    with pytest.raises(openai.RateLimitError) as err:
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    headers = err.value.response.headers
    assert err.value.status_code == 429 and err.value.code == "rate_limit_exceeded"
    assert err.value.body["type"] == "rate_limit_error"
    assert headers["Retry-After"] == "1"  # 60/min refills one request per second
    assert headers["x-ratelimit-limit-requests"] == "5"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "5s"  # until the bucket is full again
    # Another key is unaffected.
    other = gw.openai(key=OTHER_KEY)
    await other.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    # Just before the refill: still refused; at the refill time: passes.
    mono.now += 0.999
    assert (await post(gw, LIMITED_KEY))[0] == 429
    mono.now += 0.001
    status, headers, _ = await post(gw, LIMITED_KEY)
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "0"
    assert await metric(gw, "smartproxy_rate_limited_total", api_key="limited") == 2
    assert await metric(gw, "smartproxy_rate_limited_total", api_key="other") == 0


async def test_buckets_survive_a_config_reload(upstream_factory, gateway_factory):
    _, url = await upstream_factory("a")
    mono = Monotonic()
    cfg = config(url)
    gw = await gateway_factory(cfg, monotonic=mono)
    for _ in range(5):
        assert (await post(gw, LIMITED_KEY))[0] == 200
    # A reload that changes the key's limits and adds a channel: the bucket keeps its level.
    cfg["security"]["auth"]["api_keys"]["limited"] = {
        "key": LIMITED_KEY,
        "requests_per_minute": 120,
        "burst": 10,
    }
    cfg["channels"].append(channel("b", url, models=["other-model"]))
    gw.gateway.install(Snapshot.build(parse_config(cfg)))
    assert "b" in gw.gateway.snapshot.channels
    status, headers, _ = await post(gw, LIMITED_KEY)
    assert status == 429  # not handed a fresh, full bucket
    assert headers["x-ratelimit-limit-requests"] == "10"  # the new settings apply
    assert headers["Retry-After"] == "1"  # 120/min: half a second, rounded up
    mono.now += 0.5
    assert (await post(gw, LIMITED_KEY))[0] == 200


async def test_rate_limit_headers_on_every_answer(upstream_factory, gateway_factory):
    up, url = await upstream_factory("a")
    mono = Monotonic()
    cfg = config(url)
    cfg["security"]["auth"]["api_keys"]["hdr"] = {
        "key": "sk-gw-headers-1234567890",
        "requests_per_minute": 600,
        "burst": 8,
        "models": ["gpt-4o-mini", "fail-400", "drop", "nowhere"],
    }
    gw = await gateway_factory(cfg, monotonic=mono)
    key = "sk-gw-headers-1234567890"
    seen: list[tuple[str, int, Any]] = []
    async with aiohttp.ClientSession() as s:
        auth = {"Authorization": f"Bearer {key}"}
        for label, body in [
            ("json", {"model": "gpt-4o-mini", "messages": MESSAGES}),
            ("upstream-400", {"model": "fail-400", "messages": MESSAGES}),
            ("forbidden", {"model": "gpt-4o", "messages": MESSAGES}),
            ("unknown-model", {"model": "nowhere", "messages": MESSAGES}),
            ("upstream-down", {"model": "drop", "messages": MESSAGES}),
        ]:
            status, headers, _ = await post(gw, key, body, session=s)
            seen.append((label, status, headers))
        async with s.post(gw.url + "/chat/completions", data=b"{not json", headers=auth) as r:
            seen.append(("bad-json", r.status, r.headers))
        async with s.post(
            gw.url + "/chat/completions",
            headers=auth,
            json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
        ) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            body = await r.read()
            assert body.endswith(b"data: [DONE]\n\n")
            seen.append(("stream", r.status, r.headers))
        async with s.get(gw.url + "/models", headers=auth) as r:
            seen.append(("models", r.status, r.headers))
        status, headers, _ = await post(gw, key, session=s)
        seen.append(("limited", status, headers))
    assert [(label, status) for label, status, _ in seen] == [
        ("json", 200),
        ("upstream-400", 400),
        ("forbidden", 403),
        ("unknown-model", 404),
        ("upstream-down", 502),
        ("bad-json", 400),
        ("stream", 200),
        ("models", 200),
        ("limited", 429),
    ]
    for i, (label, status, headers) in enumerate(seen):
        assert headers["x-ratelimit-limit-requests"] == "8", label
        assert headers["x-ratelimit-remaining-requests"] == str(max(0, 7 - i)), label
        assert headers["x-ratelimit-reset-requests"], label
        assert headers["x-request-id"], label
        assert ("Retry-After" in headers) == (status == 429), label


async def test_upstream_limits_pass_and_the_keys_fill_in_the_rest(gateway_factory):
    """An upstream's own x-ratelimit-* are relayed unchanged (contract §3); the key's are added
    only for the names the upstream answer does not carry."""

    async def provider(request: web.Request) -> web.Response:
        return web.json_response(
            {"id": "x", "object": "chat.completion", "choices": [], "usage": None},
            headers={
                "x-ratelimit-limit-requests": "10000",
                "x-ratelimit-limit-tokens": "2000000",
                "x-ratelimit-remaining-tokens": "1999000",
                "openai-processing-ms": "12",
            },
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", provider)
    server = TestServer(app)
    await server.start_server()
    try:
        gw = await gateway_factory(config(str(server.make_url("/v1"))))
        status, headers, _ = await post(gw, LIMITED_KEY)
        assert status == 200
        assert headers.getall("x-ratelimit-limit-requests") == ["10000"]  # upstream's, once
        assert headers.getall("x-ratelimit-limit-tokens") == ["2000000"]
        assert headers["x-ratelimit-remaining-tokens"] == "1999000"
        assert headers["x-ratelimit-remaining-requests"] == "4"  # the key's: upstream sent none
        assert headers["x-ratelimit-reset-requests"]
        assert headers["openai-processing-ms"] == "12"
        status, headers, _ = await post(gw, TPM_KEY)
        assert headers.getall("x-ratelimit-limit-tokens") == ["2000000"]
        assert headers.getall("x-ratelimit-remaining-tokens") == ["1999000"]
        assert headers["x-ratelimit-reset-tokens"]  # the key's
    finally:
        await server.close()


# ----------------------------------------------------------------------------- 3. models
async def test_key_limited_to_models_gets_403_and_sees_only_its_models(
    upstream_factory, gateway_factory
):
    up, url = await upstream_factory("a")
    gw = await gateway_factory(config(url))
    sdk = gw.openai(key=MODELS_KEY)
    done = await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert done.choices[0].message.content
    for model in ("gpt-4o", "no-channel-serves-this"):  # 403 either way: nothing is revealed
        with pytest.raises(openai.PermissionDeniedError) as err:
            await sdk.chat.completions.create(model=model, messages=MESSAGES)
        assert err.value.status_code == 403 and err.value.code == "model_not_allowed"
        assert err.value.body["param"] == "model"
    assert len(up.seen) == 1
    listed = [m.id async for m in sdk.models.list()]
    assert listed == ["gpt-4o-mini"]
    everything = [m.id async for m in gw.openai().models.list()]
    assert {"gpt-4o-mini", "gpt-4o"} <= set(everything)


# ----------------------------------------------------------------------------- 4. hashes, logs
async def test_hashed_keys_work_and_the_hash_itself_is_no_key(upstream_factory, gateway_factory):
    _, url = await upstream_factory("a")
    gw = await gateway_factory(config(url))
    done = await gw.openai(key=HASHED_PLAIN).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert done.choices
    assert (await post(gw, headers={"x-api-key": HASHED_PLAIN}))[0] == 200
    for presented in (HASHED_HEX, f"sha256:{HASHED_HEX}"):
        assert (await post(gw, presented))[0] == 401


async def test_no_key_ever_appears_whole_in_logs(upstream_factory, gateway_factory, caplog):
    caplog.set_level(logging.DEBUG)
    _, url = await upstream_factory("a")
    gw = await gateway_factory(config(url), monotonic=Monotonic())
    assert (await post(gw, TEAM_A_KEY))[0] == 200
    assert (await post(gw, headers={"x-api-key": HASHED_PLAIN}))[0] == 200
    assert (await post(gw, WRONG_KEY))[0] == 401
    assert (await post(gw, headers={"Authorization": f"Bearer {WRONG_KEY} x"}))[0] == 401
    assert (await post(gw, MODELS_KEY, {"model": "gpt-4o", "messages": MESSAGES}))[0] == 403
    for _ in range(6):
        await post(gw, LIMITED_KEY)
    await gw.gateway.drain_background()
    metrics_text = await (await gw.client.get("/metrics")).text()
    log_log = await gw.gateway.store.query(None, None, "api_key")
    records = caplog.records
    blobs = [r.getMessage() + " " + repr(r.__dict__) for r in records]
    everything = caplog.text + "\n".join(blobs) + metrics_text + repr(log_log)
    for key in (*ALL_KEYS, WRONG_KEY, HASHED_HEX):
        assert key not in everything, key
    # What the logs do say: the address and a short prefix of a refused key; key names.
    refused = [m for m in blobs if "API key rejected (unknown)" in m]
    assert refused and "127.0.0.1" in refused[0] and WRONG_KEY[:6] + "…" in refused[0]
    assert any("'mini-only'" in r.getMessage() for r in records)
    assert any("'limited'" in r.getMessage() for r in records)
    assert any("'team-a'" in r.getMessage() for r in records)
    assert {row["api_key"] for row in log_log} >= {"team-a", "hashed"}


# ----------------------------------------------------------------------------- names in rules
async def test_rule_on_api_key_name_routes_a_team_to_its_channel(upstream_factory, gateway_factory):
    shared_up, shared_url = await upstream_factory("shared")
    team_up, team_url = await upstream_factory("team")
    cfg = config(shared_url)
    cfg["channels"] = [
        channel("shared", shared_url, price_per_token=0),
        channel("team-a-own", team_url, price_per_token=0.001),
    ]
    cfg["rules"] = [
        {
            "name": "team a pays for its own",
            "channel": "team-a-own",
            "expression": "api_key_name == 'team-a'",
            "priority": 1,
        }
    ]
    gw = await gateway_factory(cfg)
    team = await gw.openai(key=TEAM_A_KEY).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    dev = await gw.openai().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert team.headers["x-smartproxy-channel"] == "team-a-own"
    assert dev.headers["x-smartproxy-channel"] == "shared"
    assert len(team_up.seen) == 1 and len(shared_up.seen) == 1
    await gw.gateway.drain_background()
    by_key = {r["api_key"]: r for r in await gw.gateway.store.query(None, None, "api_key")}
    assert by_key["team-a"]["requests"] == 1 and by_key["team-a"]["cost"] > 0
    assert by_key["dev"]["requests"] == 1 and by_key["dev"]["cost"] == 0


# ----------------------------------------------------------------------------- tokens, budget
async def test_tokens_per_minute_checks_the_estimate_and_charges_actual_use(
    upstream_factory, gateway_factory
):
    up, url = await upstream_factory("a")
    up.usage = {"prompt_tokens": 400, "completion_tokens": 200, "total_tokens": 600}
    mono = Monotonic()
    gw = await gateway_factory(config(url), monotonic=mono)
    sdk = gw.openai(key=TPM_KEY)

    async def ask(stream: bool = False) -> Any:
        return await sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=50, stream=stream
        )

    first = await ask()
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert first.headers["x-ratelimit-remaining-tokens"] == "1000"  # checked, not taken
    streamed = await ask(stream=True)  # a stream is charged from its usage chunk
    [chunk async for chunk in streamed.parse()]
    assert streamed.headers["x-ratelimit-remaining-tokens"] == "400"  # 1000 - 600
    # Now 1000 - 1200 = -200 (debt): the next estimate (~70 tokens) does not fit.
    with pytest.raises(openai.RateLimitError) as err:
        await ask()
    headers = err.value.response.headers
    assert err.value.code == "rate_limit_exceeded" and "tokens per minute" in err.value.message
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    retry_after = int(headers["Retry-After"])
    assert 16 <= retry_after <= 17  # (estimate + 200 debt) / (1000/60 per second)
    mono.now += retry_after - 1
    with pytest.raises(openai.RateLimitError):
        await ask()
    mono.now += 1
    assert (await ask()).headers["x-ratelimit-limit-tokens"] == "1000"
    assert await metric(gw, "smartproxy_rate_limited_total", api_key="tpm") == 2


async def test_daily_budget_refuses_with_insufficient_quota_until_the_day_ends(
    upstream_factory, gateway_factory
):
    up, url = await upstream_factory("a")
    up.usage = {"prompt_tokens": 60, "completion_tokens": 40, "total_tokens": 100}
    cfg = config(url)
    cfg["channels"][0]["price_per_token"] = 0.0002  # 100 tokens = $0.02 > the $0.01 budget
    clock = Clock()  # 2026-11-26 12:00 UTC
    gw = await gateway_factory(cfg, clock=clock)
    sdk = gw.openai(key=BUDGET_KEY)
    await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as err:
        await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert err.value.status_code == 429
    assert err.value.code == "insufficient_quota" and err.value.body["type"] == "insufficient_quota"
    headers = err.value.response.headers
    assert headers["Retry-After"] == str(12 * 3600)  # until local midnight
    assert headers["x-should-retry"] == "false"  # the SDKs' retries cannot help today
    assert headers["x-ratelimit-limit-requests"]
    assert len(up.seen) == 1
    await gw.openai().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # others ok
    clock.advance(hours=12)  # the next local day
    await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


async def test_daily_budget_spend_survives_a_restart(upstream_factory, gateway_factory, tmp_path):
    up, url = await upstream_factory("a")
    up.usage = {"prompt_tokens": 60, "completion_tokens": 40, "total_tokens": 100}
    cfg = config(url, storage={"backend": "sqlite", "path": str(tmp_path / "usage.db")})
    cfg["channels"][0]["price_per_token"] = 0.0002
    first = await gateway_factory(cfg)
    assert (await post(first, BUDGET_KEY))[0] == 200
    await first.client.close()  # flushes the request log
    second = await gateway_factory(cfg)
    status, _, data = await post(second, BUDGET_KEY)
    assert status == 429 and data["error"]["code"] == "insufficient_quota"
    assert (await post(second, DEV_KEY))[0] == 200


# ----------------------------------------------------------------------------- penalty
class HeldSleep:
    """Records the penalty delays; optionally holds the penalised request until released."""

    def __init__(self, hold: bool = False) -> None:
        self.delays: list[float] = []
        self.hold = hold
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.hold:
            self.waiting.set()
            await self.release.wait()


def from_address(ip: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0)))


async def test_repeated_failures_from_one_address_are_slowed_others_are_not(
    upstream_factory, gateway_factory
):
    _, url = await upstream_factory("a")
    mono = Monotonic()
    gw = await gateway_factory(config(url), monotonic=mono)
    sleep = HeldSleep()
    gw.gateway.penalty = FailurePenalty(clock=mono, sleep=sleep)
    async with from_address("127.0.0.1") as one, from_address("127.0.0.2") as two:
        for _ in range(10):
            assert (await post(gw, WRONG_KEY, session=one))[0] == 401
        # Four failures are free, then the delay doubles up to its 2 s cap.
        assert sleep.delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0])
        # Another address: not slowed, neither a failure nor a success.
        assert (await post(gw, WRONG_KEY, session=two))[0] == 401
        assert (await post(gw, DEV_KEY, session=two))[0] == 200
        assert len(sleep.delays) == 6
        # A quiet minute forgets the address.
        mono.now += 60
        assert (await post(gw, WRONG_KEY, session=one))[0] == 401
        assert len(sleep.delays) == 6


async def test_a_penalised_request_does_not_block_other_clients(upstream_factory, gateway_factory):
    _, url = await upstream_factory("a")
    mono = Monotonic()
    gw = await gateway_factory(config(url), monotonic=mono)
    sleep = HeldSleep(hold=True)
    gw.gateway.penalty = FailurePenalty(clock=mono, sleep=sleep, free_failures=0)
    async with from_address("127.0.0.1") as one, from_address("127.0.0.2") as two:
        assert (await post(gw, WRONG_KEY, session=one))[0] == 401  # the first failure is free
        held = asyncio.create_task(post(gw, WRONG_KEY, session=one))
        await asyncio.wait_for(sleep.waiting.wait(), 5)
        # While that request is held in its penalty, other clients are served at once.
        assert (await post(gw, DEV_KEY, session=two))[0] == 200
        assert (await post(gw, TEAM_A_KEY))[0] == 200
        assert not held.done()
        sleep.release.set()
        status, _, data = await asyncio.wait_for(held, 5)
    assert status == 401 and data["error"]["code"] == "invalid_api_key"
    assert sleep.delays == [0.1]
