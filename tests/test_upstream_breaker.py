"""Channel health: breaker timing on one clock (any TZ), one half-open trial, 429 cool-downs."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiobreaker
import pytest

from smartproxy.upstream.breaker import ChannelBreaker, ChannelOpenError, Permit
from smartproxy.upstream.health import ChannelHealth, HealthBook

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@contextmanager
def local_tz(name: str) -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.fixture
def shanghai() -> Iterator[None]:
    with local_tz("Asia/Shanghai"):
        assert time.localtime().tm_gmtoff == 8 * 3600
        yield


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def tripped(clock: FakeClock, fail_max: int = 2, reset_timeout: float = 30.0) -> ChannelBreaker:
    breaker = ChannelBreaker(fail_max, reset_timeout, clock=clock, name="a")
    for _ in range(fail_max):
        breaker.record_failure()
    assert breaker.state_name == "open"
    return breaker


# -- the aiobreaker bug this module exists for --------------------------------------------------


def stock_opens_at_after_opening() -> datetime | None:
    stock = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=timedelta(seconds=60))
    with warnings.catch_warnings():  # datetime.utcnow() is deprecated on 3.12
        warnings.simplefilter("ignore", DeprecationWarning)
        stock.open()
    assert stock.current_state is aiobreaker.CircuitBreakerState.OPEN
    result: datetime | None = stock.opens_at
    return result


def test_stock_aiobreaker_gets_the_open_timeout_wrong_away_from_utc() -> None:
    with local_tz("UTC"):
        assert stock_opens_at_after_opening() is not None  # just opened: 60 s to go
    with local_tz("Asia/Shanghai"):
        # utcnow() stamp vs now() comparison: 8 h "ago", so it claims the timeout already passed.
        assert stock_opens_at_after_opening() is None
        naive_utc_due = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=60)
        remaining = aiobreaker.CircuitBreakerError("x", naive_utc_due).time_remaining
        assert remaining < timedelta(hours=-7)  # off by the UTC offset


def test_open_timeout_is_right_in_shanghai_with_the_real_clock(shanghai: None) -> None:
    breaker = ChannelBreaker(1, 60.0, name="a")
    breaker.record_failure()
    assert breaker.state_name == "open"
    assert breaker.acquire() is None
    remaining = breaker.time_until_open
    assert remaining is not None and 59 < remaining.total_seconds() <= 60
    assert breaker.opens_at is not None
    assert 59 < (breaker.opens_at - datetime.now(UTC)).total_seconds() <= 60


def test_open_timeout_is_right_in_shanghai_with_an_injected_clock(
    shanghai: None, clock: FakeClock
) -> None:
    breaker = tripped(clock, reset_timeout=30)
    clock.advance(29.9)
    assert breaker.acquire() is None and breaker.state_name == "open"
    clock.advance(0.1)
    assert breaker.state_name == "half_open"
    assert breaker.acquire() is not None


def test_never_reads_aiobreakers_own_clock(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    class Forbidden(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            raise AssertionError("aiobreaker's datetime.now() used")

        @classmethod
        def utcnow(cls) -> Any:
            raise AssertionError("aiobreaker's datetime.utcnow() used")

    monkeypatch.setattr("aiobreaker.circuitbreaker.datetime", Forbidden)
    monkeypatch.setattr("aiobreaker.state.datetime", Forbidden)
    breaker = tripped(clock)
    with pytest.raises(ChannelOpenError):
        breaker.state.before_call(None)
    clock.advance(30)
    trial = breaker.acquire()
    breaker.record_success(trial)
    assert breaker.state_name == "closed"


# -- the state machine ---------------------------------------------------------------------------


def test_fail_max_consecutive_failures_open(clock: FakeClock) -> None:
    breaker = ChannelBreaker(3, 30, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state_name == "closed" and breaker.fail_counter == 2
    breaker.record_failure()
    assert breaker.state_name == "open"


def test_success_in_closed_resets_the_failure_count(clock: FakeClock) -> None:
    breaker = ChannelBreaker(3, 30, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()
    assert breaker.fail_counter == 0
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state_name == "closed"
    breaker.record_failure()
    assert breaker.state_name == "open"


async def test_open_rejects_without_calling(clock: FakeClock) -> None:
    breaker = tripped(clock, reset_timeout=30)
    calls = 0

    async def upstream() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    clock.advance(10)
    with pytest.raises(ChannelOpenError) as info:
        await breaker.call_async(upstream)
    assert calls == 0
    assert info.value.time_remaining == timedelta(seconds=20)
    clock.advance(20)
    assert await breaker.call_async(upstream) == "ok"  # the trial, which closes it
    assert calls == 1 and breaker.state_name == "closed"


async def test_half_open_lets_exactly_one_concurrent_trial_through(clock: FakeClock) -> None:
    breaker = tripped(clock)
    clock.advance(30)
    release_trial = asyncio.Event()
    granted: list[Permit] = []

    async def request() -> bool:
        permit = breaker.acquire()
        if permit is None:
            return False
        granted.append(permit)
        await release_trial.wait()  # the trial is in flight while the others arrive
        breaker.record_success(permit)
        return True

    tasks = [asyncio.create_task(request()) for _ in range(20)]
    await asyncio.sleep(0)  # let every task ask while the trial is held
    assert len(granted) == 1 and granted[0].trial
    assert breaker.state_name == "half_open" and not breaker.available()
    release_trial.set()
    results = await asyncio.gather(*tasks)
    assert results.count(True) == 1
    assert breaker.state_name == "closed"


async def test_call_async_in_half_open_refuses_while_the_trial_runs(clock: FakeClock) -> None:
    breaker = tripped(clock)
    clock.advance(30)
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "ok"

    trial = asyncio.create_task(breaker.call_async(slow))
    await asyncio.sleep(0)
    with pytest.raises(ChannelOpenError, match="trial in flight"):
        await breaker.call_async(slow)
    gate.set()
    assert await trial == "ok" and breaker.state_name == "closed"


def test_trial_success_closes(clock: FakeClock) -> None:
    breaker = tripped(clock)
    clock.advance(30)
    breaker.record_success(breaker.acquire())
    assert breaker.state_name == "closed" and breaker.fail_counter == 0
    assert breaker.acquire() is not None and breaker.acquire() is not None


def test_trial_failure_reopens_for_a_full_timeout(clock: FakeClock) -> None:
    breaker = tripped(clock)
    clock.advance(30)
    breaker.record_failure(breaker.acquire())
    assert breaker.state_name == "open" and breaker.acquire() is None
    clock.advance(29)
    assert breaker.acquire() is None
    clock.advance(1)
    assert breaker.acquire() is not None


def test_released_trial_frees_the_slot(clock: FakeClock) -> None:
    breaker = tripped(clock)
    clock.advance(30)
    trial = breaker.acquire()
    assert breaker.acquire() is None
    breaker.release(trial)
    breaker.release(trial)  # idempotent
    assert breaker.state_name == "half_open"
    assert breaker.acquire() is not None


def test_in_half_open_only_the_trial_decides(clock: FakeClock) -> None:
    breaker = ChannelBreaker(2, 30, clock=clock)
    stale = breaker.acquire()  # begun while closed, answers late
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(30)
    trial = breaker.acquire()
    assert trial is not None and stale is not None and not stale.trial
    breaker.record_success(stale)
    breaker.release(stale)
    assert breaker.state_name == "half_open" and not breaker.available()
    assert breaker.acquire() is None
    breaker.record_failure(trial)
    assert breaker.state_name == "open"


def test_state_changes_are_reported_once_each(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    changes: list[tuple[str, str, str]] = []
    book = HealthBook(clock=clock, on_state_change=lambda *c: changes.append(c))
    health = book.get("a", 2, 30)
    caplog.set_level(logging.INFO, logger="smartproxy.upstream.breaker")
    for _ in range(5):  # failures past fail_max and refused attempts change nothing more
        health.failure()
        health.begin_attempt()
    clock.advance(30)
    trial = health.begin_attempt()
    for _ in range(3):
        assert health.begin_attempt() is None
    health.success(trial)
    health.success()
    assert changes == [
        ("a", "closed", "open"),
        ("a", "open", "half_open"),
        ("a", "half_open", "closed"),
    ]
    assert [r.getMessage() for r in caplog.records] == [
        "circuit breaker a: closed -> open",
        "circuit breaker a: open -> half_open",
        "circuit breaker a: half_open -> closed",
    ]
    assert caplog.records[0].levelno == logging.WARNING


def test_listeners_see_the_new_state_and_are_not_called_twice(clock: FakeClock) -> None:
    seen: list[tuple[str, int, str]] = []
    book = HealthBook(
        clock=clock,
        on_state_change=lambda n, o, new: seen.append((new, book.numeric(n), book.states()[n])),
    )
    health = book.get("a", 1, 30)
    also: list[str] = []

    class ReadsState(aiobreaker.CircuitBreakerListener):  # type: ignore[misc]
        def state_change(self, breaker: Any, old: Any, new: Any) -> None:
            also.append(breaker.state.state.name)  # aiobreaker's getter, mid-transition

    health.breaker.add_listener(ReadsState())
    health.failure()
    clock.advance(30)
    health.success(health.begin_attempt())
    assert seen == [("open", 2, "open"), ("half_open", 1, "half_open"), ("closed", 0, "healthy")]
    assert also == ["CLOSED", "OPEN", "HALF_OPEN"]  # the object being replaced; no re-notify


def test_aiobreaker_listeners_still_hear_everything(clock: FakeClock) -> None:
    heard: list[str] = []

    class Recorder(aiobreaker.CircuitBreakerListener):  # type: ignore[misc]
        def failure(self, breaker: Any, exception: Any) -> None:
            heard.append("failure")

        def success(self, breaker: Any) -> None:
            heard.append("success")

        def state_change(self, breaker: Any, old: Any, new: Any) -> None:
            heard.append(new.state.name)

    breaker = ChannelBreaker(1, 30, clock=clock)
    breaker.add_listener(Recorder())
    breaker.record_failure(exc=RuntimeError("boom"))
    clock.advance(30)
    breaker.record_success(breaker.acquire())
    assert heard == ["failure", "OPEN", "HALF_OPEN", "CLOSED", "success"]


def test_bad_parameters_and_naive_clocks_are_refused() -> None:
    with pytest.raises(ValueError, match="fail_max"):
        ChannelBreaker(0, 30)
    with pytest.raises(ValueError, match="reset_timeout"):
        ChannelBreaker(1, 0)
    naive = ChannelBreaker(1, 30, clock=lambda: datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="aware"):
        naive.record_failure()


# -- cool-downs and the book ---------------------------------------------------------------------


def test_429_cools_down_for_retry_after_without_a_breaker_failure(clock: FakeClock) -> None:
    health = ChannelHealth("a", 1, 30, clock=clock)
    permit = health.begin_attempt()
    health.rate_limited(2.0, default=10.0, permit=permit)
    assert health.breaker.fail_counter == 0 and health.breaker.state_name == "closed"
    assert health.status() == "cooldown" and health.begin_attempt() is None
    assert not health.available()
    clock.advance(1.999)
    assert health.status() == "cooldown"
    clock.advance(0.001)
    assert health.status() == "healthy" and health.begin_attempt() is not None


def test_429_without_retry_after_uses_the_default_and_never_shortens(clock: FakeClock) -> None:
    health = ChannelHealth("a", clock=clock)
    health.rate_limited(None, default=10.0)
    health.rate_limited(1.0, default=10.0)
    clock.advance(9)
    assert health.status() == "cooldown"
    clock.advance(1)
    assert health.status() == "healthy"
    health.cool_down(10**9)  # bounded: an absurd Retry-After cannot bench a channel for years
    assert health.cooldown_until == clock.now + timedelta(hours=1)


def test_429_on_the_trial_ends_it_undecided(clock: FakeClock) -> None:
    health = ChannelHealth("a", 1, 30, clock=clock)
    health.failure()
    clock.advance(30)
    trial = health.begin_attempt()
    assert trial is not None and trial.trial
    health.rate_limited(5.0, default=10.0, permit=trial)
    assert health.breaker.state_name == "half_open" and health.breaker.available()
    assert health.status() == "cooldown" and health.begin_attempt() is None
    clock.advance(5)
    assert health.status() == "half_open"
    next_trial = health.begin_attempt()
    assert next_trial is not None and next_trial.trial


def test_status_open_outranks_cooldown(clock: FakeClock) -> None:
    health = ChannelHealth("a", 1, 30, clock=clock)
    health.cool_down(60)
    health.failure()
    assert health.status() == "open"
    clock.advance(30)
    assert health.status() == "cooldown"  # due for a trial, but still cooling down
    clock.advance(30)
    assert health.status() == "half_open" and health.available()


def test_health_book_keeps_state_across_reloads(clock: FakeClock) -> None:
    book = HealthBook(clock=clock)
    first = book.get("a", 2, 30)
    book.get("b", 2, 30)
    first.failure()
    first.failure()
    assert book.numeric("a") == 2 and book.numeric("b") == 0 and book.numeric("zz") == 0
    reloaded = book.get("a", 5, 60)  # new snapshot, new limits
    assert reloaded is first and reloaded.breaker.fail_max == 5
    assert reloaded.breaker.reset_timeout == 60 and reloaded.status() == "open"
    clock.advance(30)
    assert book.states() == {"a": "open", "b": "healthy"}  # the new 60 s timeout applies
    clock.advance(30)
    assert book.states()["a"] == "half_open" and book.numeric("a") == 1
    assert book.peek("a") == "half_open" and book.peek("never-used") == "healthy"
    book.forget({"b"})
    assert book.states() == {"b": "healthy"} and book.peek("a") == "healthy"
    assert book.get("a", 2, 30) is not first  # a channel that comes back starts closed


def test_a_success_listener_hears_successes_of_a_closed_breaker(clock: FakeClock) -> None:
    """Closed with no failures counted, a success changes nothing and is skipped, unless a
    listener asked to hear of successes (added or removed at any time)."""
    heard: list[str] = []

    class Recorder(aiobreaker.CircuitBreakerListener):  # type: ignore[misc]
        def success(self, breaker: Any) -> None:
            heard.append("success")

    breaker = ChannelBreaker(3, 30, clock=clock, on_state_change=lambda *_: None)
    breaker.record_success(breaker.acquire())
    recorder = Recorder()
    breaker.add_listeners(recorder)
    breaker.record_success(breaker.acquire())
    breaker.record_success(breaker.acquire())
    breaker.remove_listener(recorder)
    breaker.record_success(breaker.acquire())
    assert heard == ["success", "success"]
