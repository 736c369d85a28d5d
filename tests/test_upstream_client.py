"""Small pure parts of the Dispatcher; the failover loop itself is tested end to end in
tests/test_e2e_failover.py (through HTTP, with fake upstreams)."""

from __future__ import annotations

from conftest import base_config

from smartproxy.app import create_app
from smartproxy.config import parse_config
from smartproxy.state import GATEWAY
from smartproxy.upstream.client import AttemptLog, Dispatcher, header_safe


def test_attempt_log_short_and_describe() -> None:
    http = AttemptLog("a", 503, None, 0.0123)
    assert http.short() == "a:503"
    assert http.describe() == "a: HTTP 503 after 12 ms"
    timeout = AttemptLog("b", None, "no answer within 0.2s", 0.2, kind="timeout")
    assert timeout.timed_out
    assert timeout.short() == "b:timeout"
    assert timeout.describe() == "b: timeout (no answer within 0.2s) after 200 ms"
    error = AttemptLog(
        "免费渠道A", None, "server disconnected without an answer", 0.001, kind="error"
    )
    assert not error.timed_out
    assert error.short() == header_safe("免费渠道A") + ":error"
    assert error.short().isascii()  # safe in a header
    assert error.describe() == "免费渠道A: server disconnected without an answer after 1 ms"


def test_header_safe() -> None:
    assert header_safe("free-groq") == "free-groq"
    assert header_safe("免费") == "%E5%85%8D%E8%B4%B9"
    assert header_safe("a\r\nb") == "a%0D%0Ab"


async def test_retry_policy_uses_the_injected_sleep_and_is_rebuilt_on_a_new_config() -> None:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    cfg = base_config(retry={"max_attempts": 4, "base_delay_ms": 100, "max_delay_ms": 300})
    app = create_app(parse_config(cfg), retry_sleep=sleep, retry_jitter=lambda d: d)
    gw = app[GATEWAY]
    dispatcher = Dispatcher(gw)
    policy = dispatcher.retry_policy(gw.snapshot)
    assert dispatcher.retry_policy(gw.snapshot) is policy  # built once per config
    for n in range(3):
        await policy.wait(n)
    assert slept == [0.1, 0.2, 0.3]

    cfg["retry"] = {"max_attempts": 2, "base_delay_ms": 50, "max_delay_ms": 50}
    gw.install(type(gw.snapshot).build(parse_config(cfg)))
    reloaded = dispatcher.retry_policy(gw.snapshot)
    assert reloaded is not policy and reloaded.max_attempts == 2
    await reloaded.wait(3)
    assert slept[-1] == 0.05
    await gw.store.close()
