"""Unit tests of the key gate (smartproxy/api/gate.py) on mocked aiohttp requests.

The same steps through HTTP are in test_e2e_auth.py; here each is called alone: authenticate,
rate_limit, limit_tokens, budget, check_model_allowed and the settlement charge.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import make_mocked_request
from conftest import DEV_KEY, Clock, base_config

from smartproxy.api.gate import (
    SPEND,
    authenticate,
    budget,
    charge_key,
    check_model_allowed,
    limit_tokens,
    rate_limit,
)
from smartproxy.api.proxy import create_proxy_app
from smartproxy.app import create_app
from smartproxy.config import ApiKeyConfig, parse_config
from smartproxy.errors import AuthenticationFailed, PermissionDenied, QuotaExceeded, RateLimited
from smartproxy.localtime import MinuteClock
from smartproxy.security.apikeys import Principal
from smartproxy.security.budget import DailySpend
from smartproxy.security.ratelimit import FailurePenalty
from smartproxy.state import GATEWAY, PRINCIPAL, RATELIMIT_HEADERS, Gateway
from smartproxy.storage.base import RequestRecord


class Mono:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def gateway(keys: dict[str, Any] | None = None, **kwargs: Any) -> Gateway:
    cfg = base_config()
    cfg["security"]["auth"]["api_keys"] = keys or {"dev": DEV_KEY}
    cfg["security"]["rate_limit"] = {"requests_per_minute": 60, "burst": 2}
    return create_app(parse_config(cfg), **kwargs)[GATEWAY]


def request(
    headers: dict[str, str] | None = None, remote: str = "10.0.0.1", app: Any = None
) -> Any:
    transport = mock.Mock()
    transport.get_extra_info.return_value = (remote, 40000)
    return make_mocked_request(
        "POST", "/v1/chat/completions", headers=headers or {}, transport=transport, app=app
    )


def principal(**kw: Any) -> Principal:
    return Principal("k", ApiKeyConfig(name="k", key="sk-unit-test-key-123", **kw))


# ----------------------------------------------------------------------------- authenticate
async def test_authenticate_sets_the_principal_and_clears_the_penalty():
    gw = gateway()
    delays: list[float] = []

    async def sleep(s: float) -> None:
        delays.append(s)

    gw.penalty = FailurePenalty(sleep=sleep, free_failures=1)
    for _ in range(4):  # the first two are free: at most free_failures=1 earlier ones
        with pytest.raises(AuthenticationFailed) as err:
            await authenticate(request({"x-api-key": "sk-nope-nope-nope"}), gw, gw.snapshot)
        assert err.value.status == 401 and "sk-nop…" in err.value.message
    assert delays == [0.1, 0.2]
    req = request({"Authorization": f"Bearer {DEV_KEY}"})
    found = await authenticate(req, gw, gw.snapshot)
    assert found.name == "dev" and req[PRINCIPAL] is found
    assert gw.penalty.delay("10.0.0.1") == 0.0  # a success forgives the address


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"Authorization": "Token abc"}, "malformed"),
        ({"Authorization": "Bearer sk-unknown-key-0000"}, "unknown"),
    ],
)
async def test_authenticate_failures_name_their_reason(headers, reason):
    gw = gateway()
    gw.penalty = FailurePenalty(sleep=mock.AsyncMock())
    with pytest.raises(AuthenticationFailed) as err:
        await authenticate(request(headers), gw, gw.snapshot)
    assert err.value.code == "invalid_api_key"
    assert gw.metrics.auth_failures_total.labels(reason)._value.get() == 1


# ----------------------------------------------------------------------------- rate limits
def test_rate_limit_records_headers_and_refuses_when_empty():
    mono = Mono()
    gw = gateway(monotonic=mono)
    p = Principal("dev", gw.snapshot.config.security.api_keys[0])
    req = request()
    rate_limit(req, gw, gw.snapshot, p)
    assert req[RATELIMIT_HEADERS] == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "1s",
    }
    rate_limit(request(), gw, gw.snapshot, p)
    req = request()
    with pytest.raises(RateLimited) as err:
        rate_limit(req, gw, gw.snapshot, p)
    assert err.value.headers["Retry-After"] == "1"
    assert req[RATELIMIT_HEADERS]["x-ratelimit-remaining-requests"] == "0"
    mono.now += 1
    rate_limit(request(), gw, gw.snapshot, p)


def test_per_key_limits_override_the_default():
    gw = gateway(
        {"dev": DEV_KEY, "big": {"key": "sk-big-key-000000", "requests_per_minute": 6, "burst": 4}}
    )
    big = Principal("big", gw.snapshot.config.security.api_keys[1])
    req = request()
    rate_limit(req, gw, gw.snapshot, big)
    assert req[RATELIMIT_HEADERS]["x-ratelimit-limit-requests"] == "4"
    assert req[RATELIMIT_HEADERS]["x-ratelimit-reset-requests"] == "10s"  # one at 6/min


def test_unlimited_rate_sends_no_headers():
    gw = gateway({"free": {"key": "sk-free-key-0000000", "requests_per_minute": 0}})
    req = request()
    rate_limit(req, gw, gw.snapshot, Principal("free", gw.snapshot.config.security.api_keys[0]))
    assert req[RATELIMIT_HEADERS] == {}


def test_limit_tokens_checks_without_taking_and_merges_headers():
    mono = Mono()
    gw = gateway(monotonic=mono)
    p = principal(tokens_per_minute=600)
    req = request()
    req[RATELIMIT_HEADERS] = {"x-ratelimit-limit-requests": "2"}
    limit_tokens(req, gw, p, 500)
    limit_tokens(req, gw, p, 500)  # nothing was taken
    assert req[RATELIMIT_HEADERS]["x-ratelimit-limit-requests"] == "2"
    assert req[RATELIMIT_HEADERS]["x-ratelimit-remaining-tokens"] == "600"
    gw.limiter.add_tokens("k", 600, 550)
    with pytest.raises(RateLimited) as err:
        limit_tokens(req, gw, p, 500)
    assert err.value.headers["Retry-After"] == "45"  # 450 missing at 10 per second
    assert err.value.headers["x-ratelimit-limit-requests"] == "2"
    limit_tokens(request(), gw, principal(), 10**9)  # no tokens_per_minute: no limit


# ----------------------------------------------------------------------------- budget
def test_budget_refuses_once_spent_and_keeps_rate_headers():
    clock = Clock()
    gw = gateway(clock=clock)
    app = create_proxy_app(gw)
    p = principal(daily_budget_usd=1.0)
    app[SPEND].add("k", 0.99, clock().date())
    req = request(app=app)
    req[RATELIMIT_HEADERS] = {"x-ratelimit-limit-requests": "2"}
    budget(req, gw, gw.snapshot, p)
    app[SPEND].add("k", 0.01, clock().date())
    with pytest.raises(QuotaExceeded) as err:
        budget(req, gw, gw.snapshot, p)
    assert err.value.status == 429 and err.value.code == "insufficient_quota"
    assert err.value.headers["x-ratelimit-limit-requests"] == "2"
    assert err.value.headers["x-should-retry"] == "false"
    budget(req, gw, gw.snapshot, principal(daily_budget_usd=0))  # 0 = no budget
    budget(req, gw, gw.snapshot, principal())


def test_charge_key_takes_actual_tokens_and_cost_of_the_start_day():
    gw = gateway(monotonic=Mono())
    spend = DailySpend()
    p = principal(tokens_per_minute=1000)
    started = datetime(2026, 11, 26, 23, 59, tzinfo=UTC)
    record = RequestRecord(
        ts=started.timestamp(),
        request_id="r",
        api_key_name="k",
        channel="c",
        model="m",
        prompt_tokens=300,
        completion_tokens=100,
        cost=0.25,
        status=200,
        latency_ms=1.0,
    )
    charge_key(gw, spend, p, MinuteClock(UTC), record)
    assert gw.limiter.check_tokens("k", 1000, 0).remaining == 600
    assert spend.spent("k", started.date()) == 0.25
    # The day is the server's local day: 23:59 UTC is already the 27th in Shanghai.
    shanghai = DailySpend()
    charge_key(gw, shanghai, p, MinuteClock(ZoneInfo("Asia/Shanghai")), record)
    assert shanghai.spent("k", date(2026, 11, 27)) == 0.25
    assert shanghai.spent("k", started.date()) == 0


# ----------------------------------------------------------------------------- models
def test_check_model_allowed():
    check_model_allowed(principal(), "anything")
    limited = principal(models=("a", "b"))
    check_model_allowed(limited, "a")
    with pytest.raises(PermissionDenied) as err:
        check_model_allowed(limited, "c")
    assert err.value.status == 403 and err.value.code == "model_not_allowed"
    assert err.value.param == "model"
