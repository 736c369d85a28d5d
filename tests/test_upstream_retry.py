"""Retry policy: the backoff curve (from the backoff package), what fails over, Retry-After."""

from __future__ import annotations

from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import backoff
import pytest

from smartproxy.config import RetryConfig
from smartproxy.upstream.retry import (
    RetryPolicy,
    is_breaker_failure_status,
    is_retryable_status,
    parse_retry_after,
)

CFG = RetryConfig(max_attempts=8, base_delay_ms=100, max_delay_ms=2000)
CURVE = [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]  # min(max, base * 2**n), one wait per retry


def identity(value: float) -> float:
    return value


def test_delays_follow_the_capped_exponential_with_jitter_as_identity() -> None:
    policy = RetryPolicy(CFG, jitter=identity)
    assert policy.delays() == pytest.approx(CURVE)
    assert policy.delays(3) == pytest.approx(CURVE[:2])
    assert policy.next_delay(4) == pytest.approx(1.6)
    assert policy.next_delay(40) == pytest.approx(2.0)  # beyond the precomputed curve: still capped


def test_zero_jitter_means_no_wait() -> None:
    assert RetryPolicy(CFG, jitter=lambda v: 0.0).delays() == [0.0] * 7


def test_full_jitter_stays_inside_zero_and_the_capped_curve() -> None:
    policy = RetryPolicy(CFG)  # backoff.full_jitter, the real random source
    for n, ceiling in enumerate(CURVE):
        samples = [policy.next_delay(n) for _ in range(200)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert len(set(samples)) > 1  # actually jittered


def test_a_misbehaving_jitter_cannot_exceed_the_cap_or_go_negative() -> None:
    assert RetryPolicy(CFG, jitter=lambda v: v * 10).delays() == pytest.approx(CURVE)
    assert RetryPolicy(CFG, jitter=lambda v: -1.0).delays() == [0.0] * 7


def test_max_below_base_caps_every_wait() -> None:
    cfg = RetryConfig(max_attempts=4, base_delay_ms=500, max_delay_ms=200)
    assert RetryPolicy(cfg, jitter=identity).delays() == pytest.approx([0.2, 0.2, 0.2])


def test_the_curve_comes_from_backoff_expo(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    real = backoff.expo

    def spy(**kwargs: Any) -> Generator[float, Any, None]:
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(backoff, "expo", spy)  # retry.py calls backoff.expo
    RetryPolicy(CFG, jitter=identity)
    assert calls == [{"base": 2, "factor": 0.1, "max_value": 2.0}]


async def test_wait_sleeps_the_delay_through_the_injected_sleep() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    policy = RetryPolicy(CFG, jitter=identity, sleep=sleep)
    waited = [await policy.wait(n) for n in range(3)]
    assert slept == waited == pytest.approx(CURVE[:3])


def test_one_attempt_means_no_waits_and_bad_configs_are_refused() -> None:
    assert RetryPolicy(RetryConfig(max_attempts=1), jitter=identity).delays() == []
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(RetryConfig(max_attempts=0))
    with pytest.raises(ValueError, match="base_delay_ms"):
        RetryPolicy(RetryConfig(base_delay_ms=-1))
    with pytest.raises(ValueError, match="max_delay_ms"):
        RetryPolicy(RetryConfig(max_delay_ms=float("inf")))
    with pytest.raises(ValueError, match="attempt_index"):
        RetryPolicy(CFG).next_delay(-1)


@pytest.mark.parametrize(
    ("status", "retryable", "breaker_failure"),
    [
        (200, False, False),
        (201, False, False),
        (304, False, False),
        (400, False, False),
        (401, True, False),
        (403, True, False),
        (404, False, False),
        (408, False, False),
        (413, False, False),
        (422, False, False),
        (429, True, False),
        (500, True, True),
        (501, False, False),
        (502, True, True),
        (503, True, True),
        (504, True, True),
        (505, False, False),
    ],
)
def test_status_table(status: int, retryable: bool, breaker_failure: bool) -> None:
    assert is_retryable_status(status) is retryable
    assert is_breaker_failure_status(status) is breaker_failure


NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("2", 2.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("99999999", 3600.0),  # bounded
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),
        (format_datetime(NOW - timedelta(seconds=30), usegmt=True), 0.0),  # already past
        (format_datetime(NOW + timedelta(days=3), usegmt=True), 3600.0),
        ("Thu, 26 Nov 2026 12:00:45 GMT", 45.0),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds
