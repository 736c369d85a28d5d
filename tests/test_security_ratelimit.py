"""Token buckets, OpenAI rate-limit headers and the auth-failure penalty, on an injected clock."""

from __future__ import annotations

import pytest

from smartproxy.security.ratelimit import (
    FailurePenalty,
    RateDecision,
    RateLimiter,
    format_duration,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(clock: Clock) -> RateLimiter:
    return RateLimiter(clock=clock)


def test_burst_then_deny_with_retry_after(limiter: RateLimiter) -> None:
    decisions = [limiter.check("team-a", 60, 5) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
    first, denied = decisions[0], decisions[5]
    assert first.headers() == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "1s",
    }
    assert "Retry-After" not in first.headers()
    assert denied.retry_after == pytest.approx(1.0)
    assert denied.headers() == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "5s",
        "Retry-After": "1",
    }


def test_other_key_is_unaffected(limiter: RateLimiter) -> None:
    for _ in range(6):
        limiter.check("team-a", 60, 5)
    assert limiter.check("team-b", 60, 5).allowed
    assert not limiter.check("team-a", 60, 5).allowed


def test_refill_after_injected_time(limiter: RateLimiter, clock: Clock) -> None:
    for _ in range(5):
        limiter.check("team-a", 60, 5)
    assert not limiter.check("team-a", 60, 5).allowed
    clock.advance(0.5)
    denied = limiter.check("team-a", 60, 5)
    assert not denied.allowed and denied.retry_after == pytest.approx(0.5)
    assert denied.headers()["Retry-After"] == "1"  # rounded up, never 0
    clock.advance(0.5)
    assert limiter.check("team-a", 60, 5).allowed
    assert not limiter.check("team-a", 60, 5).allowed
    clock.advance(60)
    assert limiter.check("team-a", 60, 5).remaining == 4  # capped at burst, not 60 banked


def test_slow_rate_retry_after_rounds_up(limiter: RateLimiter, clock: Clock) -> None:
    assert limiter.check("k", 4, 1).allowed  # one request per 15 s
    clock.advance(0.2)
    denied = limiter.check("k", 4, 1)
    assert denied.retry_after == pytest.approx(14.8)
    assert denied.headers()["Retry-After"] == "15"
    assert denied.headers()["x-ratelimit-reset-requests"] == "14.8s"


def test_reconfiguration_keeps_state(limiter: RateLimiter, clock: Clock) -> None:
    for _ in range(5):
        limiter.check("team-a", 60, 5)
    # A reload raising the burst must not hand out a fresh, full bucket.
    assert not limiter.check("team-a", 60, 10).allowed
    # A faster rate applies from the change on: 0.5 s at 1/s banked half a request,
    # then at 2/s the other half takes 0.25 s (not 0.5 s).
    clock.advance(0.5)
    denied = limiter.check("team-a", 120, 10)
    assert not denied.allowed and denied.retry_after == pytest.approx(0.25)
    clock.advance(0.25)
    assert limiter.check("team-a", 120, 10).allowed
    # Lowering the burst caps what is banked.
    clock.advance(60)
    decision = limiter.check("team-a", 120, 3)
    assert decision.allowed and decision.limit == 3 and decision.remaining == 2


def test_unlimited_sends_no_headers_and_drops_bucket(limiter: RateLimiter) -> None:
    limiter.check("team-a", 60, 5)
    assert len(limiter) == 1
    for _ in range(1000):
        decision = limiter.check("team-a", 0, 5)
        assert decision.allowed
    assert decision == RateDecision(True, 0, 0, 0.0, 0.0)
    assert decision.headers() == {}
    assert len(limiter) == 0


def test_burst_zero_still_lets_the_rate_through(limiter: RateLimiter, clock: Clock) -> None:
    assert limiter.check("k", 60, 0).allowed
    assert not limiter.check("k", 60, 0).allowed
    clock.advance(1)
    assert limiter.check("k", 60, 0).allowed


def test_idle_buckets_are_swept(limiter: RateLimiter, clock: Clock) -> None:
    for i in range(3000):
        limiter.check(f"key-{i}", 60, 5)
    assert len(limiter) == 3000  # none is full yet
    clock.advance(10)  # all full again: indistinguishable from new ones
    for _ in range(3000):
        limiter.check("busy", 60, 5)
    assert len(limiter) < 100


def test_sweep_keeps_buckets_that_are_not_full(limiter: RateLimiter, clock: Clock) -> None:
    for _ in range(5):
        limiter.check("drained", 1, 5)  # refills one per minute
    clock.advance(30)
    for i in range(3000):
        limiter.check(f"other-{i}", 60, 5)
    assert not limiter.check("drained", 1, 5).allowed


def test_tokens_per_minute(limiter: RateLimiter, clock: Clock) -> None:
    assert limiter.check_tokens("k", 6000, 1000).allowed  # room for the estimate
    after = limiter.add_tokens("k", 6000, 5900)  # what the request actually used
    assert after.remaining == 100 and after.kind == "tokens"
    denied = limiter.check_tokens("k", 6000, 500)
    assert not denied.allowed and denied.retry_after == pytest.approx(4.0)  # 100 tokens/s
    assert denied.headers()["x-ratelimit-limit-tokens"] == "6000"
    assert denied.headers()["Retry-After"] == "4"
    clock.advance(4)
    assert limiter.check_tokens("k", 6000, 500).allowed
    # A prompt larger than a minute's budget passes once the bucket is full, not never.
    clock.advance(60)
    assert limiter.check_tokens("k", 6000, 50_000).allowed
    limiter.add_tokens("k", 6000, 12_000)  # debt: the next minute is blocked
    clock.advance(59)
    assert not limiter.check_tokens("k", 6000, 1).allowed
    assert limiter.check_tokens("k", 0, 10**9).allowed  # tpm 0 = unlimited


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (0.0004, "1ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.999, "59.999s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (90.5, "1m30.5s"),
        (3600, "1h0m0s"),
        (-3, "0s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# ----------------------------------------------------------------------------- penalty
def test_penalty_first_failures_are_free_then_doubles_to_cap(clock: Clock) -> None:
    penalty = FailurePenalty(clock=clock)
    delays = []
    for _ in range(12):
        delays.append(penalty.delay("10.0.0.1"))
        penalty.record_failure("10.0.0.1")
    assert delays[:4] == [0.0, 0.0, 0.0, 0.0]
    assert delays[4:9] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    assert delays[9:] == [2.0, 2.0, 2.0]
    assert penalty.delay("10.0.0.2") == 0.0  # other clients are never slowed


def test_penalty_stays_bounded_after_many_failures(clock: Clock) -> None:
    penalty = FailurePenalty(clock=clock)
    for _ in range(100_000):
        penalty.record_failure("10.0.0.1")
    assert penalty.delay("10.0.0.1") == 2.0


def test_penalty_decays_after_quiet_period_and_success_clears(clock: Clock) -> None:
    penalty = FailurePenalty(clock=clock, quiet_period=60)
    for _ in range(6):
        penalty.record_failure("a")
    assert penalty.delay("a") > 0
    clock.advance(59)
    assert penalty.delay("a") > 0
    clock.advance(1)
    assert penalty.delay("a") == 0.0
    for _ in range(6):
        penalty.record_failure("a")
    penalty.record_success("a")
    assert penalty.delay("a") == 0.0 and len(penalty) == 0


def test_penalty_memory_is_bounded(clock: Clock) -> None:
    penalty = FailurePenalty(clock=clock, max_addresses=100)
    for _ in range(5):
        penalty.record_failure("persistent")
    for i in range(1000):
        penalty.record_failure(f"10.1.{i // 256}.{i % 256}")
    assert len(penalty) == 100
    assert penalty.delay("persistent") == 0.0  # evicted as the oldest
    for _ in range(5):
        penalty.record_failure("persistent")
    assert penalty.delay("persistent") > 0 and len(penalty) == 100
